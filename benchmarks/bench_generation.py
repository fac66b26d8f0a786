"""Generation speed and memory: bertgen against transformers, same random weights, same process.

Not a test: it reports numbers and ratios, it asserts nothing. For each model size and case
(greedy batch 1, beam 4 batch 1, beam 4 batch 8; 64 input tokens; exactly 32 new tokens, EOS
suppressed with min_new_tokens) it measures:

- ms per decoding step in steady state: (time for 32 tokens - time for 1 token) / 31, so the
  encoder and set-up are not counted; best of `--repeats`, bertgen and transformers interleaved
  so both see the same machine load;
- end-to-end new tokens per second (batch x 32 / time for 32 tokens, encoder included);
- the cost of recording cross-attention (bertgen, `output_cross_attentions=True`);
- the memory-bandwidth floor: bytes the decoder must read per step (weights, LM head, KV caches)
  divided by the read bandwidth of a large tensor sum (in 2 MB pages, as the native kernel's
  weights are), the best of reads just before the case, right after each of bertgen's timed
  runs and just after the case: the step is the best of its repeats, so the bandwidth is the
  best of reads made among them (this shared host's bandwidth moves between 31 and 67 GB/s
  within seconds to minutes; reads only around a case set floors below the step). Best against
  best pairs moments apart, so "bertgen / floor" also gives the median over repeats of each
  run's step against the floor of the read right after it ("paired");
- peak RSS during generation, each case in a fresh subprocess (peak reset after the model is
  built, via /proc/self/clear_refs), next to the bytes of the weights;
- bf16 weights and int8 (torch dynamic quantization) against transformers fp32.

`--device cuda --dtype bfloat16` runs the same cases on a GPU, both frameworks in that dtype
(peak RSS and the CPU precision table are left out there; the floor uses the GPU's read
bandwidth and the dtype's bytes).

bertgen runs as `bertgen.pipeline` prepares a model for the CPU (`prepare_model`: query/key/value
stacked into one matrix, linear layers packed in the native kernel's panels or oneDNN's layout,
the decoder stack run as one native call per step); "unprepared" is the same
weights as loaded (separate query/key/value, plain layout): what `prepare_model` buys.

Usage:  python benchmarks/bench_generation.py            # full run (~10 min on 2 cores)
        python benchmarks/bench_generation.py --quick    # small model only, < 1 min
        python benchmarks/bench_generation.py --device cuda --dtype bfloat16 --sizes large
Writes benchmarks/results/bench_generation.{json,md}; a full run also writes benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bertgen import kernels  # noqa: E402
from bertgen.config import BertGenerationConfig, EncoderDecoderConfig  # noqa: E402
from bertgen.generation import GenerationSettings, generate  # noqa: E402
from bertgen.modeling import EncoderDecoderModel  # noqa: E402
from bertgen.pipeline import prepare_model, quantize_int8  # noqa: E402

SIZES = {
    "small": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536,
                  vocab_size=30522, tied=False),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
                  vocab_size=50358, tied=True),
}
CASES = {"greedy-b1": (1, 1), "beam4-b1": (4, 1), "beam4-b8": (4, 8)}  # (beams, batch)
INPUT_TOKENS, NEW_TOKENS = 64, 32
PAD, EOS, START = 0, 1, 2
THREADS = 2
# the other precisions timed on CPU (the keys of their results -> their names in the table)
LOW_PRECISIONS = {"bf16": "bf16", "int8": "int8", "bf16_weights": "bf16-weights"}


# ----------------------------------------------------------------------------------------
# Models with the same weights
# ----------------------------------------------------------------------------------------
def configs(size: str) -> tuple[EncoderDecoderConfig, bool]:
    spec = dict(SIZES[size])
    tied = spec.pop("tied")
    enc = BertGenerationConfig(**spec, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=START)
    return EncoderDecoderConfig(encoder=enc, decoder=enc.as_decoder(), tie_encoder_decoder=tied,
                                decoder_start_token_id=START, pad_token_id=PAD, eos_token_id=EOS), tied


def build_bertgen(size: str, seed: int = 0) -> EncoderDecoderModel:
    """Random N(0, 0.02) weights, LayerNorms at 1/0; allocated once (no init-then-tie copies)."""
    config, _ = configs(size)
    with torch.device("meta"):
        model = EncoderDecoderModel(config, init=False)
    model = model.to_empty(device="cpu")
    model.tie_weights()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def sharing_copy(model: EncoderDecoderModel) -> EncoderDecoderModel:
    """A second module tree over the same tensors (no copy): packing one leaves the other plain."""
    with torch.device("meta"):
        twin = EncoderDecoderModel(model.config, init=False)
    twin.load_state_dict(model.state_dict(), assign=True)
    twin.tie_weights()
    return twin.eval()


def build_transformers(size: str, like: EncoderDecoderModel | None = None):
    """transformers' EncoderDecoderModel; with `like`, its tensors are bertgen's (shared, no copy).

    Without `like` (the memory subprocess) weights are random and stored as transformers 5
    stores a tied checkpoint: two copies, since it no longer implements the tie."""
    import transformers as T

    config, tied = configs(size)
    enc = T.BertGenerationConfig(**config.encoder.to_dict())
    dec = T.BertGenerationConfig(**config.decoder.to_dict())
    with torch.device("meta"):
        model = T.EncoderDecoderModel(encoder=T.BertGenerationEncoder(enc), decoder=T.BertGenerationDecoder(dec))
    if like is not None:
        state = {k: v for k, v in like.state_dict().items()}
        state["decoder.lm_head.decoder.bias"] = state["decoder.lm_head.bias"]
        model.load_state_dict(state, strict=False, assign=True)
    else:
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02)
    for module in model.modules():  # non-persistent buffers are in no state dict: set them here
        for name, buf in list(module.named_buffers(recurse=False)):
            if name != "position_ids":
                raise RuntimeError(f"unexpected transformers buffer {name}")
            module.register_buffer(name, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
    model.tie_weights() if hasattr(model, "tie_weights") else None
    for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        setattr(model.config, key, getattr(config, key))
        setattr(model.generation_config, key, getattr(config, key))
    return model.eval()


def inputs(batch: int, vocab: int, device: str = "cpu") -> torch.Tensor:
    return torch.randint(3, vocab, (batch, INPUT_TOKENS), generator=torch.Generator().manual_seed(1)).to(device)


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------
def run_bertgen(model, ids, beams: int, new: int, attentions: bool = False, cache_dtype: str | None = None):
    s = GenerationSettings(max_new_tokens=new, min_new_tokens=new, num_beams=beams, cache_dtype=cache_dtype,
                           decoder_start_token_id=START, eos_token_id=EOS, pad_token_id=PAD)
    out = generate(model, ids, None, s, output_cross_attentions=attentions)
    assert out.sequences.shape[1] == new + 1


def run_transformers(model, ids, beams: int, new: int):
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=beams, do_sample=False,
                             max_new_tokens=new, min_new_tokens=new)
    assert out.shape[1] == new + 1


def timed(fn) -> float:
    """Wall time of fn(), GPU work included (CUDA runs asynchronously)."""
    start = time.perf_counter()
    fn()
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(runners: dict, repeats: int, after_first=None) -> dict:
    """Best-of-`repeats` time for 1 and for NEW_TOKENS tokens per runner, interleaved; each
    runner's NEW_TOKENS times in repeat order ("tns") for `paired_cost_pct`. `after_first()`
    runs in each repeat right after the first runner (a bandwidth read for its floor)."""
    runs = {name: {"t1s": [], "tns": []} for name in runners}
    for name, fn in runners.items():
        fn(2)  # warm-up
    for _ in range(repeats):
        for i, (name, fn) in enumerate(runners.items()):
            runs[name]["t1s"].append(timed(lambda: fn(1)))
            runs[name]["tns"].append(timed(lambda: fn(NEW_TOKENS)))
            if i == 0 and after_first is not None:
                after_first()
    for r in runs.values():
        r["t1"], r["tn"] = min(r["t1s"]), min(r["tns"])
        r["ms_per_step"] = 1e3 * max(r["tn"] - r["t1"], 1e-9) / (NEW_TOKENS - 1)
    return runs


def paired_cost_pct(variant: dict, base: dict) -> float:
    """Extra time of `variant` over `base` (entries of `measure`): the median over repeats of
    the ratio of their runs in the same repeat, made close together. A ratio of the two bests
    compares moments seconds apart, and this host's memory speed changes within seconds (up to
    +15% read off an A/B that measures +1%)."""
    return 100 * (statistics.median(v / b for v, b in zip(variant["tns"], base["tns"])) - 1)


def read_bandwidth_gbs(mbytes: int = 1024, repeats: int = 5, device: str = "cpu") -> float:
    """A sum's read rate over `mbytes`. On CPU with the native kernel, over memory in 2 MB pages
    as its panels are (~3-6% faster to read than 4 KB pages here), so the floor is not set by
    slower pages than the weights have."""
    native = kernels.native_kernels() if device == "cpu" else None
    numel = mbytes * 2**20 // 4
    big = native.huge_page_zeros([numel]).fill_(1) if native else torch.ones(numel, device=device)
    big.sum()
    best = min(timed(big.sum) for _ in range(repeats))
    return big.numel() * 4 / best / 1e9


def decoder_bytes_per_step(config: EncoderDecoderConfig, beams: int, batch: int, element_bytes: int = 4) -> int:
    """What one step must read: decoder weights (cross K/V projections excluded: computed once),
    the LM head (the tied embedding matrix), and the KV caches at the middle step."""
    d = config.decoder
    h, i, layers = d.hidden_size, d.intermediate_size, d.num_hidden_layers
    per_layer = (4 * h * h + 4 * h) + (2 * h * h + 2 * h) + (2 * h * i + i + h) + 3 * 2 * h
    weights = layers * per_layer + d.vocab_size * h + d.vocab_size + 2 * h
    rows, mid = beams * batch, NEW_TOKENS // 2
    kv = layers * 2 * h * (rows * mid + batch * INPUT_TOKENS)
    return element_bytes * (weights + kv)


# ----------------------------------------------------------------------------------------
# Peak RSS (a subprocess per case)
# ----------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_child(size: str, case: str, framework: str) -> dict:
    beams, batch = CASES[case]
    # build_bertgen first builds on the meta device, which imports ~75 MB of torch's Python meta
    # machinery: part of the interpreter and libraries, not of the model, so load it first
    with torch.device("meta"):
        EncoderDecoderModel(configs("small")[0], init=False)
    baseline = _status_kb("VmRSS")
    if framework.startswith("bertgen"):
        kernels.map_large_allocations()  # as bertgen.pipeline does before it loads a model
        model = build_bertgen(size)
    else:
        model = build_transformers(size)
    seen, weight_bytes = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            weight_bytes += p.numel() * p.element_size()
    if framework.startswith("bertgen"):
        prepare_model(model, device="cpu")  # packing replaces the plain weights, in place
    ids = inputs(batch, configs(size)[0].decoder.vocab_size)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: loading is not generation
    before = _status_kb("VmRSS")
    if framework.startswith("bertgen"):  # bertgen, or bertgen-bf16cache: KV caches in bf16
        run_bertgen(model, ids, beams, NEW_TOKENS, cache_dtype="bfloat16" if framework.endswith("bf16cache") else None)
    else:
        run_transformers(model, ids, beams, NEW_TOKENS)
    return {"baseline_mb": baseline / 1024, "before_mb": before / 1024, "peak_mb": _status_kb("VmHWM") / 1024,
            "weights_mb": weight_bytes / 2**20}


def peak_rss(size: str, case: str, framework: str) -> dict | None:
    cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()), "--rss-child", size, case, framework]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        print(f"  rss {size} {case} {framework} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------
def bench_size(size: str, cases: list[str], repeats: int, read_bandwidth, do_rss: bool, do_lowp: bool,
               log, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[dict]:
    """read_bandwidth(): GB/s now; read around each case for its floor."""
    config, _ = configs(size)
    began = time.perf_counter()
    model = build_bertgen(size)
    reference = build_transformers(size, like=model)
    unprepared = sharing_copy(model)
    if device != "cpu" or dtype != torch.float32:  # copies: on CPU in fp32 all three share one set
        reference, unprepared = reference.to(device, dtype), unprepared.to(device, dtype)
    prepare_model(model, dtype=dtype, device=device)
    log(f"{size}: built both models in {time.perf_counter() - began:.0f} s")
    rows = []
    for case in cases:
        beams, batch = CASES[case]
        ids = inputs(batch, config.decoder.vocab_size, device)
        reads = [read_bandwidth()]  # around the case and right after each of bertgen's runs
        best = measure({
            "bertgen": lambda n: run_bertgen(model, ids, beams, n),
            # the variants right after bertgen: `paired_cost_pct` compares runs made close together
            "bertgen+attention": lambda n: run_bertgen(model, ids, beams, n, attentions=True),
            "bertgen+bf16 cache": lambda n: run_bertgen(model, ids, beams, n, cache_dtype="bfloat16"),
            "transformers": lambda n: run_transformers(reference, ids, beams, n),
            "bertgen unprepared": lambda n: run_bertgen(unprepared, ids, beams, n),
        }, repeats, after_first=lambda: reads.append(read_bandwidth()))
        bandwidth = max(*reads, read_bandwidth())
        step_bytes = decoder_bytes_per_step(config, beams, batch, dtype.itemsize)
        floor_ms = 1e3 * step_bytes / (bandwidth * 1e9)
        runs = best["bertgen"]  # each repeat's step against the read right after it (reads[1:])
        paired = statistics.median((tn - t1) / (NEW_TOKENS - 1) * gbs * 1e9 / step_bytes
                                   for t1, tn, gbs in zip(runs["t1s"], runs["tns"], reads[1:]))
        row = {
            "size": size, "case": case, "beams": beams, "batch": batch,
            "bertgen_ms_per_step": best["bertgen"]["ms_per_step"],
            "transformers_ms_per_step": best["transformers"]["ms_per_step"],
            "speedup": best["transformers"]["ms_per_step"] / best["bertgen"]["ms_per_step"],
            "unprepared_ms_per_step": best["bertgen unprepared"]["ms_per_step"],
            "bertgen_tokens_per_s": batch * NEW_TOKENS / best["bertgen"]["tn"],
            "transformers_tokens_per_s": batch * NEW_TOKENS / best["transformers"]["tn"],
            "attention_cost_pct": paired_cost_pct(best["bertgen+attention"], best["bertgen"]),
            "bf16_cache_cost_pct": paired_cost_pct(best["bertgen+bf16 cache"], best["bertgen"]),
            "bandwidth_gbs": bandwidth,
            "floor_ms_per_step": floor_ms,
            "over_floor": best["bertgen"]["ms_per_step"] / floor_ms,
            "over_floor_paired": paired,
        }
        if do_rss:
            row["rss_bertgen"] = peak_rss(size, case, "bertgen")
            row["rss_transformers"] = peak_rss(size, case, "transformers")
            row["rss_bertgen_bf16cache"] = peak_rss(size, case, "bertgen-bf16cache")
        rows.append(row)
        log(f"{size} {case}: bertgen {row['bertgen_ms_per_step']:.1f} ms/step, transformers "
            f"{row['transformers_ms_per_step']:.1f} ms/step ({row['speedup']:.2f}x), floor {floor_ms:.1f} ms "
            f"({bandwidth:.0f} GB/s; {row['over_floor']:.2f}x, paired {paired:.2f}x), "
            f"attention {row['attention_cost_pct']:+.1f}%")
    if do_lowp:  # other precisions, against transformers fp32 (tokens may differ from fp32)
        del reference, unprepared, model
        gc.collect()
        variants = {"bf16": lambda: prepare_model(build_bertgen(size), dtype="bfloat16", device="cpu"),
                    "int8": lambda: quantize_int8(build_bertgen(size)),
                    "bf16_weights": lambda: prepare_model(build_bertgen(size), quantize="bf16-weights")}
        if kernels.native_kernels() is None:  # bf16 weights live in the native panels only
            del variants["bf16_weights"]
        for name, make in variants.items():
            lowp = make()
            for row in rows:
                if row["case"] not in ("greedy-b1", "beam4-b8"):
                    continue
                beams, batch = row["beams"], row["batch"]
                ids = inputs(batch, config.decoder.vocab_size)
                best = measure({name: lambda n: run_bertgen(lowp, ids, beams, n)}, repeats)
                row[f"{name}_ms_per_step"] = ms = best[name]["ms_per_step"]
                row[f"{name}_speedup_vs_transformers_fp32"] = speedup = row["transformers_ms_per_step"] / ms
                log(f"{size} {row['case']} {name}: {ms:.1f} ms/step ({speedup:.2f}x transformers fp32)")
            del lowp
            gc.collect()
    return rows


def _rss(r: dict | None) -> str:
    if not r:
        return "n/a"
    above = r["peak_mb"] - r["baseline_mb"]
    return f"{r['peak_mb']:.0f} MB ({r['peak_mb'] / r['weights_mb']:.2f}x; {above / r['weights_mb']:.2f}x)"


def _target(meta: dict) -> str:
    if meta.get("device", "cpu") == "cuda":
        return f"GPU: {meta['machine']}"
    return f"{meta['threads']} threads"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Generation benchmark ({meta['when']}, {_target(meta)}, torch {meta['torch']}, "
        f"transformers {meta['transformers']}, {meta.get('dtype', 'float32')} unless noted; load average at start "
        f"{meta['load_start']}, at end {meta['load_end']}; read bandwidth at start {meta['bandwidth_gbs']:.1f} GB/s). "
        f"64 input tokens, 32 new tokens.",
        "",
        "| size | case | bertgen ms/step | transformers ms/step | speed-up | bertgen unprepared ms/step "
        "| bertgen tok/s | transformers tok/s "
        "| floor ms/step (read GB/s) | bertgen / floor (paired) | attention capture "
        "| peak RSS bertgen (x weights; x without Python) "
        "| peak RSS transformers (same, x its weights) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['case']} | {r['bertgen_ms_per_step']:.1f} | {r['transformers_ms_per_step']:.1f} "
            f"| {r['speedup']:.2f}x | {r['unprepared_ms_per_step']:.1f} "
            f"| {r['bertgen_tokens_per_s']:.1f} | {r['transformers_tokens_per_s']:.1f} "
            f"| {r['floor_ms_per_step']:.1f} ({r['bandwidth_gbs']:.0f}) | {r['over_floor']:.2f} "
            f"({r['over_floor_paired']:.2f}) "
            f"| {r['attention_cost_pct']:+.1f}% "
            f"| {_rss(r.get('rss_bertgen'))} | {_rss(r.get('rss_transformers'))} |")
    names = [n for n in LOW_PRECISIONS if any(f"{n}_ms_per_step" in r for r in rows)]
    lowp = [r for r in rows if any(f"{n}_ms_per_step" in r for n in names)]
    if lowp:
        lines += ["", "| size | case | " + " | ".join(f"bertgen {LOW_PRECISIONS[n]} ms/step | speed-up vs transformers fp32"
                                                    for n in names) + " |", "|---|---|" + "---:|---:|" * len(names)]
        for r in lowp:
            cells = [f"{r[f'{n}_ms_per_step']:.1f} | {r[f'{n}_speedup_vs_transformers_fp32']:.2f}x"
                     if f"{n}_ms_per_step" in r else "n/a | n/a" for n in names]
            lines.append(f"| {r['size']} | {r['case']} | " + " | ".join(cells) + " |")
    dtype = meta.get("dtype", "float32")
    lines += ["", f"KV caches in bf16 (`cache_dtype=\"bfloat16\"`; {dtype} weights and math): time against {dtype} "
                  "caches in the same run, peak RSS.", "",
              "| size | case | time | peak RSS (x weights; x without Python) |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['case']} | {r['bf16_cache_cost_pct']:+.1f}% "
                     f"| {_rss(r.get('rss_bertgen_bf16cache'))} |")
    packing = ("the native panel kernel's layout, bertgen/csrc/panel_linear.cpp, the LM head sharing its panels "
               "with the embedding lookup, and each decoding step's decoder stack run as one native call, "
               "bertgen/csrc/decoder_step.cpp" if kernels.native_kernels() is not None else "oneDNN's blocked layout")
    lines += ["", "bertgen: the model as `bertgen.pipeline` prepares it (`prepare_model`: query/key/value "
                  f"stacked into one matrix; on CPU, linear layers packed in {packing}); unprepared: the "
                  "same weights as loaded (separate query/key/value, plain layout).",
              "", "Peak RSS is the whole process (Python + torch + weights + caches) during generation, "
                  "measured in a fresh subprocess per case; the second ratio leaves out the process's RSS "
                  "before the weights were allocated (interpreter, torch and its meta-device machinery: ~300 MB). Weights: bytes of the unique "
                  "parameters (transformers 5 holds both copies of a tied model)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, 1 repeat, no RSS or other precisions: < 1 min")
    parser.add_argument("--sizes", default=None, help="comma-separated: small,large")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ",".join(CASES))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--no-lowp", action="store_true", help="skip the bf16, int8 and bf16-weights measurements")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: both frameworks on the GPU (no peak RSS, no CPU precision table)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weights and activations of both frameworks (default float32)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--rss-child", nargs=3, metavar=("SIZE", "CASE", "FRAMEWORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch sees no CUDA device")
    dtype = getattr(torch, args.dtype)
    default_target = args.device == "cpu" and dtype == torch.float32
    torch.set_num_threads(args.threads)
    if args.rss_child:
        print(json.dumps(rss_child(*args.rss_child)))
        return 0

    import transformers
    sizes = (args.sizes or ("small" if args.quick else "small,large")).split(",")
    cases = args.cases.split(",")
    # best of 5 for the small model (its steps are short, so one slow run on a shared host moves
    # a case by 10%); the large model: at most 2 (its beam runs are long)
    repeats = args.repeats or (1 if args.quick else 5)
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)  # noqa: E731
    meta = {"when": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.processor() or platform.machine(),
            "load_start": round(os.getloadavg()[0], 2), "repeats": repeats, "device": args.device,
            "dtype": args.dtype}
    if args.device == "cuda":
        meta["machine"] = torch.cuda.get_device_name()
    read_bandwidth = functools.partial(read_bandwidth_gbs, 256 if args.quick else 1024, device=args.device)
    meta["bandwidth_gbs"] = read_bandwidth()
    log(f"read bandwidth {meta['bandwidth_gbs']:.1f} GB/s, load average {meta['load_start']}")
    rows = []
    for size in sizes:
        rows += bench_size(size, cases, min(repeats, 3) if size == "large" else repeats, read_bandwidth,
                           do_rss=default_target and not (args.quick or args.no_rss),
                           do_lowp=default_target and not (args.quick or args.no_lowp), log=log,
                           device=args.device, dtype=dtype)
        gc.collect()
    meta["load_end"] = round(os.getloadavg()[0], 2)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_generation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    table = markdown(rows, meta)
    (out / "bench_generation.md").write_text(table)
    if (default_target and not args.quick and set(sizes) == set(SIZES) and set(cases) == set(CASES)
            and args.out == parser.get_default("out")):
        command = " ".join(["python benchmarks/bench_generation.py", *(argv if argv is not None else sys.argv[1:])])
        (ROOT / "benchmarks" / "results.md").write_text(f"# Generation benchmark results\n\n`{command}`\n\n" + table)
    print(table)
    log(f"done in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

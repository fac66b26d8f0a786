"""An experiment, not part of bertgen: would a hand-written one-row kernel get large greedy
decoding to its bandwidth floor, and what does it cost?

oneDNN's packed kernels (what `prepare_model` uses on CPU) read a greedy step's weights at
27-40 GB/s where a plain sum reads 31-67 (docs/GENERATION.md, the floor item). This builds
`native_gemv.cpp` (a 30-line matrix-vector product over plain row-major weights, compiled
for this CPU; needs a C++ compiler, ninja and Python headers) and measures, interleaved so
every line sees the same moment of the host:

1. kernel level, over the large model's per-step decoder weights (24 x six matrices and the
   50358 x 1024 head, 1.55 GB): a sum of the same bytes (the floor's read), the native kernel
   at one row, oneDNN packed (one row padded to four, as `PackedLinear` runs it) and
   `kernels.matmul` on the plain weights; and at 32 rows (beam 4 x batch 8) packed against
   plain, the cost of giving up the packed layout;
2. end to end, large greedy-b1 (64 input tokens, 32 new): the prepared model against plain
   weights whose one-row calls go through the native kernel.

Usage:  python benchmarks/bench_native_gemv.py [--repeats 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_generation as bench  # noqa: E402
from bertgen import kernels  # noqa: E402
from bertgen.generation import GenerationSettings, generate  # noqa: E402
from bertgen.pipeline import prepare_model  # noqa: E402

HIDDEN, FFN, VOCAB, LAYERS = 1024, 4096, 50358, 24
STEP_SHAPES = [(3 * HIDDEN, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, HIDDEN),
               (FFN, HIDDEN), (HIDDEN, FFN)] * LAYERS + [(VOCAB, HIDDEN)]


def build_native():
    from torch.utils.cpp_extension import load
    return load("bertgen_native_gemv", [str(HERE / "native_gemv.cpp")],
                extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"],
                extra_ldflags=["-fopenmp"])


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def kernel_level(native, repeats: int) -> None:
    layers = [torch.nn.Linear(i, o) for o, i in STEP_SHAPES]
    packed = [kernels.PackedLinear(layer) for layer in layers]
    gbytes = sum(layer.weight.numel() * 4 for layer in layers) / 1e9
    one = {i: torch.randn(1, i) for _, i in STEP_SHAPES}
    many = {i: torch.randn(32, i) for _, i in STEP_SHAPES}
    runs = {
        "sum (the floor's read)": lambda: [layer.weight.sum() for layer in layers],
        "native, 1 row": lambda: [native.gemv(one[m.in_features][0], m.weight, m.bias) for m in layers],
        "oneDNN packed, 1 row": lambda: [m(one[m.in_features]) for m in packed],
        "kernels.matmul plain, 1 row": lambda: [kernels.matmul(one[m.in_features], m.weight, m.bias) for m in layers],
        "oneDNN packed, 32 rows": lambda: [m(many[m.in_features]) for m in packed],
        "kernels.matmul plain, 32 rows": lambda: [kernels.matmul(many[m.in_features], m.weight, m.bias) for m in layers],
    }
    best = {name: float("inf") for name in runs}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, fn in runs.items():
                best[name] = min(best[name], seconds(fn))
    print(f"\nKernel level: the large model's per-step decoder weights ({gbytes:.2f} GB), best of {repeats}\n")
    print("| kernel | ms | GB/s of weights |\n|---|---:|---:|")
    for name, s in best.items():
        print(f"| {name} | {s * 1e3:.1f} | {gbytes / s:.0f} |")


def end_to_end(native, repeats: int) -> None:
    use_native = False
    plain_matmul = kernels.matmul

    def matmul(x, weight, bias):  # one-row fp32 inference calls go to the native kernel
        if use_native and x.numel() == x.shape[-1] and weight.dtype == torch.float32 and not torch.is_grad_enabled():
            return native.gemv(x.reshape(-1).contiguous(), weight, bias).view(*x.shape[:-1], weight.shape[0])
        return plain_matmul(x, weight, bias)

    kernels.matmul = matmul  # kernels.linear looks it up at call time
    prepared = prepare_model(bench.build_bertgen("large"), device="cpu")
    plain = prepare_model(bench.build_bertgen("large"), device="cpu", pack=False)
    ids = bench.inputs(1, VOCAB)
    settings = GenerationSettings(max_new_tokens=32, min_new_tokens=32, num_beams=1,
                                  decoder_start_token_id=bench.START, eos_token_id=bench.EOS, pad_token_id=bench.PAD)
    times = {"prepared (packed)": [], "plain + native": []}
    with torch.inference_mode():
        reference = generate(prepared, ids, None, settings).sequences
        use_native = True
        same = torch.equal(generate(plain, ids, None, settings).sequences, reference)
        for r in range(repeats):
            for name in (list(times) if r % 2 else list(reversed(times))):
                use_native = name == "plain + native"
                model = plain if use_native else prepared
                times[name].append(seconds(lambda: generate(model, ids, None, settings)) / 32 * 1e3)
    kernels.matmul = plain_matmul
    ratios = [a / b for a, b in zip(*times.values())]
    print(f"\nEnd to end: large greedy-b1, ms per step, {repeats} interleaved pairs; same tokens: {same}\n")
    for name, ms in times.items():
        print(f"- {name}: best {min(ms):.1f}, median {statistics.median(ms):.1f} ({', '.join(f'{t:.1f}' for t in ms)})")
    print(f"- speed-up of plain + native, median of pairs: {statistics.median(ratios):.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        native = build_native()
    except Exception as error:  # no compiler, headers or ninja: say so rather than a traceback
        print(f"could not build native_gemv.cpp ({type(error).__name__}: {error})", file=sys.stderr)
        return 1
    print(f"native one-row kernel vs oneDNN ({time.strftime('%Y-%m-%d %H:%M')}, {args.threads} threads, "
          f"torch {torch.__version__}, read bandwidth now {bench.read_bandwidth_gbs():.0f} GB/s)")
    kernel_level(native, args.repeats)
    end_to_end(native, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())

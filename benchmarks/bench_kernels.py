"""Matrix-multiply kernels on this CPU: `bertgen.kernels` against `F.linear` (MKL).

Not a test. For the weight shapes of the benchmark models (hidden 384/1024, FFN 4x) and the
row counts that occur (1 = greedy step, 4 = beams, 32 = beam 4 x batch 8, 64/256 = an
encoder pass), and for LM heads (vocab x hidden) at a step's row counts, it reports ms per
call of F.linear, of `kernels.matmul` on the plain weight, of `kernels.PackedLinear` as
`prepare_model` holds it on CPU (the native panel kernel's layout where it is built), of
PackedLinear in oneDNN's blocked layout (its fallback), of PackedLinear in bf16 where the
CPU packs bf16, and of PackedLinear with its fp32 weight stored in bf16 panels
(`quantize="bf16-weights"`) where the native kernels build; best of `--repeats`, all
interleaved so they see the same machine load.

Usage:  python benchmarks/bench_kernels.py [--threads 2] [--save]   (--save keeps benchmarks/results_kernels.md)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bertgen import kernels  # noqa: E402

SHAPES = [(1024, 1024), (4096, 1024), (1024, 4096), (384, 384), (1536, 384), (384, 1536)]
ROWS = [1, 2, 4, 32, 64, 256]
# LM heads (vocab x hidden) at a step's row counts: the plain tied weight (`kernels.matmul`)
# against a packed copy, which `prepare_model` keeps for heads at most 512 wide
HEAD_SHAPES = [(30522, 384), (50358, 512), (30522, 768), (50358, 1024)]
HEAD_ROWS = [1, 4, 32]


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--save", action="store_true", help="also write benchmarks/results_kernels.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows_out = []
    with torch.inference_mode():
        shapes = [(shape, ROWS) for shape in SHAPES] + [(shape, HEAD_ROWS) for shape in HEAD_SHAPES]
        for (out_f, in_f), row_counts in shapes:
            # several weights per call so they are read from memory, as in a model, not from cache
            count = max(2, (64 << 20) // (4 * out_f * in_f))  # 64 MB or more: more than any CPU cache
            layers = [torch.nn.Linear(in_f, out_f) for _ in range(count)]
            packed = [kernels.PackedLinear(layer) for layer in layers]
            onednn = [kernels.PackedLinear(layer, native=False) for layer in layers]
            packed_bf16 = ([kernels.PackedLinear(copy.deepcopy(layer).to(torch.bfloat16)) for layer in layers]
                           if kernels.packable(layers[0].weight.bfloat16()) else None)
            # fp32 math on weights stored in bf16 panels (quantize="bf16-weights")
            bf16_weights = ([kernels.PackedLinear(layer, storage=torch.bfloat16) for layer in layers]
                            if kernels.native_kernels() is not None else None)
            for rows in row_counts:
                x = torch.randn(rows, in_f)
                ms = {
                    "F.linear": best_ms(lambda: [F.linear(x, m.weight, m.bias) for m in layers], args.repeats),
                    "matmul": best_ms(lambda: [kernels.matmul(x, m.weight, m.bias) for m in layers], args.repeats),
                    "packed": best_ms(lambda: [m(x) for m in packed], args.repeats),
                    "oneDNN packed": best_ms(lambda: [m(x) for m in onednn], args.repeats),
                }
                if packed_bf16:
                    xb = x.bfloat16()
                    ms["packed bf16"] = best_ms(lambda: [m(xb) for m in packed_bf16], args.repeats)
                if bf16_weights:
                    ms["bf16 weights"] = best_ms(lambda: [m(x) for m in bf16_weights], args.repeats)
                row = {"out": out_f, "in": in_f, "rows": rows, **{k: round(v / count, 3) for k, v in ms.items()}}
                row["packed GFLOP/s"] = round(2 * rows * out_f * in_f / 1e9 / (row["packed"] / 1e3), 1)
                rows_out.append(row)
                print(json.dumps(row), flush=True)
    bf16, bf16_weights = "packed bf16" in rows_out[0], "bf16 weights" in rows_out[0]
    layout = ("the native panel kernel (bertgen/csrc/panel_linear.cpp)" if kernels.native_kernels() is not None
              else "oneDNN's blocked layout (the native kernel is not built here)")
    lines = [f"Kernel benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {args.threads} threads, torch "
             f"{torch.__version__}, best of {args.repeats}; load average at end {os.getloadavg()[0]:.2f}). "
             "ms per call; weights cycled through 64 MB or more so they come from memory. "
             "The last rows are LM-head shapes.", "",
             f"PackedLinear: {layout}.", "",
             f"| out x in | rows | F.linear ms | kernels.matmul ms | PackedLinear ms | oneDNN packed ms | "
             f"packed vs F.linear | packed vs matmul | packed vs oneDNN packed |"
             f"{' packed bf16 ms | bf16 vs matmul |' if bf16 else ''}"
             f"{' bf16-weights ms | bf16-weights vs packed |' if bf16_weights else ''}",
             f"|---|---:|---:|---:|---:|---:|---:|---:|---:|{'---:|---:|' if bf16 else ''}"
             f"{'---:|---:|' if bf16_weights else ''}"]
    for r in rows_out:
        line = (f"| {r['out']} x {r['in']} | {r['rows']} | {r['F.linear']} | {r['matmul']} | {r['packed']} | "
                f"{r['oneDNN packed']} | {r['F.linear'] / r['packed']:.2f}x | {r['matmul'] / r['packed']:.2f}x | "
                f"{r['oneDNN packed'] / r['packed']:.2f}x |")
        if bf16:
            line += f" {r['packed bf16']} | {r['matmul'] / r['packed bf16']:.2f}x |"
        if bf16_weights:
            line += f" {r['bf16 weights']} | {r['packed'] / r['bf16 weights']:.2f}x |"
        lines.append(line)
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.save:
        (ROOT / "benchmarks" / "results_kernels.md").write_text(
            "# Kernel benchmark results\n\n`python benchmarks/bench_kernels.py --save`\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

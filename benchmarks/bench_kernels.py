"""Matrix-multiply kernels on this CPU: `bertgen.kernels.matmul` against `F.linear` (MKL).

Not a test. For the weight shapes of the benchmark models (hidden 384/1024, FFN 4x) and the
row counts that occur (1 = greedy step, 4 = beams, 32 = beam 4 x batch 8, 64/256 = an
encoder pass) it reports ms per call and the ratio, best of `--repeats`, both interleaved so
they see the same machine load.

Usage:  python benchmarks/bench_kernels.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bertgen import kernels  # noqa: E402

SHAPES = [(1024, 1024), (4096, 1024), (1024, 4096), (384, 384), (1536, 384)]
ROWS = [1, 4, 32, 64, 256]


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows_out = []
    with torch.inference_mode():
        for out_f, in_f in SHAPES:
            # several weights per call so they are read from memory, as in a model, not from cache
            count = max(8, (64 << 20) // (4 * out_f * in_f))  # 64 MB: more than any CPU cache
            weights = [torch.randn(out_f, in_f) * 0.02 for _ in range(count)]
            bias = torch.zeros(out_f)
            for rows in ROWS:
                x = torch.randn(rows, in_f)
                ref = best_ms(lambda: [F.linear(x, w, bias) for w in weights], args.repeats) / len(weights)
                new = best_ms(lambda: [kernels.matmul(x, w, bias) for w in weights], args.repeats) / len(weights)
                gflop = 2 * rows * out_f * in_f / 1e9
                rows_out.append({"out": out_f, "in": in_f, "rows": rows, "F.linear ms": round(ref, 3),
                                 "bertgen ms": round(new, 3), "speed-up": round(ref / new, 2),
                                 "bertgen GFLOP/s": round(gflop / new * 1e3, 1)})
                print(json.dumps(rows_out[-1]), flush=True)
    print("\n| out x in | rows | F.linear ms | bertgen.kernels ms | speed-up |\n|---|---:|---:|---:|---:|")
    for r in rows_out:
        print(f"| {r['out']} x {r['in']} | {r['rows']} | {r['F.linear ms']} | {r['bertgen ms']} | {r['speed-up']}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

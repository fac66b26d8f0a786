"""The benchmark scripts still run and write what the README reads (they assert nothing about
speed: tests never assert wall-clock time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generation_benchmark_quick_run_writes_its_tables(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "benchmarks/bench_generation.py", "--quick", "--cases", "greedy-b1,beam4-b1",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "bench_generation.json").read_text())
    assert [(r["size"], r["case"]) for r in result["rows"]] == [("small", "greedy-b1"), ("small", "beam4-b1")]
    for row in result["rows"]:
        for key in ("bertgen_ms_per_step", "transformers_ms_per_step", "unprepared_ms_per_step", "floor_ms_per_step",
                    "over_floor_paired"):
            assert row[key] > 0, key
    table = (tmp_path / "bench_generation.md").read_text()
    for row in result["rows"]:  # each case's floor from the bandwidth read around it, shown beside it
        assert (f"| {row['floor_ms_per_step']:.1f} ({row['bandwidth_gbs']:.0f}) | {row['over_floor']:.2f} "
                f"({row['over_floor_paired']:.2f}) |") in table
    assert "| small | beam4-b1 |" in table and "unprepared" in table
    assert not (ROOT / "benchmarks" / "results.md").read_text().count("--quick")  # a quick run never replaces it


def test_generation_benchmark_runs_in_another_dtype_and_refuses_a_missing_gpu(tmp_path):
    """The GPU form (`--device cuda --dtype bfloat16`) shares this code path; here the device is
    the CPU, and asking for CUDA without one is a clear error, not a traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "benchmarks/bench_generation.py", "--quick", "--cases", "greedy-b1", "--out", str(tmp_path)]
    done = subprocess.run([*command, "--dtype", "bfloat16"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "bench_generation.json").read_text())
    assert result["meta"]["dtype"] == "bfloat16" and result["rows"][0]["bertgen_ms_per_step"] > 0
    assert "bfloat16 unless noted" in (tmp_path / "bench_generation.md").read_text()
    import torch
    if not torch.cuda.is_available():
        done = subprocess.run([*command, "--device", "cuda"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and "sees no CUDA device" in done.stderr and "Traceback" not in done.stderr


def test_generation_benchmark_times_the_other_precisions(tmp_path):
    """bf16, int8 and (where the native kernels hold them) bf16 weights, each against
    transformers fp32, in a table of their own."""
    from bertgen.kernels import native_kernels
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "benchmarks/bench_generation.py", "--sizes", "small", "--cases", "greedy-b1",
                           "--repeats", "1", "--no-rss", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads((tmp_path / "bench_generation.json").read_text())["rows"]
    names = ["bf16", "int8"] + (["bf16_weights"] if native_kernels() is not None else [])
    for name in names:
        assert row[f"{name}_ms_per_step"] > 0 and row[f"{name}_speedup_vs_transformers_fp32"] > 0
    table = (tmp_path / "bench_generation.md").read_text()
    header = "| size | case | bertgen bf16 ms/step | speed-up vs transformers fp32 | bertgen int8 ms/step |"
    assert header in table and ("bertgen bf16-weights ms/step" in table) == ("bf16_weights" in names)
    cells = " | ".join(f"{row[f'{n}_ms_per_step']:.1f} | {row[f'{n}_speedup_vs_transformers_fp32']:.2f}x" for n in names)
    assert f"| small | greedy-b1 | {cells} |" in table

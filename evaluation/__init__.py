"""Scoring model outputs on the benchmark datasets: metrics, runs and plots.

  benchmarks  the paper's benchmarks: data, formatting, metrics, the paper's numbers
  data        loading their examples (hub or local files) through `datasets`
  metrics     the field's metrics as local `evaluate` modules
  runner      run_evaluation: batched, resumable, shardable generation + scoring
  runs        the results folder: records, predictions, leaderboard
  plots       plotly figures and the HTML report

The names below are imported lazily, so `import evaluation.metrics` stays light.
"""

import importlib

_EXPORTS = {
    "BENCHMARKS": "benchmarks", "Benchmark": "benchmarks", "get_benchmark": "benchmarks",
    "load_examples": "data", "DataError": "data",
    "run_evaluation": "runner", "merge": "runner", "COPY": "runner",
    "RunRecord": "runs", "RunError": "runs", "load_runs": "runs", "leaderboard": "runs",
    "metrics_by_model": "plots", "score_vs_length": "plots", "per_example_diff": "plots",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'evaluation' has no attribute {name!r}")

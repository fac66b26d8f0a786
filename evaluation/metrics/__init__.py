"""The field's metrics as local `evaluate` modules, loaded by path so they work offline.

`evaluate.load("rouge")` fetches a script from the Hub, which fails offline; the modules here are
folders `name/name.py` (evaluate requires the file to be named after its folder) holding an
`evaluate.Metric`. Each is self-contained because evaluate copies the file alone into its cache.
All scores are on a 0-100 scale. SARI comes in variants; see docs/METRICS.md.
"""

import functools
import threading
from pathlib import Path

import evaluate

METRICS = ["bleu", "exact_match", "rouge", "sari"]
_HERE = Path(__file__).resolve().parent
_LOCK = threading.Lock()  # an evaluate.Metric holds per-call state; the cache shares instances


@functools.cache
def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """The metric `name` (one of METRICS), loaded once; kwargs go to `evaluate.load`."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return evaluate.load(str(_HERE / name), **{"keep_in_memory": True, **kwargs})


def compute(name: str, predictions, references, sources=None, **kwargs) -> dict:
    """Score predictions with metric `name`; sources are needed by SARI only."""
    if sources is not None:
        kwargs["sources"] = sources
    metric = load_metric(name)
    with _LOCK:
        return metric.compute(predictions=list(predictions), references=list(references), **kwargs)

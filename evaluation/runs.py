"""The results folder: one JSON record per run plus its predictions JSONL, and the leaderboard.

Every run is kept (the app, the report and the README read them back), so reading must survive
what a killed or hand-edited run leaves behind: a truncated last line, a corrupt line, an
unreadable record. Those are reported as warnings and skipped; the other runs still load.

Layout of `runs/`:
  <run_id>.json               the record (RunRecord.to_dict), rewritten atomically
  <run_id>.predictions.jsonl  one line per example: index, source, reference, prediction, seconds
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

HEADLINE_METRICS = ("exact_match", "sari", "bleu", "rouge1", "rouge2", "rougeL", "rougeLsum")


class RunError(RuntimeError):
    """A run that cannot be started, resumed or merged as asked."""


@dataclass
class RunRecord:
    """What was evaluated, how, where, and the scores: everything needed to trust a number."""

    run_id: str
    group_id: str  # shared by the shards of one run (and by their merge)
    model: str
    model_hash: str  # "sha256:..." of the weights, "revision:..." for hub ids, or "copy"
    benchmark: str
    task: str
    split: str
    data: str  # where the examples came from
    data_hash: str
    limit: int | None
    total_examples: int  # examples in the evaluated slice, all shards together
    num_examples: int  # examples this run (shard) owns
    num_done: int = 0
    status: str = "running"  # running | stopped | complete
    settings: dict = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 16
    num_shards: int = 1
    shard_index: int | None = 0  # None for a merge of shards
    merged_from: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    sari_variant: str | None = None
    seconds: float = 0.0  # generation time summed over the examples
    examples_per_second: float | None = None
    device: str = "cpu"
    dtype: str | None = None
    quantize: str | None = None  # "int8" / "bf16-weights" / "4bit" (bertgen.pipeline)
    hardware: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    date: str = ""
    predictions_file: str = ""  # relative to the record's folder
    folder: Path | None = field(default=None, repr=False, compare=False)

    @property
    def predictions_path(self) -> Path:
        return (self.folder or Path(".")) / self.predictions_file

    @property
    def record_path(self) -> Path:
        return (self.folder or Path(".")) / f"{self.run_id}.json"

    @property
    def is_final(self) -> bool:
        """A complete result for the whole slice: an unsharded run or a merge, finished."""
        return self.status == "complete" and (self.num_shards == 1 or self.shard_index is None)

    @property
    def label(self) -> str:
        """The model's short name, as plots and the leaderboard show it (a hub id or folder's last part),
        with its precision when it is not float32, e.g. `wikisplit-split-small (int8)`."""
        name = self.model.rstrip("/").rsplit("/", 1)[-1]
        precision = self.quantize or (self.dtype if self.dtype not in (None, "float32") else None)
        return f"{name} ({precision})" if precision else name

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("folder")
        return data

    @classmethod
    def from_dict(cls, data: dict, folder: Path | None = None) -> "RunRecord":
        known = {f.name for f in dataclasses.fields(cls)} - {"folder"}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = required - set(data)
        if missing:
            raise ValueError(f"record lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known}, folder=folder)

    def save(self) -> Path:
        """Writes the record atomically: a reader never sees half a file."""
        path = self.record_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


# ----------------------------------------------------------------------------------------
# Reading records
# ----------------------------------------------------------------------------------------
def read_record(path: str | os.PathLike) -> RunRecord:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return RunRecord.from_dict(data, folder=path.parent)
    except (OSError, ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunError(f"{path}: not a readable run record ({err})") from None


def load_runs(output_dir: str | os.PathLike = "runs") -> list[RunRecord]:
    """Every run record in `output_dir`, oldest first; unreadable ones are skipped with a warning."""
    runs = []
    for path in sorted(Path(output_dir).glob("*.json")):
        try:
            runs.append(read_record(path))
        except RunError as err:
            warnings.warn(f"skipping {err}", stacklevel=2)
    return sorted(runs, key=lambda r: (r.date, r.run_id))


def find_run(output_dir: str | os.PathLike, ref: str) -> RunRecord:
    """A run by record path, run id, or unique run id prefix."""
    if Path(ref).is_file():
        return read_record(ref)
    matches = [r for r in load_runs(output_dir) if r.run_id == ref] or \
              [r for r in load_runs(output_dir) if r.run_id.startswith(ref)]
    if len(matches) != 1:
        raise RunError(f"{'no' if not matches else len(matches)} runs in {output_dir} match {ref!r}")
    return matches[0]


# ----------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------
def read_predictions(path: str | os.PathLike, repair: bool = False) -> dict[int, dict]:
    """Predictions by example index. A corrupt line is reported and skipped; an unfinished last
    line (a run killed mid-write) is dropped, and with `repair` cut off the file so appends
    continue on a clean line. A repeated index keeps its first line."""
    path = Path(path)
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) < len(raw):
        if repair:
            with path.open("r+b") as f:
                f.truncate(len(complete))
        else:
            warnings.warn(f"{path}: ignoring an unfinished last line", stacklevel=2)
    rows: dict[int, dict] = {}
    for lineno, line in enumerate(complete.splitlines(), 1):
        try:
            row = json.loads(line)
            index = int(row["index"])
            row["prediction"]  # noqa: B018 - a line without a prediction is corrupt
        except (ValueError, KeyError, TypeError):
            warnings.warn(f"{path}, line {lineno}: corrupt prediction line skipped", stacklevel=2)
            continue
        rows.setdefault(index, row)
    return rows


def predictions_frame(run: RunRecord) -> pd.DataFrame:
    """A run's predictions as a table ordered by example index."""
    rows = read_predictions(run.predictions_path)
    frame = pd.DataFrame([rows[i] for i in sorted(rows)])
    if frame.empty:
        frame = pd.DataFrame(columns=["index", "source", "reference", "prediction", "seconds"])
    return frame


# ----------------------------------------------------------------------------------------
# Per-example scores (for plots: score vs length, model vs model)
# ----------------------------------------------------------------------------------------
def example_scores(run: RunRecord, metric: str | None = None) -> pd.DataFrame:
    """Predictions with a per-example `score` (0-100) and the source `length` in words.

    Sentence-level versions of the corpus metrics: SARI per sentence (the corpus SARI is their
    mean), sentence BLEU, ROUGE F1, exact match 0/100."""
    from .benchmarks import get_benchmark

    metric = metric or get_benchmark(run.benchmark).primary_metric
    frame = predictions_frame(run)
    score = _sentence_scorer(metric, run.sari_variant or get_benchmark(run.benchmark).sari_variant)
    frame["score"] = [score(s, p, r) for s, p, r in zip(frame["source"], frame["prediction"], frame["reference"])]
    frame["length"] = [len(s.split()) for s in frame["source"]]
    frame.attrs["metric"] = metric
    return frame


def _sentence_scorer(metric: str, sari_variant: str):
    if metric == "exact_match":
        return lambda s, p, r: 100.0 * (" ".join(p.split()) == " ".join(r.split()))
    if metric == "sari":
        from .metrics.sari.sari import sentence_sari  # the metric's own sentence-level function
        return lambda s, p, r: 100.0 * sentence_sari(s, p, [r], sari_variant)[0]
    if metric == "bleu":
        import sacrebleu
        return lambda s, p, r: sacrebleu.sentence_bleu(p, [r]).score
    if metric.startswith("rouge"):
        from rouge_score import rouge_scorer
        scorer = rouge_scorer.RougeScorer([metric], use_stemmer=True)
        return lambda s, p, r: 100.0 * scorer.score(r, p)[metric].fmeasure
    raise ValueError(f"no per-example score for metric {metric!r}")


# ----------------------------------------------------------------------------------------
# Leaderboard
# ----------------------------------------------------------------------------------------
def leaderboard(runs: list[RunRecord], final_only: bool = True, paper: bool = False) -> pd.DataFrame:
    """One row per run: model, benchmark, split, examples, headline metrics, speed, date.

    `final_only` leaves out unfinished runs and single shards; `paper` adds the paper's
    reference rows for the benchmarks present."""
    kept = [r for r in runs if r.is_final or not final_only]
    if final_only:  # a run and the merge of its shards are one result: keep the latest
        kept = list({r.group_id: r for r in sorted(kept, key=lambda r: r.date)}.values())
    rows = [_leaderboard_row(r) for r in kept]
    if paper:
        rows += _paper_rows({(r.benchmark, r.split) for r in runs})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["model", "benchmark", "split", "examples", *HEADLINE_METRICS])
    frame = frame.dropna(axis=1, how="all").astype({"examples": "Int64"})
    return frame.sort_values(["benchmark", "split", "model"], kind="stable").reset_index(drop=True)


def _leaderboard_row(run: RunRecord) -> dict:
    row = {"model": run.label, "benchmark": run.benchmark, "split": run.split, "examples": run.num_done}
    row.update({m: round(run.metrics[m], 2) for m in HEADLINE_METRICS if isinstance(run.metrics.get(m), (int, float))})
    row.update({"sari_variant": run.sari_variant, "examples/s": _round(run.examples_per_second),
                "device": run.device, "status": run.status, "date": run.date[:19], "run_id": run.run_id})
    return row


def _paper_rows(benchmark_splits) -> list[dict]:
    from .benchmarks import get_benchmark

    rows = []
    for name in sorted({b for b, _ in benchmark_splits}):
        ref = get_benchmark(name).paper_reference()
        if ref:
            rows.append({"model": ref["label"], "benchmark": name, "split": "paper", **ref["values"],
                         "sari_variant": "paper" if "sari" in ref["values"] else None})
    return rows


def _round(value):
    return None if value is None else round(value, 2)


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (no `tabulate` dependency)."""
    def cell(v):
        return "" if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)) else str(v).replace("|", "\\|")
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"

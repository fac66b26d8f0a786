"""The paper's benchmarks: where each data set lives, how a row becomes (source, target), how it is scored.

One registry, so that the CLI, the app and the plots agree on what "wikisplit" means: the same
columns, the same input formatting, the same metrics, and the same row of the paper's table to
compare against (`paper_results.csv`, the headline numbers of Rothe et al. 2019, carried as data).
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bertgen.tasks import SEP, TASKS

HERE = Path(__file__).resolve().parent
PAPER_CSV = HERE / "paper_results.csv"
# Where the WikiSplit tune/validation files live in this workspace (see ../shared/data/wikisplit/README.md).
SHARED_WIKISPLIT = HERE.parents[1] / "shared" / "data" / "wikisplit"
# Metric names in the paper's table -> keys that evaluation.metrics returns.
PAPER_METRIC_NAMES = {"exact": "exact_match"}

Row = dict
Formatter = Callable[[Row], tuple[str, str]]


# ----------------------------------------------------------------------------------------
# Row formatting: a data set row -> (model input, reference)
# ----------------------------------------------------------------------------------------
def _join(*parts: str, sep: str = " ") -> str:
    return sep.join(p.strip() for p in parts if p and p.strip())


def columns(source: str, target: str) -> Formatter:
    """The plain case: one source column, one target column."""
    def fmt(row: Row) -> tuple[str, str]:
        return row[source] or "", row[target] or ""
    fmt.columns = (source, target)
    return fmt


def discofuse(row: Row) -> tuple[str, str]:
    """Two (possibly empty) incoherent sentences in, the coherent text out, joined by a space
    (the input form of the google discofuse model card)."""
    return (_join(row["incoherent_first_sentence"], row["incoherent_second_sentence"]),
            _join(row["coherent_first_sentence"], row["coherent_second_sentence"]))


discofuse.columns = ("incoherent_first_sentence", "incoherent_second_sentence",
                     "coherent_first_sentence", "coherent_second_sentence")


def _wikisplit_target(row: Row) -> str:
    """The split sentences joined by ` <::::> `: as in the TSV files, or rebuilt from the hub's two columns."""
    if row.get("simple_sentences"):
        return row["simple_sentences"]
    return _join(row["simple_sentence_1"], row["simple_sentence_2"], sep=f" {SEP} ")


def wikisplit(row: Row) -> tuple[str, str]:
    return row["complex_sentence"], _wikisplit_target(row)


def wikisplit_fusion(row: Row) -> tuple[str, str]:
    """WikiSplit read backwards: two sentences (with the separator) in, the original sentence out."""
    return _wikisplit_target(row), row["complex_sentence"]


wikisplit.columns = wikisplit_fusion.columns = ("complex_sentence", "simple_sentences")


def translation(src: str, tgt: str) -> Formatter:
    """WMT rows hold one `translation` dict keyed by language."""
    def fmt(row: Row) -> tuple[str, str]:
        pair = row["translation"]
        return pair[src], pair[tgt]
    fmt.columns = ("translation",)
    return fmt


# ----------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    task: str  # a bertgen.tasks.TASKS name
    format: Formatter
    metrics: tuple[str, ...]  # evaluation.metrics names, in display order
    hub_id: str | None = None
    hub_config: str | None = None
    # For data sets whose main branch is a loading script (datasets >= 4 refuses those): the
    # hub's auto-converted parquet files, "{split}" filled in, read with the parquet builder.
    hub_parquet: str | None = None
    splits: tuple[str, ...] = ("train", "validation", "test")
    default_split: str = "test"
    paper_dataset: str | None = None  # `dataset` in paper_results.csv
    # Header-less local files (the WikiSplit TSV): the names of their columns, and where to look
    # for `{split}.tsv` when no file is given.
    file_columns: tuple[str, ...] | None = None
    local_dir: Path | None = None
    pretokenized: bool = False  # data already in WikiSplit style: do not pretokenize it again
    sari_variant: str = "paper"  # the variant the paper's SARI was computed with

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns a row needs (what a local file must provide, or map with `columns=`)."""
        return self.format.columns

    @property
    def primary_metric(self) -> str:
        """The headline score: per-example plots use it, the paper marker is chosen by it
        (a 0/1 exact match says little about one example, so SARI where there is one)."""
        if "sari" in self.metrics:
            return "sari"
        return "rougeL" if self.metrics[0] == "rouge" else self.metrics[0]

    def local_file(self, split: str) -> Path | None:
        """The bundled/shared local copy of `split`, if this workspace has one."""
        if self.local_dir is not None and (self.local_dir / f"{split}.tsv").is_file():
            return self.local_dir / f"{split}.tsv"
        return None

    def paper(self) -> list[dict]:
        """The paper's rows for this benchmark: dicts with model, layers, metric, value, split."""
        return [r for r in paper_results() if r["dataset"] == self.paper_dataset]

    def paper_reference(self) -> dict:
        """The paper's largest model with the best headline score, as {metric: value} + label.

        The public google checkpoints are the 24-layer models, so that is the fair marker."""
        rows = self.paper()
        if not rows:
            return {}
        top = max(r["layers"] for r in rows)
        models = {r["model"] for r in rows if r["layers"] == top}
        headline = self.primary_metric
        best = max(models, key=lambda m: next(r["value"] for r in rows
                                              if r["model"] == m and r["layers"] == top and r["metric"] == headline))
        values = {r["metric"]: r["value"] for r in rows if r["model"] == best and r["layers"] == top}
        return {"label": f"paper: {best}-{top}L ({rows[0]['split']})", "values": values}


SPLIT_METRICS = ("exact_match", "sari", "bleu")
FUSION_METRICS = ("exact_match", "sari")


def _converted(repo: str) -> dict:
    """A hub data set whose main branch is a loading script: read the hub's parquet conversion."""
    return {"hub_id": repo, "hub_parquet": f"hf://datasets/{repo}@refs%2Fconvert%2Fparquet/default/{{split}}/*.parquet"}


# Both WikiSplit directions read the same data: the hub's copy, or the released TSV files.
_WIKISPLIT = dict(**_converted("google-research-datasets/wiki_split"), splits=("train", "tune", "validation", "test"),
                  default_split="validation", file_columns=("complex_sentence", "simple_sentences"),
                  local_dir=SHARED_WIKISPLIT, pretokenized=True)

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("discofuse", "DiscoFuse (Wikipedia)", "sentence-fusion", discofuse, FUSION_METRICS,
              hub_id="google-research-datasets/discofuse", hub_config="discofuse-wikipedia",
              paper_dataset="discofuse"),
    Benchmark("wikisplit", "WikiSplit", "sentence-splitting", wikisplit, SPLIT_METRICS,
              paper_dataset="wikisplit", **_WIKISPLIT),
    Benchmark("wikisplit-fusion", "WikiSplit read backwards (fusion)", "sentence-fusion", wikisplit_fusion,
              FUSION_METRICS, **_WIKISPLIT),
    Benchmark("gigaword", "Gigaword headlines", "summarization", columns("document", "summary"), ("rouge",),
              paper_dataset="gigaword", **_converted("Harvard/gigaword")),
    Benchmark("cnn_dailymail", "CNN/DailyMail 3.0.0", "summarization", columns("article", "highlights"),
              ("rouge",), hub_id="abisee/cnn_dailymail", hub_config="3.0.0", paper_dataset="cnn_dailymail"),
    Benchmark("xsum", "BBC XSum", "summarization", columns("document", "summary"), ("rouge",),
              paper_dataset="xsum", **_converted("EdinburghNLP/xsum")),
    Benchmark("wmt14-en-de", "WMT14 en->de (newstest2014)", "translation-en-de", translation("en", "de"),
              ("bleu",), hub_id="wmt/wmt14", hub_config="de-en", paper_dataset="wmt14_en_de"),
    Benchmark("wmt14-de-en", "WMT14 de->en (newstest2014)", "translation-de-en", translation("de", "en"),
              ("bleu",), hub_id="wmt/wmt14", hub_config="de-en", paper_dataset="wmt14_de_en"),
)}


def get_benchmark(name: str | Benchmark) -> Benchmark:
    if isinstance(name, Benchmark):
        return name
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


@functools.cache
def _paper_rows() -> tuple[dict, ...]:
    with PAPER_CSV.open(newline="", encoding="utf-8") as f:
        return tuple({**row, "layers": int(row["layers"]), "value": float(row["value"]),
                      "metric": PAPER_METRIC_NAMES.get(row["metric"], row["metric"])}
                     for row in csv.DictReader(f))


def paper_results() -> list[dict]:
    """Every row of paper_results.csv, metric names as evaluation.metrics spells them."""
    return [dict(r) for r in _paper_rows()]


def check_registry() -> list[str]:
    """Problems in the registry (empty when consistent); the tests assert it is empty."""
    problems = []
    datasets = {r["dataset"] for r in paper_results()}
    for b in BENCHMARKS.values():
        if b.task not in TASKS:
            problems.append(f"{b.name}: unknown task {b.task!r}")
        if b.default_split not in b.splits:
            problems.append(f"{b.name}: default split {b.default_split!r} not in {b.splits}")
        if b.paper_dataset and b.paper_dataset not in datasets:
            problems.append(f"{b.name}: no paper rows for {b.paper_dataset!r}")
        if b.paper_dataset and not {r["metric"] for r in b.paper()} <= _metric_keys(b):
            problems.append(f"{b.name}: paper metrics {sorted({r['metric'] for r in b.paper()})} not all scored")
    return problems


def _metric_keys(b: Benchmark) -> set[str]:
    return {k for m in b.metrics for k in (("rouge1", "rouge2", "rougeL", "rougeLsum") if m == "rouge" else (m,))}

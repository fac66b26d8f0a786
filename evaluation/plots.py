"""Plots of evaluation runs: pure functions from run records to plotly figures, plus the HTML report.

Pure so that the app, the report and the tests draw the same thing, and the tests can check the
traces without a browser. The paper's numbers are drawn as markers next to our bars; they are
test-set scores, so a marker beside a validation run is a landmark, not a like-for-like target.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from .benchmarks import get_benchmark
from .runs import HEADLINE_METRICS, RunRecord, example_scores, leaderboard, to_markdown


def _metric_keys(run: RunRecord, metrics) -> list[str]:
    wanted = metrics or HEADLINE_METRICS
    return [m for m in wanted if isinstance(run.metrics.get(m), (int, float))]


def _labels(runs: list[RunRecord]) -> list[str]:
    """Distinct x labels (plotly merges equal categories): model, then benchmark/split and the
    run's hash where needed to tell runs apart."""
    several = len({(r.benchmark, r.split) for r in runs}) > 1
    labels = [f"{r.label}<br>{r.benchmark}/{r.split}" if several else r.label for r in runs]
    labels = [label if r.is_final else f"{label} ({r.num_done}/{r.num_examples})" for label, r in zip(labels, runs)]
    return [f"{label} ({r.group_id[:6]})" if labels.count(label) > 1 else label for label, r in zip(labels, runs)]


def metrics_by_model(runs: list[RunRecord], paper: bool = True, metrics=None) -> go.Figure:
    """One bar group per run with scores (model, and benchmark/split when several), one bar per
    metric; the paper's reference model as a marker on the same axis. Unfinished runs say how
    many examples their scores cover."""
    runs = [r for r in runs if r.metrics]
    labels = _labels(runs)
    keys = list(dict.fromkeys(k for r in runs for k in _metric_keys(r, metrics)))
    fig = go.Figure()
    for key in keys:
        fig.add_bar(name=key, x=labels, y=[r.metrics.get(key) for r in runs],
                    hovertemplate=f"{key}: %{{y:.2f}}<extra>%{{x}}</extra>")
    if paper:
        for key in keys:
            refs = [get_benchmark(r.benchmark).paper_reference() for r in runs]
            ys = [ref.get("values", {}).get(key) for ref in refs]
            if any(y is not None for y in ys):
                fig.add_scatter(name=f"paper {key}", x=labels, y=ys, mode="markers",
                                marker={"symbol": "line-ew-open", "size": 28, "line": {"width": 3}},
                                text=[ref.get("label", "") for ref in refs],
                                hovertemplate=f"%{{text}}<br>{key}: %{{y:.2f}}<extra></extra>")
    fig.update_layout(barmode="group", title="Scores by model (markers: the paper)",
                      yaxis_title="score (0-100)", legend_title="metric")
    return fig


def score_vs_length(run: RunRecord, metric: str | None = None, bins: int = 8) -> go.Figure:
    """Per-example score against input length (words), with the mean per length bin."""
    frame = example_scores(run, metric)
    metric = frame.attrs["metric"]
    fig = go.Figure()
    fig.add_scatter(name="examples", x=frame["length"], y=frame["score"], mode="markers",
                    marker={"size": 5, "opacity": 0.5}, text=[_short(p) for p in frame["prediction"]],
                    hovertemplate="%{x} words, score %{y:.1f}<br>%{text}<extra></extra>")
    if len(frame) > 1:
        binned = frame.groupby(pd.cut(frame["length"], bins=min(bins, frame["length"].nunique()) or 1),
                               observed=True)
        means = binned.agg(length=("length", "mean"), score=("score", "mean")).dropna()
        fig.add_scatter(name="mean per bin", x=means["length"], y=means["score"], mode="lines+markers")
    fig.update_layout(title=f"{run.label} on {run.benchmark}/{run.split}: {metric} by input length",
                      xaxis_title="input length (words)", yaxis_title=f"{metric} per example")
    return fig


def compare_examples(run_a: RunRecord, run_b: RunRecord, metric: str | None = None) -> pd.DataFrame:
    """Both runs' predictions side by side on their shared examples, with the score difference."""
    if (run_a.benchmark, run_a.data_hash) != (run_b.benchmark, run_b.data_hash):
        raise ValueError(f"{run_a.run_id} and {run_b.run_id} are not on the same data")
    metric = metric or get_benchmark(run_a.benchmark).primary_metric
    a, b = example_scores(run_a, metric), example_scores(run_b, metric)
    joined = a.merge(b[["index", "prediction", "score"]], on="index", suffixes=("_a", "_b"))
    joined["difference"] = joined["score_a"] - joined["score_b"]
    joined.attrs["metric"] = metric
    return joined.sort_values("difference", kind="stable").reset_index(drop=True)


def per_example_diff(run_a: RunRecord, run_b: RunRecord, metric: str | None = None) -> go.Figure:
    """Score of A minus score of B per example, sorted: where one model wins, and by how much."""
    table = compare_examples(run_a, run_b, metric)
    wins, losses = int((table["difference"] > 0).sum()), int((table["difference"] < 0).sum())
    ties = len(table) - wins - losses
    hover = [f"A: {_short(pa)}<br>B: {_short(pb)}" for pa, pb in zip(table["prediction_a"], table["prediction_b"])]
    fig = go.Figure(go.Bar(name="A - B", x=list(range(len(table))), y=table["difference"], text=hover,
                           hovertemplate="example %{customdata}: %{y:+.1f}<br>%{text}<extra></extra>",
                           customdata=table["index"], textposition="none"))
    fig.update_layout(title=f"{table.attrs['metric']} per example, A = {run_a.label}, B = {run_b.label}: "
                            f"A better {wins}, B better {losses}, tied {ties}",
                      xaxis_title="examples, sorted by difference", yaxis_title="score A - score B")
    return fig


def _short(text: str, n: int = 120) -> str:
    text = html.escape(str(text))
    return text if len(text) <= n else text[: n - 1] + "…"


# ----------------------------------------------------------------------------------------
# The report: leaderboard (CSV + markdown) and one offline HTML page of plots
# ----------------------------------------------------------------------------------------
def write_report(runs: list[RunRecord], folder: str | Path) -> dict[str, Path]:
    """leaderboard.csv, leaderboard.md and report.html in `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    board = leaderboard(runs, paper=True)
    paths = {"csv": folder / "leaderboard.csv", "markdown": folder / "leaderboard.md", "html": folder / "report.html"}
    board.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(to_markdown(board), encoding="utf-8")
    paths["html"].write_text(report_html(runs, board), encoding="utf-8")
    return paths


def report_figures(runs: list[RunRecord]) -> list[go.Figure]:
    """Per benchmark/split: scores by model; score vs length per run; the top two models compared."""
    figures = []
    final = [r for r in runs if r.is_final]
    for key in sorted({(r.benchmark, r.split) for r in final}):
        group = [r for r in final if (r.benchmark, r.split) == key]
        figures.append(metrics_by_model(group).update_layout(title=f"{key[0]}/{key[1]}: scores by model"))
        figures += [score_vs_length(r) for r in group]
        primary = get_benchmark(key[0]).primary_metric
        ranked = sorted(group, key=lambda r: r.metrics.get(primary, 0), reverse=True)
        same_data = [r for r in ranked if r.data_hash == ranked[0].data_hash]
        if len(same_data) >= 2:
            figures.append(per_example_diff(same_data[0], same_data[1]))
    return figures


def report_html(runs: list[RunRecord], board: pd.DataFrame | None = None) -> str:
    """A self-contained page (plotly.js inline, so it opens offline)."""
    board = leaderboard(runs, paper=True) if board is None else board
    parts = [fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False)
             for i, fig in enumerate(report_figures(runs))]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>bertgen evaluation</title></head>"
            "<body style='font-family: sans-serif'><h1>bertgen evaluation</h1><h2>Leaderboard</h2>"
            + board.to_html(index=False, na_rep="", escape=True)
            + "<h2>Plots</h2>" + "\n".join(parts) + "</body></html>")

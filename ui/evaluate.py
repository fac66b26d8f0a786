"""The Evaluate tab: checkpoints x a benchmark (or an uploaded file), scored, plotted, kept as runs."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import pandas as pd

from bertgen.pipeline import precision_args
from evaluation import plots as eval_plots
from evaluation.benchmarks import BENCHMARKS, get_benchmark
from evaluation.data import DataError
from evaluation.runner import run_evaluation
from evaluation.runs import HEADLINE_METRICS, RunError, leaderboard, load_runs

from . import decoding, models, plots
from .gpu import gpu
from .inference import user_errors
from .settings import Settings

MAX_CHECKPOINTS = 4
UPLOAD_TYPES = [".jsonl", ".json", ".csv", ".tsv"]
DEFAULT_BENCHMARK = "wikisplit-fusion"
_STOPS: dict[str, threading.Event] = {}  # session -> "stop after this batch"


def benchmark_markdown(name: str) -> str:
    bench = get_benchmark(name)
    local = " (a local copy is bundled)" if bench.local_file(bench.default_split) else " (downloads from the hub)"
    return (f"**{bench.title}**: task *{bench.task}*, metrics {', '.join(bench.metrics)}, split "
            f"*{bench.default_split}*{local}. An uploaded file needs the columns "
            f"{', '.join(bench.columns)} (or plain `source` / `target`).  \n{models.note_markdown(bench.task)}")


def metrics_table(records) -> pd.DataFrame:
    rows = []
    for rec in records:
        row = {"model": rec.label, "benchmark": rec.benchmark, "split": rec.split, "examples": rec.num_done,
               "status": rec.status}
        row.update({m: round(v, 2) for m, v in rec.metrics.items() if m in HEADLINE_METRICS})
        row["examples/s"] = None if rec.examples_per_second is None else round(rec.examples_per_second, 2)
        rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["model", "benchmark", "split", "examples", "status"])


def past_runs(settings: Settings) -> pd.DataFrame:
    return leaderboard(load_runs(settings.runs_dir)) if Path(settings.runs_dir).is_dir() else leaderboard([])


def write_csv(frame: pd.DataFrame) -> str:
    """The metrics table as a CSV in the temp dir (Gradio serves files from there or the cwd)."""
    name = f"evaluation-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.csv"
    path = Path(tempfile.gettempdir()) / "bertgen-exports" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return str(path)


def figures(records):
    """Metrics by model (with the paper's marker); per-example comparison of two, or score vs length."""
    final = [r for r in records if r.num_done]
    if not final:
        return plots.empty_figure("No finished examples."), plots.empty_figure("No finished examples.")
    second = (eval_plots.per_example_diff(final[0], final[1]) if len(final) > 1
              else eval_plots.score_vs_length(final[0]))
    return eval_plots.metrics_by_model(final, paper=True), second


def build(settings: Settings) -> None:
    bench0 = DEFAULT_BENCHMARK
    task0 = get_benchmark(bench0).task
    with gr.Row():
        benchmark = gr.Dropdown([(b.title, b.name) for b in BENCHMARKS.values()], value=bench0,
                                label="Benchmark", elem_id="eval_benchmark")
        # open to any value: models.resolve is the check (see there)
        checkpoints = gr.Dropdown(models.choices_for(task0, settings), multiselect=True,
                                  value=[models.default_checkpoint(task0, settings)], max_choices=MAX_CHECKPOINTS,
                                  allow_custom_value=True,
                                  label=f"Checkpoints (up to {MAX_CHECKPOINTS})", elem_id="eval_checkpoints")
    about = gr.Markdown(benchmark_markdown(bench0), elem_id="eval_about")
    with gr.Row():
        upload = gr.File(label="Or your own data (JSONL, CSV, TSV)", file_types=UPLOAD_TYPES,
                         type="filepath", elem_id="eval_upload")
        with gr.Column():
            limit = gr.Number(20, precision=None, label=f"Examples (first N, at most {settings.max_eval_examples})", elem_id="eval_limit")
            strategy = gr.Radio(["greedy", "beam"], value="beam", label="Decoding")
            beams = gr.Slider(1, 8, value=4, step=1, label="Beams")
            max_new = gr.Number(64, precision=None, label=f"Max new tokens (<= {settings.max_new_tokens})")
    with gr.Row():
        run = gr.Button("Evaluate", variant="primary", elem_id="eval_btn")
        cancel = gr.Button("Cancel", variant="stop", elem_id="eval_cancel")
    status = gr.Markdown("Pick a benchmark and checkpoints, then Evaluate.", elem_id="eval_status", min_height=64)
    table = gr.Dataframe(metrics_table([]), label="Metrics", elem_id="eval_metrics", interactive=False)
    with gr.Row():
        by_model = gr.Plot(label="Metrics by model", elem_id="eval_plot")
        per_example = gr.Plot(label="Per example", elem_id="eval_plot_examples")
    csv = gr.File(label="Metrics as CSV", elem_id="eval_csv")
    board = gr.Dataframe(past_runs(settings), label="Past runs (leaderboard)", elem_id="eval_leaderboard",
                         interactive=False)

    def on_benchmark(name):
        task = get_benchmark(name).task
        return (benchmark_markdown(name), gr.update(choices=models.choices_for(task, settings),
                                                    value=[models.default_checkpoint(task, settings)]))

    benchmark.change(on_benchmark, benchmark, [about, checkpoints], api_visibility="private")

    @gpu
    @user_errors
    def evaluate(benchmark, checkpoints, upload, limit, strategy, beams, max_new_tokens,
                 request: gr.Request, progress=gr.Progress()):
        try:
            bench = get_benchmark(benchmark)
        except KeyError:
            raise ValueError(f"Unknown benchmark {benchmark!r}; pick one from the list.") from None
        picked = [c for c in (checkpoints or []) if c]
        if not picked:
            raise ValueError("Pick at least one checkpoint to evaluate.")
        if len(picked) > MAX_CHECKPOINTS:
            raise ValueError(f"Evaluate at most {MAX_CHECKPOINTS} checkpoints at once.")
        limit = decoding.whole("Examples", limit, 1)
        if limit > settings.max_eval_examples:
            raise ValueError(f"This app evaluates at most {settings.max_eval_examples} examples per run.")
        if upload and Path(upload).suffix.lower() not in UPLOAD_TYPES:
            raise ValueError(f"Upload a {', '.join(UPLOAD_TYPES)} file.")
        max_new_tokens = decoding.whole("Max new tokens", max_new_tokens, 1)
        if max_new_tokens > settings.max_new_tokens:
            raise ValueError(f"Max new tokens is limited to {settings.max_new_tokens} here.")
        if strategy not in ("greedy", "beam"):
            raise ValueError("Decoding must be greedy or beam.")
        decode = {"num_beams": decoding.whole("Beams", beams, 1) if strategy == "beam" else 1,
                  "do_sample": False, "max_new_tokens": max_new_tokens}
        stop = _STOPS[request.session_hash if request else ""] = threading.Event()
        records = []
        for k, value in enumerate(picked):
            ckpt = models.resolve(value, settings)
            loaded = models.cache(settings).get(ckpt, settings.device, settings.dtype, progress=progress)
            # The run record names the model the way the evaluation CLI would.
            model_id = ckpt.location if ckpt.value.startswith(models.LOCAL) else ckpt.value

            def report(done, total, k=k, name=ckpt.value):
                progress((k + done / max(total, 1)) / len(picked), desc=f"{name}: {done}/{total} examples")

            try:
                records.append(run_evaluation(
                    model_id, bench, data_files=upload or None, limit=limit, settings=decode,
                    output_dir=settings.runs_dir, progress=report, should_stop=stop.is_set,
                    pipeline=loaded.pipe, device=loaded.device, show_progress=False,
                    **precision_args(loaded.dtype)))
            except (DataError, RunError) as err:
                raise ValueError(str(err)) from None
            if stop.is_set():
                break
        frame = metrics_table(records)
        stopped = " (stopped early)" if stop.is_set() else ""
        return (f"Evaluated {len(records)} checkpoint(s) on {bench.title}{stopped}.", frame,
                *figures(records), write_csv(frame), past_runs(settings))

    event = run.click(evaluate, [benchmark, checkpoints, upload, limit, strategy, beams, max_new],
                      [status, table, by_model, per_example, csv, board], api_name="evaluate",
                      concurrency_id="model", show_progress_on=[status])

    def stop_run(request: gr.Request):
        flag = _STOPS.get(request.session_hash if request else "")
        if flag is not None:
            flag.set()
        return "Cancelled: the run stops after its current batch and is kept as 'stopped'."

    cancel.click(stop_run, None, status, cancels=[event], api_visibility="private")

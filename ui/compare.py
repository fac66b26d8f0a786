"""The Compare tab: 2-4 systems (checkpoint + decoding) on one input, side by side.

FastChat-arena style: each system is an independent job; their streams are stepped together so
the columns grow at once, then each is finished (attention, timing) and scored against the
first output (word diff) and an optional reference (BLEU, and SARI for rewriting tasks).
"""

from __future__ import annotations

import difflib

import gradio as gr
import pandas as pd

from bertgen import tasks
from evaluation.metrics import compute

from . import decoding, models, plots
from .generate import DEFAULT_TASK, TASK_CHOICES
from .gpu import gpu
from .inference import Output, check_task, check_text, prepare, user_errors
from .settings import Settings

MAX_SYSTEMS = 4
SLOT_FIELDS = 5  # checkpoint, strategy, beams, length penalty, temperature
REWRITING = ("sentence-fusion", "sentence-splitting")  # SARI needs the source


def word_diff(base: str, other: str) -> list[tuple[str, str | None]]:
    """`other` against `base`, word by word: '+' words only in other, '-' words only in base."""
    a, b = base.split(), other.split()
    spans: list[tuple[str, str | None]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            spans.append((" ".join(b[j1:j2]) + " ", None))
            continue
        if i2 > i1:
            spans.append((" ".join(a[i1:i2]) + " ", "-"))
        if j2 > j1:
            spans.append((" ".join(b[j1:j2]) + " ", "+"))
    return spans


def scores(out: Output, source: str, reference: str) -> dict:
    if not reference.strip():
        return {}
    found = {"BLEU": compute("bleu", [out.text], [[reference]])["bleu"]}
    if out.task in REWRITING:
        found["SARI"] = compute("sari", [out.text], [[reference]], sources=[source])["sari"]
    return found


def summary(outs: list[Output], source: str, reference: str) -> pd.DataFrame:
    rows = []
    for i, out in enumerate(outs, 1):
        rate = out.new_tokens / out.seconds if out.seconds > 0 else 0.0
        rows.append({"system": i, "checkpoint": out.checkpoint, "output": out.text,
                     "seconds": round(out.seconds, 3), "new tokens": out.new_tokens,
                     "tokens/s": round(rate, 1),
                     **{k: round(v, 2) for k, v in scores(out, source, reference).items()}})
    return pd.DataFrame(rows)


def slot_decoding(task: str, ckpt_value: str, strategy, beams, length_penalty, temperature,
                  settings: Settings) -> list:
    """The system's own strategy / beams / length penalty / temperature over its defaults."""
    return decoding.override(decoding.values_for(task, ckpt_value, settings), strategy=strategy, num_beams=beams, length_penalty=length_penalty,
                             temperature=temperature)


def build(settings: Settings) -> None:
    with gr.Row():
        task = gr.Radio(TASK_CHOICES, value=DEFAULT_TASK, label="Task", elem_id="compare_task", scale=3)
        count = gr.Slider(2, MAX_SYSTEMS, value=2, step=1, label="Systems", elem_id="compare_count", scale=1)
    note = gr.Markdown(models.note_markdown(DEFAULT_TASK))
    text = gr.Textbox(label="Input", lines=2, elem_id="compare_input",
                      value=tasks.get_task(DEFAULT_TASK).examples[0], max_length=settings.max_input_chars)
    reference = gr.Textbox(label="Reference (optional): scores each output with BLEU (and SARI)",
                           elem_id="compare_reference")
    run = gr.Button("Compare", variant="primary", elem_id="compare_btn")
    table = gr.Dataframe(label="Summary", elem_id="compare_table", interactive=False, wrap=True)

    slots, outputs, columns = [], [], []
    choices = models.choices_for(DEFAULT_TASK, settings)
    with gr.Row(equal_height=False):
        for i in range(MAX_SYSTEMS):
            with gr.Column(visible=i < 2, min_width=240) as column:
                gr.Markdown(f"### System {i + 1}")
                # open to any value: models.resolve is the check (see there)
                ckpt = gr.Dropdown(choices, value=default_system(DEFAULT_TASK, i, settings), label="Checkpoint", elem_id=f"cmp{i}_checkpoint",
                                   allow_custom_value=True)
                strategy = gr.Radio(list(decoding.STRATEGIES), value="greedy" if i % 2 else "beam",
                                    label="Decoding", elem_id=f"cmp{i}_strategy")
                beams = gr.Slider(1, 16, value=4, step=1, label="Beams")
                length_penalty = gr.Slider(0.0, 3.0, value=1.0, step=0.1, label="Length penalty")
                temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature (sampling)")
                out = gr.Textbox(label="Output", lines=3, interactive=False, elem_id=f"cmp{i}_output")
                diff = gr.HighlightedText(label="Words vs. system 1" if i else "System 1 (the baseline)",
                                          color_map={"+": "green", "-": "red"}, elem_id=f"cmp{i}_diff",
                                          combine_adjacent=True)
                stats = gr.Markdown(elem_id=f"cmp{i}_stats")
                plot = gr.Plot(label="Cross-attention", show_label=False, elem_id=f"cmp{i}_heatmap")
            columns.append(column)
            slots += [ckpt, strategy, beams, length_penalty, temperature]
            outputs += [out, diff, stats, plot]
    ckpt_pickers = slots[::SLOT_FIELDS]

    def on_task(t):
        found = models.choices_for(t, settings)
        return [models.note_markdown(t), tasks.get_task(t).examples[0]] + [
            gr.update(choices=found, value=default_system(t, i, settings)) for i in range(MAX_SYSTEMS)]

    task.change(on_task, task, [note, text, *ckpt_pickers], api_visibility="private")
    count.change(lambda n: [gr.update(visible=i < int(n)) for i in range(MAX_SYSTEMS)], count, columns,
                 api_visibility="private")

    @gpu
    @user_errors
    def compare(task, text, reference, n, *slot_values, progress=gr.Progress()):
        task, text = check_task(task), check_text(text, settings)
        n = decoding.whole("Systems", n, 2)
        if n > MAX_SYSTEMS:
            raise ValueError(f"Compare 2 to {MAX_SYSTEMS} systems, not {n}.")
        jobs = []
        for i in range(n):
            ckpt, *rest = slot_values[i * SLOT_FIELDS:(i + 1) * SLOT_FIELDS]
            values = slot_decoding(task, ckpt, *rest, settings)
            try:
                jobs.append(prepare(task, ckpt, text, values, settings, progress))
            except ValueError as err:
                raise ValueError(f"System {i + 1}: {err}") from None
        texts = [""] * n
        streams = [job.stream() for job in jobs]
        live = set(range(n))
        while live:  # step every stream once per round, like the arena
            for i in sorted(live):
                try:
                    texts[i] = next(streams[i])
                except StopIteration:
                    live.discard(i)
            yield _view(texts, [None] * n, None)
        outs = [job.run() for job in jobs]
        yield _view([o.text for o in outs], outs, summary(outs, text, reference or ""))

    inputs = [task, text, reference, count, *slots]
    run.click(compare, inputs, [*outputs, table], api_name="compare", concurrency_id="model")


def default_system(task: str, i: int, settings: Settings) -> str | None:
    """System i's checkpoint: the on-disk ones in turn (no download needed to press Compare);
    with a single one, every system uses it and they differ in decoding."""
    found = models.checkpoints_for(task, settings)
    ready = [c for c in found if not c.downloads] or found
    return ready[i % len(ready)].value if ready else None


def _view(texts: list[str], outs: list[Output | None], table):
    """Values for every column's (output, diff, stats, heatmap) and the summary table."""
    values = []
    for i in range(MAX_SYSTEMS):
        if i >= len(texts):
            values += [gr.skip()] * 4
            continue
        out = outs[i]
        diff = word_diff(texts[0], texts[i]) if i else [(texts[0], None)]
        values += [texts[i], diff, out.stats() if out else "Generating ...",
                   plots.attention_figure(out, "cross") if out else gr.skip()]
    return values + [table if table is not None else gr.skip()]

"""The Attention tab: heatmaps of the last Generate output, and the `attention` API endpoint."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from . import decoding, models, plots
from .gpu import gpu
from .inference import Output, check_task, prepare, user_errors
from .settings import Settings

AVERAGE = -1  # dropdown value for "average over layers / heads"


def _index(value) -> int | str:
    return plots.AVERAGE if value in (None, AVERAGE, "average") else int(value)


def layer_head_choices(weights, what: str) -> list[tuple[str, int]]:
    count = 0 if weights is None else weights.shape[0 if what == "layer" else 1]
    return [("average", AVERAGE)] + [(f"{what} {i + 1}", i) for i in range(count)]


def token_choices(out: Output) -> list[tuple[str, int]]:
    return [(f"{i + 1}: {plots.clean_token(t)}", i) for i, t in enumerate(out.output_tokens)]


def figure(out: Output | None, kind: str, layer, head):
    if out is None:
        return plots.empty_figure("Generate an output first (Generate tab); its attention shows here.")
    return plots.attention_figure(out, kind, _index(layer), _index(head))


def token_view(out: Output | None, token, layer, head) -> list:
    if out is None or out.cross_attention is None or token is None:
        return []
    return plots.token_highlight(out, int(token), _index(layer), _index(head))


def header(out: Output | None) -> str:
    if out is None:
        return "Nothing generated yet: run the Generate tab, then come back."
    return f"Attention of **{out.checkpoint}** while writing: *{out.text}*"


@dataclass
class AttentionTab:
    refresh: object  # fn(result) -> outputs, chained after a generation
    outputs: list


def build(settings: Settings, result: gr.State) -> AttentionTab:
    gr.Markdown(models.note_markdown())
    source = gr.Markdown(header(None), elem_id="attention_source")
    with gr.Row():
        kind = gr.Radio(list(plots.KINDS), value="cross", label="Attention", elem_id="attention_kind",
                        info="cross: output tokens (rows) attend to input tokens (columns)")
        layer = gr.Dropdown([("average", AVERAGE)], value=AVERAGE, label="Layer", elem_id="attention_layer")
        head = gr.Dropdown([("average", AVERAGE)], value=AVERAGE, label="Head", elem_id="attention_head")
    plot = gr.Plot(figure(None, "cross", AVERAGE, AVERAGE), label="Heatmap", show_label=False, elem_id="heatmap")
    token = gr.Dropdown([], value=None, label="Output token: which input tokens did it attend to?",
                        elem_id="attention_token")
    highlighted = gr.HighlightedText(label="Input tokens by cross-attention (darker = more)",
                                     elem_id="attention_highlight", show_legend=False)

    def refresh(out: Output | None):
        weights = None if out is None else out.cross_attention
        tokens = [] if out is None else token_choices(out)
        first = tokens[0][1] if tokens else None
        return (header(out), gr.update(choices=layer_head_choices(weights, "layer"), value=AVERAGE),
                gr.update(choices=layer_head_choices(weights, "head"), value=AVERAGE), "cross",
                figure(out, "cross", AVERAGE, AVERAGE), gr.update(choices=tokens, value=first),
                token_view(out, first, AVERAGE, AVERAGE))

    outputs = [source, layer, head, kind, plot, token, highlighted]
    redraw = dict(api_visibility="private", show_progress="hidden")
    for control in (kind, layer, head):
        control.change(figure, [result, kind, layer, head], plot, **redraw)
    for control in (token, layer, head):
        control.change(token_view, [result, token, layer, head], highlighted, **redraw)

    @gpu
    @user_errors
    def attention(text: str, checkpoint: str, task: str = "sentence-fusion", kind: str = "cross",
                  layer: int = -1, head: int = -1) -> dict:
        """Generates with the checkpoint's default decoding and returns one attention matrix
        (rows attend to columns; layer/head -1 = average) with its token labels."""
        if kind not in plots.KINDS:
            raise ValueError(f"kind must be one of {', '.join(plots.KINDS)}, got {kind!r}.")
        task = check_task(task)
        out = prepare(task, checkpoint, text, decoding.values_for(task, checkpoint, settings), settings).run()
        attr, rows, cols = plots.KINDS[kind]
        matrix = plots.select(getattr(out, attr), _index(layer), _index(head))
        tokens = {"input": out.input_tokens, "output": out.output_tokens}
        return {"output": out.text, "kind": kind, "layer": layer, "head": head,
                "rows": tokens[rows], "columns": tokens[cols], "weights": matrix.round(5).tolist()}

    gr.api(attention, api_name="attention", concurrency_id="model")
    return AttentionTab(refresh, outputs)

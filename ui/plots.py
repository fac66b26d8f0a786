"""Pure functions from attention tensors and token lists to plotly figures and highlight spans.

No gradio here: everything is testable without a browser. Attention arrives as
[layers, heads, rows, cols] (rows attend to cols).
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

KINDS = {  # name -> (Result attribute, row axis, column axis)
    "cross": ("cross_attention", "output", "input"),
    "encoder self": ("encoder_attention", "input", "input"),
    "decoder self": ("decoder_attention", "output", "output"),
}
AVERAGE = "average"


def clean_token(token: str) -> str:
    """sentencepiece's word marker and WordPiece's continuation marker, made readable."""
    return token.replace("\u2581", " ").replace("##", "").strip() or token


def to_numpy(weights) -> np.ndarray:
    if weights is None:
        return np.zeros((0, 0, 0, 0), dtype=np.float32)
    if hasattr(weights, "detach"):
        weights = weights.detach().float().cpu().numpy()
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 4:
        raise ValueError(f"attention must be [layers, heads, rows, cols], got shape {weights.shape}")
    return weights


def select(weights, layer: int | str | None = AVERAGE, head: int | str | None = AVERAGE) -> np.ndarray:
    """One [rows, cols] matrix: a layer and head (0-based), or the average over either."""
    weights = to_numpy(weights)
    layers, heads = weights.shape[:2]
    if layer in (None, AVERAGE):
        weights = weights.mean(axis=0, keepdims=True)
    elif not 0 <= int(layer) < layers:
        raise ValueError(f"layer must be 0..{layers - 1} or average, got {layer}")
    else:
        weights = weights[int(layer):int(layer) + 1]
    if head in (None, AVERAGE):
        weights = weights.mean(axis=1, keepdims=True)
    elif not 0 <= int(head) < heads:
        raise ValueError(f"head must be 0..{heads - 1} or average, got {head}")
    else:
        weights = weights[:, int(head):int(head) + 1]
    return weights[0, 0]


def heatmap(matrix: np.ndarray, rows: list[str], cols: list[str], title: str = "",
            row_title: str = "output", col_title: str = "input") -> go.Figure:
    """Rows x columns heatmap; numeric axes with token tick labels keep repeated tokens apart."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.shape != (len(rows), len(cols)):
        raise ValueError(f"matrix is {matrix.shape} but there are {len(rows)} rows and {len(cols)} columns")
    # plotly reads tick text as HTML: "</s>" or "<::::>" would vanish and upset the margins
    rows = [html.escape(clean_token(t), quote=False) for t in rows]
    cols = [html.escape(clean_token(t), quote=False) for t in cols]
    hover = [[f"{row_title} {i}: {r}<br>{col_title} {j}: {c}<br>weight {matrix[i, j]:.3f}"
              for j, c in enumerate(cols)] for i, r in enumerate(rows)]
    fig = go.Figure(go.Heatmap(z=matrix, x=list(range(len(cols))), y=list(range(len(rows))),
                               colorscale="Blues", zmin=0.0, text=hover, hoverinfo="text",
                               colorbar={"title": "weight"}))
    height = max(320, min(1200, 120 + 22 * len(rows)))
    fig.update_layout(
        title={"text": title, "font": {"size": 13}, "y": 0.995, "yanchor": "top"}, height=height,
        margin={"l": 10, "r": 10, "t": 110, "b": 10},
        xaxis={"tickmode": "array", "tickvals": list(range(len(cols))), "ticktext": cols,
               "tickangle": -60, "side": "top"},
        yaxis={"tickmode": "array", "tickvals": list(range(len(rows))), "ticktext": rows,
               "autorange": "reversed", "title": row_title},
    )
    return fig


def attention_figure(result, kind: str = "cross", layer=AVERAGE, head=AVERAGE, title: str = "") -> go.Figure:
    """The heatmap of one kind of attention of a generation result (or a dict with its fields)."""
    attr, row_side, col_side = KINDS[kind]
    weights = _field(result, attr)
    if weights is None:
        return empty_figure(f"No {kind} attention recorded for this output.")
    tokens = {"input": _field(result, "input_tokens"), "output": _field(result, "output_tokens")}
    matrix = select(weights, layer, head)
    rows, cols = _fit(tokens[row_side], matrix.shape[0]), _fit(tokens[col_side], matrix.shape[1])
    where = f"layer {int(layer) + 1}" if layer not in (None, AVERAGE) else "all layers"
    which = f"head {int(head) + 1}" if head not in (None, AVERAGE) else "all heads"
    label = title or f"{kind} attention ({row_side} rows, {col_side} columns), {where}, {which}"
    return heatmap(matrix, rows, cols, label, row_title=row_side, col_title=col_side)


def highlight(tokens: list[str], weights) -> list[tuple[str, float]]:
    """Tokens with scores in [0, 1] for gr.HighlightedText's score scale: the least attended
    token 0, the most attended 1 (min-max, so that near-uniform attention still shows its shape)."""
    weights = np.asarray(weights, dtype=np.float32)
    low, high = (float(weights.min()), float(weights.max())) if weights.size else (0.0, 0.0)
    scale = 1.0 / (high - low) if high > low else 0.0
    return [(clean_token(t) + " ", round((float(w) - low) * scale, 3)) for t, w in zip(tokens, weights)]


def token_highlight(result, output_index: int, layer=AVERAGE, head=AVERAGE) -> list[tuple[str, float]]:
    """Input tokens scored by how much output token `output_index` attends to them."""
    matrix = select(_field(result, "cross_attention"), layer, head)
    if not 0 <= output_index < matrix.shape[0]:
        raise ValueError(f"output token index must be 0..{matrix.shape[0] - 1}, got {output_index}")
    inputs = _fit(_field(result, "input_tokens"), matrix.shape[1])
    return highlight(inputs, matrix[output_index])


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(height=240, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def _field(result, name):
    return result.get(name) if isinstance(result, dict) else getattr(result, name, None)


def _fit(tokens, n: int) -> list[str]:
    """Token labels for n positions (a special token the tokenizer did not list becomes '·').
    A pipeline Result lists output tokens per returned sequence: the first is the one shown."""
    tokens = list(tokens or [])
    if tokens and isinstance(tokens[0], (list, tuple)):
        tokens = list(tokens[0])
    return (tokens + ["·"] * n)[:n]

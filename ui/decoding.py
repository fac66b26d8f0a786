"""Decoding controls shared by the tabs, and their values -> a validated GenerationSettings."""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

import gradio as gr

from bertgen import tasks
from bertgen.checkpoints import CheckpointError
from bertgen.generation import UNSET, resolve_settings

from . import models
from .models import Checkpoint
from .settings import Settings

STRATEGIES = ("greedy", "beam", "sampling")


@dataclass
class DecodingControls:
    """The components, in the order handlers receive their values."""

    strategy: gr.Radio
    num_beams: gr.Slider
    length_penalty: gr.Slider
    no_repeat_ngram_size: gr.Slider
    min_new_tokens: gr.Number
    max_new_tokens: gr.Number
    temperature: gr.Slider
    top_k: gr.Number
    top_p: gr.Slider
    seed: gr.Number
    num_return_sequences: gr.Number
    required_token: gr.Checkbox

    def components(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]


def build_controls(max_new_tokens: int, prefix: str = "", full: bool = True) -> DecodingControls:
    """Decoding widgets; with full=False the rarely tuned ones are created hidden."""
    def eid(name):
        return f"{prefix}{name}"

    with gr.Row():
        strategy = gr.Radio(list(STRATEGIES), value="beam", label="Decoding", elem_id=eid("strategy"))
        num_beams = gr.Slider(1, 16, value=4, step=1, label="Beams", elem_id=eid("num_beams"))
        length_penalty = gr.Slider(0.0, 3.0, value=1.0, step=0.1, label="Length penalty",
                                   info="> 1 favours longer beams")
    with gr.Row(visible=full):
        no_repeat = gr.Slider(0, 6, value=0, step=1, label="No-repeat n-gram size", info="0 = off")
        # Numbers carry no minimum/maximum and no precision (precision=0 made Gradio round 1.5 to 2
        # and fail with an empty error on NaN/inf/strings): our checks name the field in their message.
        min_new = gr.Number(0, precision=None, label="Min new tokens")
        max_new = gr.Number(min(96, max_new_tokens), precision=None, label=f"Max new tokens (<= {max_new_tokens})",
                            elem_id=eid("max_new_tokens"))
    with gr.Row(visible=full):
        temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature")
        top_k = gr.Number(0, precision=None, label="Top-k", info="0 = off")
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
        seed = gr.Number(-1, precision=None, label="Seed", info="-1 = random")
        n_return = gr.Number(1, precision=None, label="Outputs to return")
        required = gr.Checkbox(False, label="Required token", elem_id=eid("required_token"),
                               info="keep the checkpoint's required_token_id: no end before it (the split "
                                    "model's is <::::>, so every output is split)")
    return DecodingControls(strategy, num_beams, length_penalty, no_repeat, min_new, max_new,
                            temperature, top_k, top_p, seed, n_return, required)


def defaults_for(task: str, ckpt: Checkpoint | None) -> dict:
    """The task's decoding defaults, overridden by the checkpoint's generation_config.json."""
    try:
        return tasks.decoding_defaults(task, None if ckpt is None or ckpt.downloads else ckpt.location)
    except CheckpointError:
        return tasks.decoding_defaults(task)


def control_values(defaults: dict, max_new_tokens: int) -> list:
    """Values for DecodingControls.components() from a defaults dict."""
    beams = int(defaults.get("num_beams") or 1)
    strategy = "sampling" if defaults.get("do_sample") else ("beam" if beams > 1 else "greedy")
    return [strategy, beams, float(defaults.get("length_penalty", 1.0)),
            int(defaults.get("no_repeat_ngram_size") or 0), int(defaults.get("min_new_tokens") or 0),
            min(int(defaults.get("max_new_tokens") or 96), max_new_tokens),
            float(defaults.get("temperature") or 1.0), int(defaults.get("top_k") or 0),
            float(defaults.get("top_p") or 1.0), -1, int(defaults.get("num_return_sequences") or 1),
            defaults.get("required_token_id") is not None]


def values_for(task: str, checkpoint: str | None, settings: Settings) -> list:
    """Control values prefilled for a task and a checkpoint choice (the task's alone when the
    choice is not a valid one: the handler will say so when it runs)."""
    try:
        ckpt = models.resolve(checkpoint, settings)
    except ValueError:
        ckpt = None
    return control_values(defaults_for(task, ckpt), settings.max_new_tokens)


def override(values: list, **changes) -> list:
    """Control values with some replaced by name (the DecodingControls field names)."""
    names = [f.name for f in fields(DecodingControls)]
    values = list(values)
    for name, value in changes.items():
        values[names.index(name)] = value
    return values


def number(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    return value


def whole(name: str, value, low: int) -> int:
    value = number(name, value)
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value}.")
    if int(value) < low:
        raise ValueError(f"{name} must be at least {low}, got {int(value)}.")
    return int(value)


def make_settings(model, task: str, values: list, max_new_tokens: int):
    """A GenerationSettings from the controls' values; ValueError with a sentence when invalid."""
    (strategy, num_beams, length_penalty, no_repeat, min_new, max_new, temperature, top_k,
     top_p, seed, n_return, required) = values
    if strategy not in STRATEGIES:
        raise ValueError(f"Decoding must be one of {', '.join(STRATEGIES)}, got {strategy!r}.")
    max_new = whole("Max new tokens", max_new, 1)
    if max_new > max_new_tokens:
        raise ValueError(f"Max new tokens is limited to {max_new_tokens} here, got {max_new}.")
    seed = whole("Seed", seed, -1)
    caller = dict(
        num_beams=whole("Beams", num_beams, 1) if strategy == "beam" else 1,
        do_sample=strategy == "sampling",
        length_penalty=number("Length penalty", length_penalty),
        no_repeat_ngram_size=whole("No-repeat n-gram size", no_repeat, 0),
        min_new_tokens=whole("Min new tokens", min_new, 0),
        max_new_tokens=max_new,
        temperature=number("Temperature", temperature),
        top_k=whole("Top-k", top_k, 0),
        top_p=number("Top-p", top_p),
        num_return_sequences=whole("Outputs to return", n_return, 1),
        # A sampled output must be reproducible by the analysis pass that follows streaming.
        seed=seed if seed >= 0 else random.randrange(2**31),
    )
    if not isinstance(required, bool):
        raise ValueError(f"Required token must be true or false, got {required!r}.")
    if not required:  # drop the checkpoint's required token
        caller["required_token_id"] = UNSET
    return resolve_settings(model, tasks.get_task(task).decoding, **caller)

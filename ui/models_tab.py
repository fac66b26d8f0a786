"""The Models tab: what is loaded, on which device, in which dtype, using how much memory."""

from __future__ import annotations

import os
import platform

import gradio as gr
import pandas as pd
import torch

from . import models
from .gpu import gpu
from .inference import user_errors
from .settings import Settings

DTYPE_CHOICES = ["auto", *models.DTYPES, *models.CPU_WEIGHT_BYTES]


def process_memory_mb() -> float:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def device_markdown(settings: Settings) -> str:
    device = models.pick_device(settings.device)
    lines = [f"**Device:** {device} (BERTGEN_DEVICE={settings.device}), default dtype "
             f"{models.pick_dtype(settings.dtype, device)}, torch {torch.__version__}, {platform.machine()}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"**GPU:** {props.name}, {torch.cuda.memory_allocated() / 2**20:,.0f} MB allocated "
                     f"of {props.total_memory / 2**20:,.0f} MB")
    cached = sum(item.bytes for item in models.cache(settings).items()) / 2**20
    lines.append(f"**Memory:** process {process_memory_mb():,.0f} MB; model cache {cached:,.0f} MB "
                 f"of {settings.cache_mb:,} MB (BERTGEN_CACHE_MB; least recently used models are unloaded first)")
    return "  \n".join(lines)


def loaded_table(settings: Settings) -> pd.DataFrame:
    rows = [{"checkpoint": item.ckpt.value, "device": item.device, "dtype": item.dtype,
             "parameters": f"{item.pipe.model.num_parameters():,}",
             "memory (MB)": round(item.bytes / 2**20, 1), "load time (s)": round(item.seconds, 2)}
            for item in reversed(models.cache(settings).items())]  # most recently used first
    columns = ["checkpoint", "device", "dtype", "parameters", "memory (MB)", "load time (s)"]
    return pd.DataFrame(rows, columns=columns)


def build(settings: Settings):
    """The tab; returns (refresh function, its outputs) for the app to run when the tab opens."""
    gr.Markdown(models.note_markdown())
    info = gr.Markdown(elem_id="models_device")
    table = gr.Dataframe(label="Loaded models (most recently used first)", elem_id="models_table",
                         interactive=False)
    with gr.Row():
        checkpoint = gr.Dropdown(models.choices_for(None, settings), value=models.default_checkpoint("sentence-fusion", settings),
                                 label="Checkpoint", elem_id="models_checkpoint",
                                 allow_custom_value=settings.allow_any_hub_id)
        dtype = gr.Dropdown(DTYPE_CHOICES, value=settings.dtype if settings.dtype in DTYPE_CHOICES else "auto",
                            label="dtype", elem_id="models_dtype",
                            info="CPU only: int8 (quantized: a small quality change, fastest on beam batches) and "
                                 "bf16-weights (weights stored in bf16, fp32 math: half the memory, greedy ~2x faster)")
    with gr.Row():
        load = gr.Button("Load", variant="primary", elem_id="models_load")
        unload = gr.Button("Unload", elem_id="models_unload")
        refresh = gr.Button("Refresh", elem_id="models_refresh")
    message = gr.Markdown(elem_id="models_message")

    def view():
        return device_markdown(settings), loaded_table(settings)

    @gpu
    @user_errors
    def load_model(checkpoint, dtype, progress=gr.Progress()):
        ckpt = models.resolve(checkpoint, settings)
        item = models.cache(settings).get(ckpt, settings.device, dtype or "auto", progress=progress)
        return (f"Loaded {ckpt.value} on {item.device} as {item.dtype} in {item.seconds:.1f} s.", *view())

    @user_errors
    def unload_model(checkpoint):
        dropped = models.cache(settings).unload(checkpoint)
        text = f"Unloaded {checkpoint}." if dropped else f"{checkpoint} was not loaded."
        return (text, *view())

    load.click(load_model, [checkpoint, dtype], [message, info, table], api_name="load_model",
               concurrency_id="model")
    unload.click(unload_model, checkpoint, [message, info, table], api_name="unload_model")
    refresh.click(view, None, [info, table], api_visibility="private")
    return view, [info, table]

"""`build_app()`: the workbench's Gradio Blocks, one tab per module; `launch_kwargs()` for launch()."""

from __future__ import annotations

import gradio as gr

from . import attention, compare, evaluate, generate, models_tab
from .settings import Settings

INTRO = ("# BertGeneration workbench\n"
         "Sequence-to-sequence models warm-started from BERT (Rothe, Narayan & Severyn, 2019): "
         "try a task, tune decoding, look at cross-attention, compare checkpoints, evaluate them.")
CSS = "#heatmap, [id$='_heatmap'] {min-height: 320px}"


def build_app(settings: Settings | None = None) -> gr.Blocks:
    """The whole app. Loads no model: models load on first use (module-level cache)."""
    settings = settings or Settings.from_env()
    with gr.Blocks(title="BertGeneration workbench", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Generate", id="generate", elem_id="tab_generate"):
                gen = generate.build(settings)
            with gr.Tab("Attention", id="attention", elem_id="tab_attention"):
                att = attention.build(settings, gen.result)
            with gr.Tab("Compare", id="compare", elem_id="tab_compare"):
                compare.build(settings)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab_evaluate"):
                evaluate.build(settings)
            with gr.Tab("Models", id="models", elem_id="tab_models") as models_page:
                view, view_outputs = models_tab.build(settings)
        gen.event.success(att.refresh, gen.result, att.outputs, api_visibility="private")
        models_page.select(view, None, view_outputs, api_visibility="private")
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    return demo


def launch_kwargs(settings: Settings | None = None) -> dict:
    """What launch() needs besides host and port (Gradio 6: theme and css go here)."""
    settings = settings or Settings.from_env()
    return dict(ssr_mode=False, max_file_size=settings.max_file_size, theme=gr.themes.Soft(), css=CSS)

"""Launches the BertGeneration workbench (the Hugging Face Spaces entry point).

The app itself is built in ui/ (`build_app()`); settings come from environment variables
(docs/APP.md). No model loads at start-up unless BERTGEN_PRELOAD names some: each loads on
first use."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import ui  # noqa: E402  (first: it imports ZeroGPU's `spaces` before torch touches CUDA)
from ui.models import preload  # noqa: E402

settings = ui.Settings.from_env()
demo = ui.build_app(settings)
preload(settings)

if __name__ == "__main__":
    demo.launch(**ui.launch_kwargs(settings))

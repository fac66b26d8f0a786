"""The Gradio workbench: one module per tab, `build_app()` puts them together (see docs/APP.md)."""

from . import gpu  # noqa: F401  (first: ZeroGPU's `spaces` must be imported before torch touches CUDA)
from .app import build_app, launch_kwargs
from .settings import Settings

__all__ = ["build_app", "launch_kwargs", "Settings"]

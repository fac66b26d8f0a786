"""`@gpu`: ZeroGPU's `spaces.GPU` when the `spaces` package is installed, a no-op elsewhere.

Imported first by `ui` (and app.py) because `spaces` must be imported before torch touches CUDA."""

try:
    import spaces
except ImportError:  # not on Hugging Face Spaces
    spaces = None


def gpu(fn):
    return spaces.GPU(fn) if spaces is not None else fn

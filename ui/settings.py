"""Operator settings of the workbench, read once from environment variables (see docs/APP.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _int(env, name: str, default: int, low: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    models_dir: Path | None = None  # local checkpoint folders offered in the pickers
    allow_any_hub_id: bool = False  # let users type any owner/name hub id (downloads on demand)
    cache_mb: int = 6144  # memory bound of the model cache (LRU eviction above it)
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # auto (float32 on CPU, bfloat16 on CUDA when supported), float32, ...
    max_input_chars: int = 4000
    max_new_tokens: int = 256  # ceiling of the max-new-tokens slider
    max_eval_examples: int = 500
    runs_dir: Path = Path("runs")
    concurrency: int = 1  # model-bound events running at once (one model pool)
    queue_size: int = 32
    max_file_size: str = "5mb"
    preload: tuple[str, ...] = ()  # checkpoint choices app.py loads at start-up (ZeroGPU wants that)

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        models_dir = env.get("BERTGEN_MODELS_DIR", "").strip()
        return cls(
            models_dir=Path(models_dir).expanduser().resolve() if models_dir else None,
            allow_any_hub_id=_flag(env.get("BERTGEN_ALLOW_ANY_HUB_ID")),
            cache_mb=_int(env, "BERTGEN_CACHE_MB", cls.cache_mb),
            device=env.get("BERTGEN_DEVICE", cls.device).strip() or cls.device,
            dtype=env.get("BERTGEN_DTYPE", cls.dtype).strip() or cls.dtype,
            max_input_chars=_int(env, "BERTGEN_MAX_INPUT_CHARS", cls.max_input_chars),
            max_new_tokens=_int(env, "BERTGEN_MAX_NEW_TOKENS", cls.max_new_tokens),
            max_eval_examples=_int(env, "BERTGEN_MAX_EVAL_EXAMPLES", cls.max_eval_examples),
            runs_dir=Path(env.get("BERTGEN_RUNS_DIR", "") or cls.runs_dir),
            concurrency=_int(env, "BERTGEN_CONCURRENCY", cls.concurrency),
            queue_size=_int(env, "BERTGEN_QUEUE_SIZE", cls.queue_size),
            max_file_size=env.get("BERTGEN_MAX_FILE_SIZE", cls.max_file_size).strip() or cls.max_file_size,
            preload=tuple(v.strip() for v in env.get("BERTGEN_PRELOAD", "").split(",") if v.strip()),
        )

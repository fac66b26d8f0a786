"""Which checkpoints the app may load, and the module-level cache of loaded pipelines.

A checkpoint is named by a choice value, never by a server path typed by a user:
- a bundled folder name (`wikisplit-fusion-small`), from bertgen.tasks;
- a catalog hub id (`google/roberta2roberta_L-24_discofuse`), downloaded on demand;
- `local:<folder>`, an immediate subfolder of BERTGEN_MODELS_DIR;
- any `owner/name` hub id, only when BERTGEN_ALLOW_ANY_HUB_ID is on.
The cache holds pipelines in LRU order under a memory bound and loads one model at a time.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from bertgen import tasks
from bertgen.checkpoints import CheckpointError
from bertgen.config import ConfigError, load_config
from bertgen.kernels import native_kernels, packed_copies, packed_weights
from bertgen.pipeline import default_device, pipeline, precision_args

from .settings import Settings

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # what the hub accepts ...
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")  # ... minus names that read as paths (./x, ../x)
FOLDER_NAME = re.compile(r"^[\w][\w.-]*$")
LOCAL = "local:"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint the app may load: its choice value, where it lives, its conventions."""

    value: str
    location: str  # a folder path or a hub id
    label: str
    info: tasks.CheckpointInfo | None = None  # input conventions when the registry knows it
    task: str | None = None  # None: offered for every task

    @property
    def downloads(self) -> bool:
        return not Path(self.location).is_dir()


# ----------------------------------------------------------------------------------------
# Choices
# ----------------------------------------------------------------------------------------
def _registry_checkpoint(info: tasks.CheckpointInfo) -> Checkpoint:
    label = f"{info.name} (bundled)" if info.bundled else f"{info.name} (downloads on first use)"
    return Checkpoint(info.name, info.location, label, info, info.task)


def _local_task(folder: Path) -> str | None:
    """A local folder may declare its task in config.json (`bertgen_task` or `task`)."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    task = data.get("bertgen_task") or data.get("task") if isinstance(data, dict) else None
    return task if task in tasks.TASKS else None


def local_checkpoints(settings: Settings) -> list[Checkpoint]:
    root = settings.models_dir
    if root is None or not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if FOLDER_NAME.match(folder.name) and (folder / "config.json").is_file():
            found.append(Checkpoint(LOCAL + folder.name, str(folder), f"{folder.name} (local)",
                                    tasks.checkpoint_info(folder.name), _local_task(folder)))
    return found


def checkpoints_for(task: str | None, settings: Settings) -> list[Checkpoint]:
    """Bundled (present on disk), then local folders, then the catalog's hub checkpoints."""
    registry = tasks.all_checkpoints() if task is None else tasks.get_task(task).checkpoints
    bundled = [_registry_checkpoint(c) for c in registry if c.bundled and c.available_offline()]
    hub = [_registry_checkpoint(c) for c in registry if not c.bundled]
    local = [c for c in local_checkpoints(settings) if task is None or c.task in (None, task)]
    return bundled + local + hub


def choices_for(task: str | None, settings: Settings) -> list[tuple[str, str]]:
    return [(c.label, c.value) for c in checkpoints_for(task, settings)]


def default_checkpoint(task: str, settings: Settings) -> str | None:
    found = checkpoints_for(task, settings)
    return found[0].value if found else None


def resolve(value: str | None, settings: Settings) -> Checkpoint:
    """The checkpoint a choice value names; ValueError (a sentence for the user) otherwise.

    The only gate: the checkpoint dropdowns accept any value, because their choices follow the
    page's task while an API call may name any task's checkpoint."""
    value = (value or "").strip()
    if not value:
        raise ValueError("Pick a checkpoint first.")
    if value.startswith(LOCAL):
        for ckpt in local_checkpoints(settings):
            if ckpt.value == value:
                return ckpt
        raise ValueError(f"There is no local checkpoint {value[len(LOCAL):]!r} in the models folder.")
    info = tasks.checkpoint_info(value)
    if info is not None and info.name == value and (not info.bundled or info.available_offline()):
        return _registry_checkpoint(info)
    if settings.allow_any_hub_id and is_hub_id(value):
        return Checkpoint(value, value, value)
    raise ValueError(f"{value!r} is not one of the checkpoints this app offers. "
                     "Pick one from the list.")


def is_hub_id(value: str) -> bool:
    """owner/name, and not also a path on this server (bertgen would read a folder first)."""
    return (bool(HUB_ID.match(value)) and all(HUB_NAME.match(part) for part in value.split("/"))
            and ".." not in value and not Path(value).exists())


# ----------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------
def pick_device(name: str = "auto") -> str:
    return default_device() if name == "auto" else name


INT8 = "int8"  # dynamic quantization of the linear layers (bertgen.pipeline): CPU only, ~3-5x faster
# The CPU quantizations (bertgen.pipeline.CPU_QUANTIZATIONS) and the bytes per weight they keep:
# int8, and bf16 weights with fp32 math (bertgen's native kernels)
CPU_WEIGHT_BYTES = {INT8: 1, "bf16-weights": 2}


def pick_dtype(name: str, device: str) -> str:
    """A dtype name, or a CPU quantization ("int8", "bf16-weights")."""
    if name in ("auto", "", None):
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if name in CPU_WEIGHT_BYTES:
        if device != "cpu":
            raise ValueError(f"{name} runs on the CPU only; on a GPU choose bfloat16 or float16.")
        return name
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; choose one of {', '.join([*DTYPES, *CPU_WEIGHT_BYTES])}.")
    return name


def model_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    # int8 linears keep their weights in packed params, not parameters
    tensors += [m.weight() for m in model.modules() if callable(getattr(m, "weight", None))]
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    # oneDNN-packed weights (CPU) are opaque tensors without a data_ptr, listed once each
    return total + sum(w.numel() * w.element_size() for w in packed_weights(model) + packed_copies(model))


def estimate_bytes(ckpt: Checkpoint, dtype: str) -> int:
    """From config.json when it is on disk (0 when unknown, e.g. before a download)."""
    if ckpt.downloads:
        return 0
    try:
        itemsize = CPU_WEIGHT_BYTES[dtype] if dtype in CPU_WEIGHT_BYTES else DTYPES[dtype].itemsize
        return load_config(ckpt.location).num_parameters() * itemsize
    except (OSError, ConfigError):
        return 0


# ----------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------
@dataclass
class Loaded:
    ckpt: Checkpoint
    pipe: object  # bertgen Text2TextPipeline
    device: str
    dtype: str
    bytes: int
    seconds: float  # load time


class ModelCache:
    """Pipelines by (checkpoint, device, dtype), least recently used first out.

    One load at a time (`_loading`); cache hits do not wait for a load in progress."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._items: OrderedDict[tuple, Loaded] = OrderedDict()
        self._lock = threading.Lock()  # guards _items
        self._loading = threading.Lock()

    def get(self, ckpt: Checkpoint, device: str = "auto", dtype: str = "auto", progress=None) -> Loaded:
        device = pick_device(device)
        dtype = pick_dtype(dtype, device)
        key = (ckpt.location, device, dtype)
        if (item := self._hit(key)) is not None:
            return item
        with self._loading:
            if (item := self._hit(key)) is not None:  # loaded while we waited
                return item
            with self._lock:
                self._evict(estimate_bytes(ckpt, dtype))
            if progress is not None:
                progress(0.0, desc=f"{'Downloading and loading' if ckpt.downloads else 'Loading'} {ckpt.value} ...")
            start = time.perf_counter()
            try:
                pipe = pipeline("text2text-generation", model=ckpt.location, device=device,
                                add_special_tokens=tasks.special_tokens(ckpt.info), **precision_args(dtype))
            except (CheckpointError, ConfigError, OSError) as err:
                raise ValueError(f"Could not load {ckpt.value}: {err}") from None
            pipe.model.requires_grad_(False)  # serving only: no autograd bookkeeping, ever
            item = Loaded(ckpt, pipe, device, dtype, model_bytes(pipe.model), time.perf_counter() - start)
            with self._lock:
                self._items[key] = item
                self._evict(0, keep=key)
            return item

    def _hit(self, key: tuple) -> Loaded | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def _evict(self, incoming: int, keep: tuple | None = None) -> None:
        """Drops least recently used models until `incoming` more bytes fit under the bound
        (the caller holds _lock)."""
        while self._items:
            total = sum(i.bytes for i in self._items.values()) + incoming
            oldest = next(iter(self._items))
            if total <= self.limit_bytes or oldest == keep:
                break
            del self._items[oldest]
        _release_cuda()

    def unload(self, value: str) -> int:
        """Unloads every copy of a checkpoint; returns how many were dropped."""
        with self._lock:
            keys = [k for k, item in self._items.items() if item.ckpt.value == value]
            for key in keys:
                del self._items[key]
        _release_cuda()
        return len(keys)

    def items(self) -> list[Loaded]:
        """Loaded models, least recently used first."""
        with self._lock:
            return list(self._items.values())


def _release_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_CACHE: ModelCache | None = None


def preload(settings: Settings) -> None:
    """Loads settings.preload now. On ZeroGPU, models must reach CUDA at start-up, outside
    @spaces.GPU calls; elsewhere this only trades start-up time for a faster first request.
    Models that will run on CPU also get bertgen's native kernel built, in the background: on
    a new machine that compile takes ~30 s, which the first request would otherwise wait for."""
    if pick_device(settings.device) == "cpu":
        threading.Thread(target=native_kernels, name="bertgen-kernel-build", daemon=True).start()
    for value in settings.preload:
        cache(settings).get(resolve(value, settings), settings.device, settings.dtype)


def cache(settings: Settings | None = None) -> ModelCache:
    """The process-wide cache (created on first use, bound from settings)."""
    global _CACHE
    if _CACHE is None:
        _CACHE = ModelCache((settings or Settings.from_env()).cache_mb * 2**20)
    return _CACHE


# ----------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------
FALLBACK_NOTE = ("The bundled checkpoints are small models trained on CPU: expect rough outputs. "
                 "The google checkpoints are the paper's 24-layer models.")


def quality_note(task: str | None = None) -> str:
    """One line on the bundled models' quality, from their model card (README.md) when present:
    the card's scores table ("this model" row), else its line starting with "Quality", else its
    first line naming a metric."""
    registry = tasks.all_checkpoints() if task is None else tasks.get_task(task).checkpoints
    for info in registry:
        card = Path(info.location) / "README.md"
        if info.bundled and card.is_file():
            note = _card_note(card.read_text(encoding="utf-8"))
            if note:
                return f"{info.name}: {note}"
    return FALLBACK_NOTE


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else []


def _card_note(text: str) -> str | None:
    """The scores row, next to the table's copy-the-input row and the card's verdict on its goal
    when it has them (a score means little without the baseline)."""
    text = text.replace("**", "").replace("__", "")
    lines = [ln.strip() for ln in text.splitlines()]
    heading = ""
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("# ")
        cells = _cells(line)
        if cells and cells[0].lower().startswith("this model") and i >= 2 and lines[i - 2].startswith("|"):
            header = [re.sub(r" [(].*", "", h) for h in _cells(lines[i - 2])]

            def scores(row):
                return ", ".join(f"{h} {v}" for h, v in zip(header[1:], row[1:]))
            note = scores(cells)
            below = itertools.takewhile(lambda ln: ln.startswith("|"), lines[i + 1:])  # the rest of the table
            copy = next((row for row in map(_cells, below) if row[0].lower().startswith("copy")), None)
            if copy:
                note += f"; copying the input: {scores(copy)}"
            where = re.search(r"\((.*)\)", heading)
            note += f" ({where.group(1)})" if where else ""
            verdict = next((re.split(r"[:(]", ln)[0].strip() for ln in lines if ln.startswith("The goal is")), None)
            return note + (f". {verdict}." if verdict else "")
    prose = [ln.lstrip(">*- ").strip() for ln in lines if ln and not ln.startswith(("---", "|", "#"))]
    for line in prose:
        if line.lower().startswith("quality"):
            return line
    for line in prose:
        if re.search(r"\b(SARI|BLEU|ROUGE|exact match)\b", line, re.I):
            return line
    return None


def note_markdown(task: str | None = None) -> str:
    """The quality note as one markdown line (the card's own markup escaped)."""
    text = re.sub(r"([*_`\\])", r"\\\1", quality_note(task))
    return f"<small>Model quality: {text}</small>"

"""Scores a model on a benchmark: batched generation, predictions on disk as they come, metrics.

A full benchmark takes hours on a CPU, so a run must survive being killed at any moment. The
predictions file is append-only JSONL, flushed and fsynced after every batch; a rerun of the same
command finds the same run id (a hash of model, weights, data, split, limit, settings and shard),
drops an unfinished last line, and generates only what is missing. Batches are fixed up front
(examples sorted by length, longest first, cut into `batch_size` pieces, shard = every N-th
batch), so a resumed or sharded run feeds the model exactly the batches an uninterrupted one
would, and its predictions and metrics are identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from . import metrics
from .benchmarks import Benchmark, get_benchmark
from .data import Examples, load_examples
from .runs import RunError, RunRecord, read_predictions, read_record

COPY = "copy"  # the "model" that returns its input: the baseline every model must beat
PACKAGES = ("torch", "transformers", "datasets", "evaluate", "sacrebleu", "rouge_score", "numpy", "tokenizers")


# ----------------------------------------------------------------------------------------
# The public entry point
# ----------------------------------------------------------------------------------------
def run_evaluation(model: str, benchmark: str | Benchmark, *, data_files=None, split: str | None = None,
                   limit: int | None = None, settings: dict | None = None, batch_size: int = 16,
                   output_dir: str | os.PathLike = "runs", seed: int = 0, num_shards: int = 1,
                   shard_index: int = 0, progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, pipeline=None, device: str | None = None,
                   dtype: str | None = None, quantize: str | None = None, columns: dict | None = None,
                   sari_variant: str | None = None, show_progress: bool = True,
                   max_data_bytes: int | None = None) -> RunRecord:
    """Evaluates `model` (a checkpoint folder, hub id, bundled name, or "copy") on `benchmark`.

    Resumes the run if its record already exists in `output_dir`. `pipeline` (an object with
    `.run(texts, **settings)`) replaces loading the model, e.g. one the app already holds;
    `model` still names it in the record. `progress(done, total)` is called after every batch;
    when `should_stop()` returns True the run stops after the current batch (status "stopped",
    resumable). `max_data_bytes` raises the size limit on local data files (evaluation.data).
    `dtype` / `quantize` ("int8", "bf16-weights", "4bit") load the model as `bertgen.pipeline` does; a run in
    another precision is another run (its own record), so their scores can be compared."""
    bench = get_benchmark(benchmark)
    if batch_size < 1:
        raise RunError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 <= shard_index < num_shards:
        raise RunError(f"shard index {shard_index} is not in 0..{num_shards - 1}")
    examples = load_examples(bench, data_files=data_files, split=split, columns=columns, limit=limit,
                             max_bytes=max_data_bytes)
    model_id, model_hash = identify_model(model)
    settings = decoding_settings(bench, model_id, settings)
    if model_id != COPY:  # bad values fail here, before a run record is written
        from bertgen.generation import GenerationSettings
        GenerationSettings().replace(**settings)
    dtype = None if dtype is None else str(dtype).removeprefix("torch.")  # torch.bfloat16 -> "bfloat16"
    from bertgen.pipeline import QUANTIZATIONS
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise RunError(f"unknown quantize={quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")
    precision = {k: v for k, v in (("dtype", dtype), ("quantize", quantize)) if v not in (None, "float32")}
    record = _open_record(bench, examples, model_id, model_hash, settings, seed, limit, batch_size,
                          num_shards, shard_index, Path(output_dir), precision)
    record.device = str(getattr(pipeline, "device", None) or device or _default_device())
    record.dtype, record.quantize = dtype, quantize
    plan = plan_batches(examples.sources, record.batch_size, num_shards, shard_index)
    owned = sorted(i for _, batch in plan for i in batch)
    with _locked(record.predictions_path) as out:
        done = read_predictions(record.predictions_path, repair=True)
        record.status, record.metrics = "running", {}  # no stale scores while it runs
        record.save()
        try:
            stopped = _generate(record, bench, examples, plan, done, out, model, pipeline,
                                progress, should_stop, show_progress)
        except BaseException:  # Ctrl-C or an error: keep what is done, resumable
            _summarise(record, bench, [done[i] for i in owned if i in done], "stopped", sari_variant,
                       with_metrics=False)
            raise
    rows = [done[i] for i in owned if i in done]
    return _summarise(record, bench, rows, "stopped" if stopped else "complete", sari_variant)


def decoding_settings(bench: Benchmark, model_id: str, settings: dict | None) -> dict:
    """What the model is run with: the task's defaults (beam 4, ...) under a local checkpoint's
    own generation_config.json choices, under the caller's settings (as the app prefills them).
    A caller's None means "not given"; UNSET ("none") means "off" and is kept as None."""
    if model_id == COPY:
        return {}
    from bertgen.checkpoints import CheckpointError
    from bertgen.generation import UNSET
    from bertgen.tasks import decoding_defaults

    folder = Path(_model_location(model_id))
    try:
        defaults = decoding_defaults(bench.task, folder if folder.is_dir() else None)
    except CheckpointError as err:
        raise RunError(str(err)) from None
    given = {k: None if v == UNSET else v for k, v in (settings or {}).items() if v is not None}
    return {**defaults, **given}  # an explicit None (from "none") switches the default off


def plan_batches(sources: list[str], batch_size: int, num_shards: int = 1, shard_index: int = 0):
    """[(batch number, example indices)] owned by this shard, longest inputs first.

    Fixed by the data alone, so every resume and every shard sees the same batches."""
    order = sorted(range(len(sources)), key=lambda i: (-len(sources[i]), i))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    return [(k, b) for k, b in enumerate(batches) if k % num_shards == shard_index]


# ----------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------
def _generate(record, bench, examples, plan, done, out, model, pipeline, progress, should_stop, show_progress) -> bool:
    """Runs the missing batches, appending their predictions; True if told to stop."""
    settings = dict(record.settings)
    if None in settings.values():  # a recorded None is "off": the pipeline's UNSET, not "not given"
        from bertgen.generation import UNSET
        settings = {k: UNSET if v is None else v for k, v in settings.items()}
    owned = sum(len(b) for _, b in plan)
    finished = sum(1 for _, b in plan for i in b if i in done)
    prepare = _input_formatter(record.model, bench)
    bar = tqdm(total=owned, initial=finished, unit="ex", disable=not show_progress, dynamic_ncols=True,
               desc=f"{record.label} on {bench.name}/{record.split}")
    if progress is not None:
        progress(finished, owned)  # where a resumed run starts
    try:
        for number, batch in plan:
            todo = [i for i in batch if i not in done]
            if not todo:
                continue
            if should_stop is not None and should_stop():
                return True
            if pipeline is None:
                pipeline = _load_pipeline(model, record)
            kwargs = dict(settings)
            if kwargs.get("do_sample"):
                kwargs["seed"] = record.seed + number  # per batch, so a resumed batch samples the same
            start = time.perf_counter()
            results = pipeline.run([prepare(examples.sources[i]) for i in batch], **kwargs)
            seconds = (time.perf_counter() - start) / len(batch)
            rows = [_row(i, examples, result, seconds) for i, result in zip(batch, results) if i in todo]
            out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            out.flush()
            os.fsync(out.fileno())
            done.update((r["index"], r) for r in rows)
            finished += len(rows)
            bar.update(len(rows))
            if progress is not None:
                progress(finished, owned)
    finally:
        bar.close()
    return False


def _row(index: int, examples: Examples, result, seconds: float) -> dict:
    return {"index": index, "source": examples.sources[index], "reference": examples.references[index],
            "prediction": result.text, "new_tokens": _first(getattr(result, "new_tokens", None)),
            "seconds": round(seconds, 6)}


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) and value else value


@dataclass
class _Copied:
    text: str
    new_tokens: int = 0


class CopyPipeline:
    """Returns every input unchanged: the copy baseline, scored like any model."""

    def run(self, texts, **_settings):
        return [_Copied(t) for t in texts]


def _load_pipeline(model: str, record: RunRecord):
    if record.model == COPY:
        return CopyPipeline()
    from bertgen.pipeline import pipeline
    from bertgen.tasks import checkpoint_info, special_tokens

    info = checkpoint_info(record.model)  # e.g. the google wikisplit model wants bos + text + eos
    return pipeline("text2text-generation", model=_model_location(model), device=record.device,
                    dtype=record.dtype, quantize=record.quantize, batch_size=record.batch_size,
                    add_special_tokens=special_tokens(info))


def _input_formatter(model_id: str, bench: Benchmark) -> Callable[[str], str]:
    """The checkpoint's input conventions (quote replacement, pretokenizing); data that is already
    WikiSplit-style is not pretokenized a second time."""
    if model_id == COPY:
        return lambda text: text
    from bertgen.tasks import checkpoint_info, prepare_input

    info = checkpoint_info(model_id)
    if info is not None and bench.pretokenized:
        info = dataclasses.replace(info, pretokenize=False)
    return lambda text: prepare_input(text, info)


# ----------------------------------------------------------------------------------------
# Finishing: metrics, speed, where and with what it ran
# ----------------------------------------------------------------------------------------
def compute_metrics(bench: Benchmark, rows: list[dict], sari_variant: str | None = None) -> dict:
    """The benchmark's metrics over prediction rows (ordered by example index)."""
    predictions = [r["prediction"] for r in rows]
    references = [r["reference"] for r in rows]
    scores = {}
    for name in bench.metrics:
        extra = {"sources": [r["source"] for r in rows], "variant": sari_variant or bench.sari_variant} \
            if name == "sari" else {}
        scores.update(metrics.compute(name, predictions, references, **extra))
    return scores


def _summarise(record: RunRecord, bench: Benchmark, rows: list[dict], status: str,
               sari_variant: str | None, with_metrics: bool = True) -> RunRecord:
    """Counts, speed, metrics (unless interrupted), hardware and versions, saved to the record."""
    record.num_done = len(rows)
    record.status = "stopped" if status == "complete" and record.num_done < record.num_examples else status
    record.seconds = round(sum(r.get("seconds") or 0 for r in rows), 3)
    record.examples_per_second = round(record.num_done / record.seconds, 3) if record.seconds > 0 else None
    record.metrics = compute_metrics(bench, rows, sari_variant) if with_metrics and rows else {}
    record.sari_variant = record.metrics.get("sari_variant")
    record.date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record.hardware, record.versions = hardware(record.device), versions()
    record.save()
    return record


def hardware(device: str | None = None) -> dict:
    import torch

    info = {"cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "device": device or "cpu"}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict:
    import bertgen

    found = {"python": platform.python_version(), "bertgen": bertgen.__version__}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------------
# Identity: which model, which weights, which run
# ----------------------------------------------------------------------------------------
def _model_location(model: str) -> str:
    """A bundled checkpoint's name -> its folder; anything else as given."""
    from bertgen.tasks import checkpoint_info

    info = checkpoint_info(model)
    return info.location if info is not None and info.bundled and not Path(model).is_dir() else model


def identify_model(model: str) -> tuple[str, str]:
    """(model id for the record, content identity): a bundled name or absolute folder with the
    sha256 of its weights, a hub id with the downloaded revision, or ("copy", "copy")."""
    if model == COPY:
        return COPY, COPY
    from bertgen.checkpoints import HUB_ID, resolve
    from bertgen.tasks import BUNDLED_DIR

    path = Path(_model_location(model)).expanduser()
    if path.is_dir():
        path = path.resolve()
        name = path.name if path.parent == BUNDLED_DIR.resolve() else str(path)
        return name, "sha256:" + weights_hash(path)
    if HUB_ID.match(model):
        return model, "revision:" + resolve(model).name  # the hub cache's snapshot folder is the commit
    raise RunError(f"{model!r} is not a checkpoint folder, a hub id (owner/name), a bundled checkpoint or 'copy'")


_HASHES: dict[tuple, str] = {}


def weights_hash(folder: Path) -> str:
    """sha256 over the weight files (name and content), cached per file size and mtime."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and re.search(r"\.(safetensors|bin)$|\.index\.json$", p.name))
    if not files:
        raise RunError(f"{folder} holds no weights (model.safetensors or pytorch_model.bin)")
    key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if (folder, key) not in _HASHES:
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.name.encode() + b"\0")
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        _HASHES[(folder, key)] = digest.hexdigest()
    return _HASHES[(folder, key)]


def run_key(model_id: str, model_hash: str, bench: Benchmark, examples: Examples, limit, settings: dict,
            seed: int, precision: dict | None = None) -> str:
    """The group id: a hash of everything that decides the predictions, except sharding.
    `precision` (dtype other than float32, quantize) only enters when set: fp32 ids stay as they were."""
    key = {"model": model_id, "model_hash": model_hash, "benchmark": bench.name, "split": examples.split,
           "data": examples.data_hash, "limit": limit, "settings": settings, "seed": seed}
    if precision:
        key["precision"] = precision
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def run_id(model_id: str, bench: str, split: str, group: str, num_shards: int = 1, shard_index: int | None = 0) -> str:
    name = re.sub(r"[^\w.-]+", "_", model_id.rstrip("/").rsplit("/", 1)[-1])[:48]
    base = f"{name}--{bench}--{split}--{group}"
    if num_shards == 1:
        return base
    return f"{base}--merged{num_shards}" if shard_index is None else f"{base}--shard{shard_index}of{num_shards}"


def _open_record(bench, examples, model_id, model_hash, settings, seed, limit, batch_size,
                 num_shards, shard_index, output_dir: Path, precision: dict | None = None) -> RunRecord:
    """The existing record of this run (to resume), or a new one."""
    group = run_key(model_id, model_hash, bench, examples, limit, settings, seed, precision)
    rid = run_id(model_id, bench.name, examples.split, group, num_shards, shard_index)
    path = output_dir / f"{rid}.json"
    if path.is_file():
        try:
            record = read_record(path)
        except RunError as err:
            warnings.warn(f"{err}; starting its record afresh (predictions are kept)", stacklevel=3)
        else:
            if record.batch_size != batch_size:
                warnings.warn(f"resuming {rid} with its batch size {record.batch_size} (not {batch_size}), "
                              f"so that it sees the same batches", stacklevel=3)
            return record
    owned = sum(len(b) for _, b in plan_batches(examples.sources, batch_size, num_shards, shard_index))
    return RunRecord(run_id=rid, group_id=group, model=model_id, model_hash=model_hash, benchmark=bench.name,
                     task=bench.task, split=examples.split, data=examples.origin, data_hash=examples.data_hash,
                     limit=limit, total_examples=len(examples), num_examples=owned, settings=settings, seed=seed,
                     batch_size=batch_size, num_shards=num_shards, shard_index=shard_index,
                     predictions_file=f"{rid}.predictions.jsonl", folder=output_dir)


@contextlib.contextmanager
def _locked(path: Path):
    """The predictions file opened for appending, locked against a second process on the same run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; do not run one run twice at once
            yield out
            return
        try:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{path.name} is being written by another process (the same run is already going)") from None
        yield out


# ----------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------
def merge(runs, output_dir: str | os.PathLike | None = None) -> RunRecord:
    """One record for the whole slice from its complete shards (records or record paths).

    Checks that they are the N shards of one run, each once, covering every example once; the
    merged predictions are in example order, so the metrics equal those of an unsharded run."""
    records = [r if isinstance(r, RunRecord) else read_record(r) for r in runs]
    if not records:
        raise RunError("nothing to merge")
    first = records[0]
    _check_shards(records)
    rows: dict[int, dict] = {}
    for record in records:
        for index, row in read_predictions(record.predictions_path).items():
            if index in rows:
                raise RunError(f"example {index} appears in more than one shard")
            rows[index] = row
    missing = set(range(first.total_examples)) - set(rows)
    if missing:
        raise RunError(f"the shards lack {len(missing)} of {first.total_examples} examples (e.g. {min(missing)})")
    folder = Path(output_dir) if output_dir is not None else first.folder
    rid = run_id(first.model, first.benchmark, first.split, first.group_id, first.num_shards, None)
    merged = dataclasses.replace(first, run_id=rid, shard_index=None, num_examples=first.total_examples,
                                 merged_from=[r.run_id for r in records], predictions_file=f"{rid}.predictions.jsonl",
                                 folder=folder, metrics={})
    ordered = [rows[i] for i in sorted(rows)]
    _write_lines(merged.predictions_path, ordered)
    return _summarise(merged, get_benchmark(first.benchmark), ordered, "complete", first.sari_variant)


def _check_shards(records: list[RunRecord]) -> None:
    first = records[0]
    for r in records:
        if r.group_id != first.group_id or r.num_shards != first.num_shards or r.batch_size != first.batch_size:
            raise RunError(f"{r.run_id} is not a shard of the same run as {first.run_id}")
        if r.status != "complete":
            raise RunError(f"{r.run_id} is {r.status} ({r.num_done}/{r.num_examples}); finish it first (rerun it)")
    indices = sorted(r.shard_index for r in records if r.shard_index is not None)
    if indices != list(range(first.num_shards)):
        raise RunError(f"need shards 0..{first.num_shards - 1} once each, got {indices}")


def _write_lines(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)

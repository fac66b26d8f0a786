"""Benchmark examples through `datasets`: from the hub when online, or from local files.

Local files (JSONL, CSV, TSV, Parquet, and the WikiSplit TSV as released: no header, no
quoting) go through `datasets`' own builders, so a hub copy and a local copy of a data set give
the same rows. Offline and not cached is the common failure here; it is turned into one message
that says how to point at a local file instead of a stack of connection errors.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from .benchmarks import Benchmark, get_benchmark

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
# Local data files above this size are refused before reading (every row is held in memory, and
# the app hands uploads to this module). The largest benchmark split the paper scores is well
# under it; pass `max_bytes=` (CLI: --max-data-mb) to read a bigger file.
MAX_DATA_BYTES = 1 << 30


class DataError(RuntimeError):
    """Benchmark data that cannot be found, read, or turned into (source, target) pairs."""


@dataclass
class Examples:
    """The (source, reference) pairs of one benchmark split, in data set order."""

    sources: list[str]
    references: list[str]
    split: str
    origin: str  # the hub id or the local file(s)
    data_hash: str  # identifies the data in run ids: file contents, or hub id + config + split
    total: int  # rows in the split before `limit`

    def __len__(self) -> int:
        return len(self.sources)


def load_examples(benchmark: str | Benchmark, *, data_files=None, split: str | None = None,
                  columns: dict | None = None, limit: int | None = None,
                  max_bytes: int | None = None) -> Examples:
    """The benchmark's examples: `data_files` when given, a local copy the workspace has, or the hub.

    `columns` maps the benchmark's column names to a local file's ({"article": "text"}); a file
    with plain `source`/`target` columns works for every benchmark. Local files larger than
    `max_bytes` (default MAX_DATA_BYTES, 1 GiB), empty, binary or not UTF-8 are refused up front."""
    bench = get_benchmark(benchmark)
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    split = split or (_split_of(data_files) if data_files else bench.default_split)
    if data_files is None and bench.local_file(split) is not None:
        data_files = bench.local_file(split)
    if data_files is not None:
        files = _file_list(data_files)
        for f in files:
            _check_file(f, MAX_DATA_BYTES if max_bytes is None else max_bytes)
        dataset = _load_local(bench, files, columns)
        origin, data_hash = ", ".join(map(str, files)), "sha256:" + _hash_files(files)
    else:
        if split not in bench.splits:
            raise DataError(f"{bench.name} has no split {split!r}; splits: {', '.join(bench.splits)}")
        dataset = _load_hub(bench, split)
        origin = bench.hub_id
        data_hash = f"hub:{bench.hub_id}/{bench.hub_config or 'default'}/{split}"
    total = len(dataset)
    if total == 0:
        raise DataError(f"{origin} has no rows")
    if limit is not None:
        dataset = dataset.select(range(min(limit, total)))
    sources, references = _format(bench, dataset, origin)
    return Examples(sources, references, split, origin, data_hash, total)


# ----------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------
def _split_of(data_files) -> str:
    """A label for a local file's split: its name without suffix ("validation.tsv" -> "validation")."""
    first = data_files if isinstance(data_files, (str, os.PathLike)) else list(data_files)[0]
    return Path(first).name.split(".")[0]


def _file_list(data_files) -> list[Path]:
    files = [Path(data_files)] if isinstance(data_files, (str, os.PathLike)) else [Path(f) for f in data_files]
    if not files:
        raise DataError("data_files is empty")
    for f in files:
        if not f.is_file():
            raise DataError(f"data file {f} does not exist")
    kinds = {FORMATS.get(_suffix(f)) for f in files}
    if None in kinds or len({_suffix(f) for f in files}) > 1:
        raise DataError(f"data files must all be one of {', '.join(FORMATS)}: got {', '.join(map(str, files))}")
    return files


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _check_file(path: Path, max_bytes: int) -> None:
    """Size, emptiness and content checks that `datasets` would answer with an opaque error
    (or with gigabytes of memory): a clear DataError naming the file, and the line if known."""
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{path} is {_size(size)}, over the {_size(max_bytes)} limit for data files; "
                        f"pass max_bytes= (CLI: --max-data-mb) to read it anyway")
    if size == 0:
        raise DataError(f"{path} is empty")
    if _suffix(path) == ".parquet":
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(max(size - 4, 0))
            tail = f.read(4)
        if size < 12 or head != b"PAR1" or tail != b"PAR1":
            raise DataError(f"{path} is not a Parquet file (no PAR1 magic bytes)")
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    newline, line, blank = b"\n", 1, True
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            blank = blank and not block.strip()
            if b"\0" in block:
                where = line + block[:block.index(b"\0")].count(newline)
                kind = _suffix(path).lstrip(".").upper()
                raise DataError(f"{path}, line {where}: a NUL byte: a binary file, not {kind} text")
            try:
                decoder.decode(block)
            except UnicodeDecodeError as err:
                where = line + err.object[:err.start].count(newline)
                bad = err.object[err.start:err.start + 1].hex()
                raise DataError(f"{path}, line {where}: not valid UTF-8 (byte 0x{bad}); save the file as UTF-8") from None
            line += block.count(newline)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8 (the file ends inside a character)") from None
    if blank:
        raise DataError(f"{path} holds only blank lines")


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 2**20 else f"{n / 2**20:,.1f} MiB"


def _load_local(bench: Benchmark, files: list[Path], columns: dict | None) -> datasets.Dataset:
    suffix = _suffix(files[0])
    kwargs = {}
    if suffix in (".csv", ".tsv"):
        # Never read "NA" or "null" as missing: they are words in a sentence.
        kwargs = {"keep_default_na": False, "na_filter": False}
    if suffix == ".tsv":
        kwargs.update(delimiter="\t", quoting=3)  # csv.QUOTE_NONE: WikiSplit rows hold stray quotes
        if not _has_header(files[0], bench, columns):
            if not bench.file_columns:
                raise DataError(f"{files[0]}: a TSV file without a header row; add one naming the columns "
                                f"({', '.join(bench.columns)}, or source/target)")
            kwargs["column_names"] = list(bench.file_columns)
    try:
        with _quiet():
            dataset = datasets.load_dataset(FORMATS[suffix], data_files=[str(f) for f in files], split="train",
                                            **kwargs)
    except Exception as err:  # datasets raises many kinds (pyarrow, pandas, json) for a bad file
        root = _root_cause(err)  # datasets wraps the useful error in "An error occurred while generating"
        raise DataError(f"could not read {', '.join(map(str, files))}: {type(root).__name__}: {root}") from None
    return _map_columns(bench, dataset, columns, files)


def _root_cause(err: BaseException) -> BaseException:
    seen = {id(err)}
    while (inner := err.__cause__ or err.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        err = inner
    return err


def _has_header(path: Path, bench: Benchmark, columns: dict | None) -> bool:
    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n").split("\t")
    wanted = set(columns.values()) if columns else set(bench.columns)
    return wanted <= set(first) or {"source", "target"} <= set(first)


def _map_columns(bench: Benchmark, dataset: datasets.Dataset, columns: dict | None, files) -> datasets.Dataset:
    if columns:
        missing = [c for c in columns.values() if c not in dataset.column_names]
        if missing:
            raise DataError(f"{files[0]}: no column(s) {', '.join(missing)}; it has {', '.join(dataset.column_names)}")
        dataset = dataset.rename_columns({v: k for k, v in columns.items() if v != k})
    if set(bench.columns) <= set(dataset.column_names):
        return dataset
    if {"source", "target"} <= set(dataset.column_names):
        return dataset
    raise DataError(f"{files[0]}: {bench.name} needs columns {', '.join(bench.columns)} (or source/target); "
                    f"the file has {', '.join(dataset.column_names)}. Map them with --columns "
                    f"{bench.columns[0]}=YOUR_COLUMN,...")


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------
# The hub
# ----------------------------------------------------------------------------------------
def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _load_hub(bench: Benchmark, split: str) -> datasets.Dataset:
    if bench.hub_id is None:
        raise DataError(f"{bench.name} has no hub copy; pass --data-files")
    try:
        with _quiet():
            if bench.hub_parquet:
                return datasets.load_dataset("parquet", data_files={split: bench.hub_parquet.format(split=split)},
                                             split=split)
            return datasets.load_dataset(bench.hub_id, bench.hub_config, split=split)
    except Exception as err:  # connection, offline, missing repo or split: all mean "no data here"
        why = ("offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE) and it is not in the local cache"
               if _offline() else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise DataError(
            f"cannot load {bench.hub_id} ({bench.hub_config or 'default'}, split {split}) from the hub: {why}. "
            f"Download it while online, or point at a local copy with --data-files FILE "
            f"(JSONL, CSV, TSV or Parquet with columns {', '.join(bench.columns)}, or source/target)") from None


@contextlib.contextmanager
def _quiet():
    """No "Generating train split" bars from datasets: the run has its own progress bar."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


# ----------------------------------------------------------------------------------------
# Rows -> pairs
# ----------------------------------------------------------------------------------------
def _format(bench: Benchmark, dataset: datasets.Dataset, origin: str) -> tuple[list[str], list[str]]:
    plain = not set(bench.columns) <= set(dataset.column_names)  # a source/target file
    sources, references = [], []
    for i, row in enumerate(dataset):
        try:
            source, reference = (row["source"], row["target"]) if plain else bench.format(row)
        except (KeyError, TypeError) as err:
            raise DataError(f"{origin}, row {i + 1}: cannot read it as {bench.name} ({err!r})") from None
        if not isinstance(source, str) or not isinstance(reference, str) or not source.strip():
            raise DataError(f"{origin}, row {i + 1}: empty or non-text source or reference")
        sources.append(source)
        references.append(reference)
    return sources, references

"""Source/target text pairs for training and evaluation: JSONL, CSV/TSV, `datasets`, WikiSplit.

Every reader returns a list of `(source, target)` string pairs and raises `DataError` with the
file and line for input it cannot use (empty file, wrong column count, bad encoding, missing
columns), so a training run fails before it starts rather than halfway through.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

SEP = "<::::>"
WIKISPLIT_ROWS = 5000
DIRECTIONS = ("split", "fusion")

Pair = tuple[str, str]


class DataError(ValueError):
    """A data file or dataset that cannot be turned into source/target pairs."""


# ----------------------------------------------------------------------------------------
# WikiSplit: no header, two columns, no quoting (rows hold stray ' and '' characters)
# ----------------------------------------------------------------------------------------
def read_wikisplit(path: str | os.PathLike, direction: str = "split",
                   expected_rows: int | None = None) -> list[Pair]:
    """Pairs from a WikiSplit TSV file.

    Column 1 is the unsplit sentence, column 2 the split sentences joined by ` <::::> `.
    `direction="split"` gives col1 -> col2, `"fusion"` gives col2 -> col1."""
    if direction not in DIRECTIONS:
        raise DataError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    rows = _read_delimited(Path(path), "\t", header=False, ncols=2)
    if expected_rows is not None and len(rows) != expected_rows:
        raise DataError(f"{path}: expected {expected_rows} rows, found {len(rows)}")
    for lineno, row in rows:
        if not row[0].strip() or not row[1].strip():
            raise DataError(f"{path}, line {lineno}: empty sentence")
    pairs = [(row[0], row[1]) for _, row in rows]
    return pairs if direction == "split" else [(t, s) for s, t in pairs]


def sentences(pairs: list[Pair]) -> list[str]:
    """Every single sentence in WikiSplit-style pairs: the unsplit ones and each split part."""
    out = []
    for source, target in pairs:
        for text in (source, target):
            out.extend(part.strip() for part in text.split(SEP) if part.strip())
    return out


# ----------------------------------------------------------------------------------------
# General files
# ----------------------------------------------------------------------------------------
def read_pairs(path: str | os.PathLike, source_column: str | int = "source",
               target_column: str | int = "target", fmt: str | None = None,
               header: bool = True) -> list[Pair]:
    """Pairs from a JSONL, CSV or TSV file.

    Columns are names (JSONL keys; CSV/TSV header cells) or 0-based indices (CSV/TSV without
    header: pass header=False). `fmt` is "jsonl", "csv", "tsv" or "wikisplit"; by default it
    follows the file suffix."""
    path = Path(path)
    fmt = (fmt or _format_of(path)).lower()
    if fmt == "wikisplit":
        return read_wikisplit(path)
    if fmt in ("jsonl", "json"):
        return _read_jsonl(path, source_column, target_column)
    if fmt in ("csv", "tsv"):
        delimiter = "\t" if fmt == "tsv" else ","
        rows = _read_delimited(path, delimiter, header=header, ncols=None)
        if header:
            names = rows[0][1]
            cols = []
            for col in (source_column, target_column):
                if isinstance(col, int):
                    cols.append(col)
                elif col in names:
                    cols.append(names.index(col))
                else:
                    raise DataError(f"{path}: no column {col!r}; the header has {names}")
            rows = rows[1:]
        else:
            cols = [_index(c, path) for c in (source_column, target_column)]
        pairs = []
        for lineno, row in rows:
            if max(cols) >= len(row):
                raise DataError(f"{path}, line {lineno}: {len(row)} columns, need at least {max(cols) + 1}")
            pairs.append((row[cols[0]], row[cols[1]]))
        return _nonempty(pairs, path)
    raise DataError(f"{path}: unknown format {fmt!r}; use jsonl, csv, tsv or wikisplit")


def pairs_from_dataset(dataset, source_column: str = "source", target_column: str = "target") -> list[Pair]:
    """Pairs from a `datasets.Dataset` (or any sequence of dicts with these keys)."""
    names = getattr(dataset, "column_names", None)
    if names is not None:
        missing = [c for c in (source_column, target_column) if c not in names]
        if missing:
            raise DataError(f"dataset has no column(s) {missing}; it has {names}")
        pairs = list(zip(dataset[source_column], dataset[target_column]))
    else:
        pairs = []
        for i, row in enumerate(dataset):
            try:
                pairs.append((row[source_column], row[target_column]))
            except KeyError as err:
                raise DataError(f"dataset row {i} has no column {err}") from None
    return _nonempty([(_text(s, f"dataset row {i}"), _text(t, f"dataset row {i}"))
                      for i, (s, t) in enumerate(pairs)], "dataset")


def load_pairs(spec: str | os.PathLike, direction: str = "split", source_column: str | int = "source",
               target_column: str | int = "target", fmt: str | None = None) -> list[Pair]:
    """The CLI's entry point: WikiSplit-format TSV (no header) gets `direction`, others columns."""
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass a .jsonl, .csv or .tsv file")
    fmt = fmt or _format_of(path)
    if fmt == "tsv" and _looks_like_wikisplit(path):
        fmt = "wikisplit"
    if fmt == "wikisplit":
        return read_wikisplit(path, direction)
    return read_pairs(path, source_column, target_column, fmt)


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------
def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "csv", "tsv"):
        return suffix
    raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; pass fmt=")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    if not text.strip():
        raise DataError(f"{path} is empty")
    return text


def _read_delimited(path: Path, delimiter: str, header: bool, ncols: int | None) -> list[tuple[int, list[str]]]:
    """(line number, cells) per non-blank line. With ncols, every row must have exactly ncols."""
    text = _read_text(path)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    rows = []
    lines = text.splitlines()
    if delimiter == "\t":
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            cells = next(csv.reader([line], delimiter="\t", quoting=quoting))
            if ncols is not None and len(cells) != ncols:
                raise DataError(f"{path}, line {lineno}: {len(cells)} tab-separated columns, expected {ncols}")
            rows.append((lineno, cells))
    else:
        reader = csv.reader(lines, delimiter=delimiter, quoting=quoting)
        try:
            for cells in reader:
                if cells and any(c.strip() for c in cells):
                    if ncols is not None and len(cells) != ncols:
                        raise DataError(f"{path}, line {reader.line_num}: {len(cells)} columns, expected {ncols}")
                    rows.append((reader.line_num, cells))
        except csv.Error as err:
            raise DataError(f"{path}, line {reader.line_num}: {err}") from None
    if not rows or (header and len(rows) < 2):
        raise DataError(f"{path} has no data rows")
    return rows


def _read_jsonl(path: Path, source_column, target_column) -> list[Pair]:
    pairs = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [c for c in (source_column, target_column) if c not in row]
        if missing:
            raise DataError(f"{path}, line {lineno}: missing key(s) {missing}; it has {sorted(row)}")
        pairs.append(tuple(_text(row[c], f"{path}, line {lineno}, key {c!r}")
                           for c in (source_column, target_column)))
    return _nonempty(pairs, path)


def _text(value, where: str) -> str:
    """A cell as text: strings and numbers; null, lists and objects are data errors, not 'None'."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: expected text, got {json.dumps(value)[:40] if value is None else type(value).__name__}")


def _nonempty(pairs: list[Pair], where) -> list[Pair]:
    if not pairs:
        raise DataError(f"{where} has no data rows")
    return pairs


def _index(col, path) -> int:
    try:
        return int(col)
    except (TypeError, ValueError):
        raise DataError(f"{path}: without a header, columns are 0-based indices, not {col!r}") from None


def _looks_like_wikisplit(path: Path) -> bool:
    """A TSV whose first line has two columns and a `<::::>` in the second one."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline().rstrip("\n").split("\t")
    except OSError:
        return False
    return len(first) == 2 and SEP in first[1]

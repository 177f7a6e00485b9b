"""Readers that turn a file into records, each with its location for errors.

Formats: JSON Lines, JSON (a list of records, or the BIG-bench /
BIG-Bench-Hard shape ``{"examples": [{"input", "target"}]}``), CSV, Parquet,
and HF ``datasets`` (a ``save_to_disk`` folder, or ``load_dataset`` on a name
or local folder). Nothing here unpickles.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from gradselect.errors import DataError

FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Record:
    """One row of a file: its fields and where it came from (``"line 3"``)."""

    fields: dict[str, Any]
    path: str
    location: str


def detect_format(path: Path, declared: str = "auto") -> str:
    """The format of ``path``: the declared one, or from its suffix / folder shape."""
    if declared != "auto":
        return declared
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf"
        return "folder"
    fmt = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"unknown data format {path.suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(sorted(FORMAT_BY_SUFFIX))}, a folder of such files, a saved HF dataset, "
            "or set 'format'",
            path=path,
        )
    return fmt


def read_records(path: Path, fmt: str, *, hf_split: str = "train") -> list[Record]:
    """All records of one file (or saved HF dataset) as :class:`Record`."""
    if not path.exists():
        raise DataError("file not found", path=path)
    reader = {
        "jsonl": _read_jsonl,
        "json": _read_json,
        "csv": _read_csv,
        "parquet": _read_parquet,
        "hf": lambda p: _read_hf_disk(p, hf_split),
    }.get(fmt)
    if reader is None:
        raise DataError(f"unknown data format {fmt!r}", path=path)
    return list(reader(path))


def _decode_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"not valid UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r})",
                    path=path,
                    location=f"line {lineno}",
                ) from None


def _read_jsonl(path: Path) -> Iterator[Record]:
    for lineno, text in _decode_lines(path):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"malformed JSON: {err.msg} (column {err.colno})", path=path, location=f"line {lineno}") from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, location=f"line {lineno}")
        yield Record(obj, str(path), f"line {lineno}")


def _read_text(path: Path) -> str:
    text = []
    for _, line in _decode_lines(path):
        text.append(line)
    return "".join(text)


def _read_json(path: Path) -> Iterator[Record]:
    try:
        obj = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON: {err.msg}", path=path, location=f"line {err.lineno}") from None
    if isinstance(obj, dict) and "examples" in obj:
        # BIG-bench / BIG-Bench-Hard task files.
        rows = obj["examples"]
        what = "'examples'"
    elif isinstance(obj, list):
        rows = obj
        what = "the top-level list"
    else:
        raise DataError(
            "expected a list of records or an object with an 'examples' list "
            f"(got {type(obj).__name__}{' with keys ' + str(sorted(obj)[:8]) if isinstance(obj, dict) else ''})",
            path=path,
        )
    if not isinstance(rows, list):
        raise DataError(f"{what} must be a list, got {type(rows).__name__}", path=path)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, location=f"record {i}")
        yield Record(_bigbench_target(row), str(path), f"record {i}")


def _bigbench_target(row: dict) -> dict:
    """BIG-bench rows may give ``target`` as a list or only ``target_scores``."""
    row = dict(row)
    target = row.get("target")
    scores = row.get("target_scores")
    if isinstance(target, list) and target and all(isinstance(t, str) for t in target):
        row["target"] = target[0]
    elif target is None and isinstance(scores, dict) and scores:
        row["target"] = max(scores, key=lambda k: scores[k])
    # Multiple choice: every scored answer is a candidate, also beside a written ``target`` (BIG-bench
    # arithmetic gives both); kept only when the target is among them (checked with the response).
    if isinstance(scores, dict) and len(scores) > 1 and all(isinstance(k, str) for k in scores):
        row["_choices"] = list(scores)
    return row


def _read_csv(path: Path) -> Iterator[Record]:
    text = _read_text(path)
    reader = csv.DictReader(text.splitlines(keepends=True))
    try:
        for row in reader:
            if None in row:
                raise DataError(
                    f"row has {len(row) - 1 + len(row[None])} fields, header has {len(reader.fieldnames or [])}",
                    path=path,
                    location=f"line {reader.line_num}",
                )
            yield Record(dict(row), str(path), f"line {reader.line_num}")
    except csv.Error as err:
        raise DataError(f"malformed CSV: {err}", path=path, location=f"line {reader.line_num}") from None


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read Parquet: {err}", path=path) from None
    for i, row in enumerate(table.to_pylist()):
        yield Record(row, str(path), f"row {i}")


def _read_hf_disk(path: Path, split: str) -> Iterator[Record]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"cannot read saved HF dataset: {err}", path=path) from None
    yield from _hf_rows(ds, split, str(path))


def read_hf_dataset(name: str, split: str) -> list[Record]:
    """Records of ``datasets.load_dataset(name)`` (a local folder or a hub id)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as err:
        raise DataError(f"cannot load HF dataset (split {split!r}): {err}", path=name) from None
    return list(_hf_rows(ds, split, name))


def _hf_rows(ds, split: str, origin: str) -> Iterator[Record]:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"no split {split!r}; splits are {sorted(ds)} (set 'hf_split')", path=origin)
        ds = ds[split]
    for i, row in enumerate(ds):
        yield Record(dict(row), origin, f"row {i}")

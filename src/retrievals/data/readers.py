"""Read ``{"query", "positive", "negative"}`` records from JSONL/JSON files, folders or datasets, validating as we go."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

Source = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Any]


class DataError(ValueError):
    """Invalid training data; the message names the file, line and field."""


@dataclass
class Record:
    query: str
    positives: List[str]
    negatives: List[str] = field(default_factory=list)
    origin: str = ""  # "file:line" for error messages


def _texts(value: Any, where: str, key: str, allow_empty: bool) -> List[str]:
    """A string or a list of strings as a list (a string is one text, never split into characters)."""
    if value is None:
        value = []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: field '{key}' must be a string or a list of strings, got {type(value).__name__}.")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise DataError(f"{where}: field '{key}'[{i}] must be a string, got {type(text).__name__}.")
    texts = [t for t in value if t.strip()]
    if not texts and not allow_empty:
        raise DataError(f"{where}: field '{key}' is empty; every record needs at least one non-empty text.")
    return list(texts)


def parse_record(
    obj: Any, where: str, query_key: str, positive_key: str, negative_key: Optional[str]
) -> Record:
    """Validate one raw object and turn it into a :class:`Record`."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
    for key in (query_key, positive_key):
        if key not in obj:
            raise DataError(f"{where}: missing field '{key}' (found fields: {sorted(obj)}).")
    query = obj[query_key]
    if not isinstance(query, str) or not query.strip():
        raise DataError(f"{where}: field '{query_key}' must be a non-empty string.")
    positives = _texts(obj[positive_key], where, positive_key, allow_empty=False)
    negatives = _texts(obj.get(negative_key), where, negative_key, allow_empty=True) if negative_key else []
    return Record(query=query, positives=positives, negatives=negatives, origin=where)


def iter_json_objects(path: Union[str, os.PathLike]) -> Iterator[Tuple[str, Any]]:
    """(location, object) pairs from a JSONL file or a JSON file holding a list of objects; the location
    (``file:line`` or ``file: item i``) is what error messages name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # fall through: JSON Lines saved with a .json name
        if isinstance(data, list):
            for i, obj in enumerate(data):
                yield f"{path}: item {i}", obj
            return
        if isinstance(data, dict):
            yield f"{path}: item 0", data
            return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno}).") from None
        yield f"{path}:{lineno}", obj


def _files(source: Union[str, os.PathLike]) -> List[Path]:
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in {".jsonl", ".json"} and p.is_file())
        if not files:
            raise DataError(f"{path}: folder has no .jsonl or .json files.")
        return files
    if not path.exists():
        raise DataError(f"{path}: no such file or folder.")
    return [path]


def iter_raw(source: Source) -> Iterator[Tuple[str, Any]]:
    """(location, raw object) pairs from files, folders, lists of those, a ``datasets.Dataset`` or a list of dicts."""
    if isinstance(source, (str, os.PathLike)):
        for file in _files(source):
            yield from iter_json_objects(file)
        return
    items: Iterable[Any] = source
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, (str, os.PathLike)) for s in source):
        for item in source:
            yield from iter_raw(item)
        return
    for i, obj in enumerate(items):
        yield f"dataset row {i}", obj


def load_records(
    source: Source,
    query_key: str = "query",
    positive_key: str = "positive",
    negative_key: Optional[str] = "negative",
    min_negatives: int = 0,
) -> List[Record]:
    """Read and validate every record before training starts.

    ``min_negatives`` > 0 requires each record to have negatives (needed when the training group
    holds hard negatives); the error names the first record without.
    """
    records = []
    for where, obj in iter_raw(source):
        record = parse_record(obj, where, query_key, positive_key, negative_key)
        if min_negatives and not record.negatives:
            raise DataError(
                f"{where}: field '{negative_key}' is empty but train_group_size needs {min_negatives} negative(s) "
                "per query; add hard negatives or use --train_group_size 1."
            )
        records.append(record)
    if not records:
        raise DataError(f"{source}: no records found.")
    return records

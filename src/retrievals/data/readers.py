"""Read ``{"query", "positive", "negative"}`` records from JSONL/JSON files, folders or datasets, validating as we go."""

from __future__ import annotations

import codecs
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ..inputs import check_encodable
from ..utils import UsageError, logger

Source = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Any]


class DataError(ValueError):
    """Invalid training data; the message names the file, line and field."""


@dataclass
class Record:
    query: str
    positives: List[str]
    negatives: List[str] = field(default_factory=list)
    origin: str = ""  # "file:line" for error messages
    extra: Dict[str, Any] = field(default_factory=dict)  # the other fields, when a reader keeps them (build_hn writes them back)


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
        check_unicode(text, where, f"'{key}'[{i}]")
    texts = [t for t in value if t.strip()]
    if not texts and not allow_empty:
        raise DataError(f"{where}: field '{key}' is empty; every record needs at least one non-empty text.")
    return list(texts)


def check_unicode(text: str, where: str, name: str) -> None:
    """A lone surrogate (a JSON "\\ud800" escape) loads as a str but no tokenizer takes it: training failed at the
    first batch holding it, mid-run, with a tokenizer TypeError naming neither the file nor the field. The check
    is :func:`retrievals.inputs.check_encodable`'s, raised as a DataError naming the file, line and field."""
    try:
        check_encodable(text, f"{where}: field {name}")
    except UsageError as exc:
        raise DataError(str(exc)) from None


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
    check_unicode(query, where, f"'{query_key}'")
    positives = _texts(obj[positive_key], where, positive_key, allow_empty=False)
    negatives = _texts(obj.get(negative_key), where, negative_key, allow_empty=True) if negative_key else []
    return Record(query=query, positives=positives, negatives=negatives, origin=where)


def read_text(path: Union[str, os.PathLike]) -> str:
    """A whole data file decoded as UTF-8; every text reader goes through here.

    A leading UTF-8 BOM (Excel, Notepad) is dropped. Bytes that are not UTF-8 raise a DataError naming
    ``file:line`` and the byte, instead of a UnicodeDecodeError traceback that names neither.
    """
    if Path(path).is_dir():
        raise DataError(f"{path}: is a folder; expected a file.")
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file.")
    data = Path(path).read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start  # in the file's bytes, BOM included
        line = data.count(b"\n", 0, offset) + 1
        line_start = max(start, data.rfind(b"\n", 0, offset) + 1)
        column = len(data[line_start:offset].decode("utf-8")) + 1  # in characters, as editors count; valid up to here
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[offset]:02x} at column {column}, file offset {offset}); "
            "save the file as UTF-8."
        ) from None


def _lines(text: str) -> Iterator[Tuple[int, str]]:
    # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085 and friends, which JSON leaves
    # unescaped inside strings, and would shift line numbers away from what an editor shows.
    for lineno, line in enumerate(text.split("\n"), start=1):
        yield lineno, line[:-1] if line.endswith("\r") else line  # CRLF files


def iter_lines(path: Union[str, os.PathLike]) -> Iterator[Tuple[int, str]]:
    """(line number, line) pairs of a UTF-8 text file (see :func:`read_text`), line endings removed."""
    return _lines(read_text(path))


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """json's object hook refusing a repeated key: ``{"query": "a", ..., "query": "b"}`` kept the last silently."""
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _loads(text: str, where: Any) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise DataError(f"{where() if callable(where) else where}: field '{exc}' appears twice in one object; "
                        "JSON keeps only the last, so one value would be lost silently.") from None


def iter_json_objects(path: Union[str, os.PathLike]) -> Iterator[Tuple[str, Any]]:
    """(location, object) pairs from a JSONL file or a JSON file holding a list of objects; the location
    (``file:line`` or ``file: item i``) is what error messages name. A key repeated within an object is an error."""
    path = Path(path)
    text = read_text(path)
    if path.suffix.lower() == ".json":
        # The first character decides: "[" is a JSON array, and its errors are reported as such (where
        # it breaks), never retried as JSON Lines; otherwise one JSON object, else JSON Lines saved as .json.
        if re.match(r"[ \t\r\n]*\[", text):  # JSON's whitespace; no copy of a large file
            try:
                data = _loads(text, path)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{exc.lineno}:{exc.colno}: invalid JSON array ({exc.msg}); "
                    "a .json file starting with '[' must hold one complete array of objects."
                ) from None
            for i, obj in enumerate(data):
                yield f"{path}: item {i}", obj
            return
        try:
            data = _loads(text, path)
        except json.JSONDecodeError as exc:
            data = None  # fall through: JSON Lines saved with a .json name
            if _is_broken_object(text):  # a pretty-printed object: its own error, not line 1's as JSON Lines
                raise DataError(
                    f"{path}:{exc.lineno}:{exc.colno}: invalid JSON object ({exc.msg}); a .json file starting "
                    "with '{' must hold one complete object, or one object per line (JSON Lines)."
                ) from None
        if isinstance(data, dict):
            yield f"{path}: item 0", data
            return
    for lineno, line in _lines(text):
        if not line.strip():
            continue
        try:
            obj = _loads(line, f"{path}:{lineno}")
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg}, column {exc.colno}).") from None
        yield f"{path}:{lineno}", obj


def _is_broken_object(text: str) -> bool:
    """Whether ``text``, which does not parse as one JSON value, is a JSON object spread over several lines rather
    than JSON Lines: it starts with ``{``, has more than one line, and its first line is not a complete value on its
    own (a JSON Lines file's first line always is). Then the whole-file error is where the file breaks, while as
    JSON Lines its first line would be reported with an unrelated message."""
    # leading JSON whitespace, "{" and the rest of its line, then more text on a later line; no copy of the file
    multiline = re.match(r"[ \t\r\n]*(\{[^\n]*)\n[ \t\r\n]*\S", text)
    if not multiline:
        return False
    try:
        json.loads(multiline.group(1))
    except json.JSONDecodeError:
        return True
    return False


DATA_SUFFIXES = (".jsonl", ".json", ".ndjson")  # compared lower-cased: DATA.JSONL is JSON Lines too


def is_json_file(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is read as JSON / JSON Lines (by its suffix, any case); other files are plain text to the
    readers that take both (``c.JSONL`` was embedded as raw JSON lines)."""
    return Path(path).suffix.lower() in DATA_SUFFIXES


def _files(source: Union[str, os.PathLike]) -> List[Path]:
    if not str(source).strip():  # Path("") is ".": every .jsonl under the working folder became training data
        raise DataError("an empty data path; name the JSONL/JSON files or folders to read.")
    path = Path(source)
    if path.is_dir():
        # Hidden files and folders (.ipynb_checkpoints/, .DS_Store, .git/) are never data: skipped silently.
        # Other files with another extension are skipped too, but named, so a forgotten data.csv is noticed.
        files, skipped = [], []
        for p in sorted(path.rglob("*")):
            if not p.is_file() or any(part.startswith(".") for part in p.relative_to(path).parts):
                continue
            (files if is_json_file(p) else skipped).append(p)
        if skipped:
            names = ", ".join(str(p.relative_to(path)) for p in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
            logger.warning(f"{path}: skipping {len(skipped)} file(s) that are not .jsonl, .json or .ndjson: {names}")
        if not files:
            raise DataError(f"{path}: folder has no .jsonl, .json or .ndjson files.")
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
        seen: Dict[Path, str] = {}  # a file named twice (or a folder and a file in it) doubled its records silently
        files = []
        for item in source:
            for file in _files(item):
                if file.resolve() in seen:
                    raise DataError(f"{file}: read twice (also through {seen[file.resolve()]}); name each data file once.")
                seen[file.resolve()] = str(item)
                files.append(file)
        for file in files:
            yield from iter_json_objects(file)
        return
    if source is None or isinstance(source, (bytes, int, float)):  # was "'NoneType' object is not iterable"
        raise TypeError(f"data source must be a path, a list of paths, a datasets.Dataset or a list of dicts, got "
                        f"{type(source).__name__}")
    for i, obj in enumerate(items):
        yield f"dataset row {i}", obj


def load_records(
    source: Source,
    query_key: str = "query",
    positive_key: str = "positive",
    negative_key: Optional[str] = "negative",
    min_negatives: int = 0,
    needed_for: str = "",
    keep_fields: bool = False,
) -> List[Record]:
    """Read and validate every record before training starts.

    ``min_negatives`` > 0 requires each record to have negatives (needed when the training group
    holds hard negatives; ``needed_for`` says why in the error, by default the training group); the error names the
    first record without, and whether its field is missing (listing the fields it has) or empty. A negative whose
    text is one of its record's positives is dropped, with one warning for the whole source (a positive scored as its
    own query's negative would hold even a perfect model's loss above zero); a record then shorter than the group
    samples its remaining negatives with repeats, as any short record does, and one left with none is the error
    above. Fields other than the three keys are not read: one warning names them (``pos_scores`` / ``neg_scores``
    of other tools' distillation data are not teacher scores here); with ``keep_fields`` they are kept in each
    record's ``extra`` instead, for a tool that writes the records back (``build_hn``).
    """
    keys = [k for k in (query_key, positive_key, negative_key) if k]
    if len(set(keys)) < len(keys):  # positive_key == query_key made every positive its own query, silently
        raise UsageError(f"--query_key {query_key!r}, --positive_key {positive_key!r} and --negative_key "
                         f"{negative_key!r} must name different fields.")
    records = []
    ignored: Dict[str, str] = {}  # field name: where it was first seen
    first_seen: Dict[str, str] = {}
    duplicates: List[Tuple[str, str, str]] = []  # (query, first origin, repeated origin)
    dropped: List[Tuple[str, int]] = []  # (origin, negatives dropped there)
    for where, obj in iter_raw(source):
        record = parse_record(obj, where, query_key, positive_key, negative_key)
        for name in obj:
            if name not in keys:
                if keep_fields:
                    record.extra[name] = obj[name]
                else:
                    ignored.setdefault(name, where)
        positives = set(record.positives)
        kept = [text for text in record.negatives if text not in positives]
        removed = len(record.negatives) - len(kept)
        if removed:
            dropped.append((where, removed))
            record.negatives = kept
        if min_negatives and not record.negatives:
            also = f" once its {removed} negative(s) equal to a positive are dropped" if removed else ""
            state = (f"is missing (found fields: {sorted(obj)})" if negative_key not in obj else f"is empty{also}")
            why = needed_for or (f"train_group_size needs {min_negatives} negative(s) per query; add hard negatives "
                                 "or use --train_group_size 1")
            raise DataError(f"{where}: field '{negative_key}' {state} but {why}.")
        if record.query in first_seen:
            duplicates.append((record.query, first_seen[record.query], where))
        first_seen.setdefault(record.query, where)
        records.append(record)
    if not records:
        raise DataError(f"{source}: no records found.")
    if ignored:
        logger.warning("fields not read (only %s are): %s", ", ".join(repr(k) for k in keys),
                       ", ".join(f"'{name}' (first at {where})" for name, where in list(ignored.items())[:8]))
    if dropped:
        _warn_positive_negatives(dropped)
    if duplicates:
        _warn_duplicates(duplicates)
    return records


def _warn_positive_negatives(dropped: List[Tuple[str, int]], shown: int = 3) -> None:
    """One warning for negatives dropped because they are their record's positive: not an error (mined negatives
    often contain the positive), but the data should be fixed at its source."""
    examples = ", ".join(f"{where} ({count})" for where, count in dropped[:shown]) + (" ..." if len(dropped) > shown else "")
    logger.warning(
        f"dropped {sum(count for _, count in dropped)} negative(s) of {len(dropped)} record(s) that repeat a positive of "
        f"the same record, e.g. {examples}: a positive scored as a negative of its own query is a false negative."
    )


def _warn_duplicates(duplicates: List[Tuple[str, str, str]], shown: int = 3) -> None:
    """One warning for repeated query texts: not an error (the data may mean it), but when two records of
    a query share a batch, each one's positive is scored as a negative of the other (a false in-batch negative)."""
    texts = len({query for query, _, _ in duplicates})
    examples = "; ".join(f"{query[:60]!r} at {first} and {again}" for query, first, again in duplicates[:shown])
    logger.warning(
        f"{texts} query text(s) occur in more than one record ({len(duplicates)} repeat(s)), e.g. {examples}. "
        "Records of the same query in one batch become false in-batch negatives of each other; "
        "merge their positives into one record unless that is intended."
    )

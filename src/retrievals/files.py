"""File writing that a killed process cannot leave half done: atomic files and journaled folder saves.

The lowest layer of the package: it imports nothing from ``retrievals`` but the logger.

A folder save (:func:`atomic_directory`) writes every entry into a hidden scratch folder inside the
target, records the entries with their sha256 in ``retrievals_files.json``, then commits by writing a
journal (one atomic rename). Only then are entries moved into place and the previous save's stale
entries removed. :func:`recover` (run before every save and every load) finishes a committed save
(roll forward) or drops an uncommitted scratch folder, so a reader always sees the complete previous
save or the complete new one, whatever instant the writer was killed at.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

from filelock import FileLock, Timeout

from .utils import logger

FILES_NAME = "retrievals_files.json"  # what a save wrote: relative path -> size and sha256
JOURNAL_NAME = ".retrievals_save_journal.json"
SCRATCH_PREFIX = ".tmp-save-"
_HASH_CHUNK = 1 << 22


class CorruptFileError(OSError):
    """A file of a saved folder is missing, truncated or altered (its checksum does not match)."""


def _proc_umask() -> Optional[int]:
    """The process's umask as Linux's /proc/self/status reports it (read without changing it), else None."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    """``os.umask`` can only read the umask by setting it, process-wide: a file another thread created between
    the set and the restore would get the wrong mask. So it is done at most once, here, while the module is
    imported (before it writes anything), and only where /proc cannot tell it."""
    mask = _proc_umask()
    if mask is None:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_IMPORT_UMASK = _umask_at_import()


def _umask() -> int:
    """The umask now (/proc is read on each call, so a later ``os.umask()`` is honoured), else as at import."""
    mask = _proc_umask()
    return _IMPORT_UMASK if mask is None else mask


def give_default_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the mode ``open()`` or ``mkdir()`` would have (0o666 or 0o777 less the umask): mkstemp and
    mkdtemp make theirs 0o600 and 0o700, which a rename into place keeps, leaving what we write unreadable for other
    users of a shared model folder. A file system without modes (vfat, some network mounts) is left as it is."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


class OutputExistsError(FileExistsError):
    """An output file is already there and replacing it was not asked for."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: the old or the new content, never half.

    The file gets the mode ``open()`` would give it (:func:`give_default_mode`)."""
    path = Path(path)
    if path.is_symlink():  # the rename would replace the link by a file and leave its target as it was
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():  # a device or pipe (--output /dev/null) would be replaced by a file
        raise OutputExistsError(f"{path}: is not a regular file (a folder, device, pipe or socket); results are "
                                "written to a file by replacing it whole: give a file path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        give_default_mode(tmp)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _walk_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def record_files(folder: Path) -> Dict[str, Dict[str, object]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in _walk_files(folder) if p.name != FILES_NAME}


def inside_name(name: Any, record: Path, field: str, nested: bool = False) -> str:
    """``name``, read from ``field`` of one of our records in ``record.parent``, when it names an entry inside that
    folder (``nested``: a relative path below it); else CorruptFileError. Saves and loads remove, move and read what
    these records name, so an altered or hostile one (``"../x"``, ``"/home/u"``, a copied model folder's) would
    otherwise reach files outside the folder."""
    parts = name.split("/") if isinstance(name, str) else []
    if (not parts or not all(parts) or any(p in {".", ".."} or "\\" in p or "\0" in p for p in parts)
            or (len(parts) > 1 and not nested)):
        raise CorruptFileError(f"{record}: {field} names {name!r}, which is not {'a path' if nested else 'an entry'} "
                               f"inside {record.parent}; the file was altered after this library wrote it, and nothing "
                               "was done with it.")
    return name


def _saved_record(folder: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The ``retrievals_files.json`` of the last save into ``folder``, or None (no save of ours, or unreadable).
    One naming anything outside the folder is refused (:func:`inside_name`)."""
    record = Path(folder) / FILES_NAME
    if not record.is_file():
        return None
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    if not isinstance(saved, dict):
        return None
    files, entries = saved.get("files", {}), saved.get("entries", [])
    if not isinstance(files, dict) or not isinstance(entries, list):
        raise CorruptFileError(f"{record}: 'files' must be an object and 'entries' a list; the file was altered after "
                               "this library wrote it.")
    for name in files:
        inside_name(name, record, "'files'", nested=True)
    for name in entries:
        inside_name(name, record, "'entries'")
    return saved


def saved_entries(folder: str | os.PathLike) -> List[str]:
    """Top-level entries the last save into ``folder`` wrote (from its ``retrievals_files.json``)."""
    saved = _saved_record(folder)
    if saved is None:
        return []
    files, entries = saved.get("files", {}), saved.get("entries", [])  # "entries": saves since empty folders were listed
    return sorted({name.split("/", 1)[0] for name in files} | set(entries) | {FILES_NAME})


def saved_files(folder: str | os.PathLike) -> Set[str]:
    """Every file (relative path) the last save into ``folder`` wrote."""
    return set((_saved_record(folder) or {}).get("files", {}))


# a save's kind names what the folder holds; saves of older versions did not record it: read from their files
_KIND_MARKERS = {"index_meta.json": "index", "retrievals_config.json": "model"}


def saved_kind(folder: str | os.PathLike) -> Optional[str]:
    """What the last save into ``folder`` was (``model``, ``index``, ...), or None: no save of ours there."""
    saved = _saved_record(folder)
    if saved is None:
        return None
    if saved.get("kind"):
        return str(saved["kind"])
    names = set(saved_entries(folder))
    return next((kind for marker, kind in _KIND_MARKERS.items() if marker in names), None)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        os.unlink(path)


def lock_dir() -> Path:
    """Where folder locks live: ``$RETRIEVALS_LOCK_DIR``, else ``retrievals-locks`` in the system's temp folder
    (one per machine: processes of one machine coordinate; other machines sharing a network folder do not)."""
    return Path(os.environ.get("RETRIEVALS_LOCK_DIR") or Path(tempfile.gettempdir()) / "retrievals-locks")


_LOCKS: Dict[str, FileLock] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Exclusive use of ``folder`` while a save writes or commits into it, or a reader recovers or reads it.

    Without it, a reader's :func:`recover` would delete the scratch folder of a save still being written
    (another thread or process), and a reader could read while a commit moves files. An OS file lock,
    released when its process dies (a killed save never blocks anyone), re-entrant within a thread; its
    file lives in ``lock_dir()``, not in the folder (a user's folder gets no file of ours, a read-only one
    can be locked too). Where no lock file can be made, the folder is used unlocked.
    """
    path = lock_path(folder, "lock")
    with _LOCKS_GUARD:
        if str(path) not in _LOCKS:
            _LOCKS[str(path)] = FileLock(str(path))
        lock = _LOCKS[str(path)]

    def wait() -> None:
        logger.warning("%s: waiting for a save or load in progress (another thread or process) to finish.", folder)
        lock.acquire()

    with holding(lock, wait):
        yield


def lock_path(folder: str | os.PathLike, suffix: str) -> Path:
    """The lock file of ``folder`` for one use (``suffix``), in ``lock_dir()``: named by its resolved path."""
    return lock_dir() / f"{hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:32]}.{suffix}"


@contextlib.contextmanager
def holding(lock: FileLock, when_busy: Any, when_unavailable: Any = None) -> Iterator[None]:
    """``lock`` held for the block. Held elsewhere: ``when_busy()`` waits for it (acquiring it) or raises. Where no
    lock file can be made (permissions, a file system without locks): ``when_unavailable()``, and the block runs
    unlocked."""
    try:
        lock_dir().mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        when_busy()
    except OSError:
        if when_unavailable is not None:
            when_unavailable()
        yield
        return
    try:
        yield
    finally:
        lock.release()


def recover(folder: str | os.PathLike, announce: bool = True) -> None:
    """Finish a committed save that was interrupted, and delete scratch folders of uncommitted ones.

    Idempotent: every step checks what is still to do, so a kill during recovery is recovered next time.
    Runs under :func:`folder_lock`: a save in progress elsewhere is waited for, never taken for a dead one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    with folder_lock(folder):
        _recover(folder, announce)


def _recover(folder: Path, announce: bool) -> None:
    journal_path = folder / JOURNAL_NAME
    if journal_path.is_file():
        journal = _read_journal(journal_path)
        scratch = folder / journal["scratch"]
        if not scratch.is_dir():  # removed by hand after the commit: the old files stay, nothing is half-moved
            logger.warning("%s: a save's journal names %s, which is gone; that save is dropped.", folder, scratch.name)
        else:
            for name in journal["remove"]:
                _remove(folder / name)
            for name in journal["move"]:
                source = scratch / name
                if source.exists() or source.is_symlink():
                    _remove(folder / name)
                    os.replace(source, folder / name)
            if announce:
                logger.warning("%s: finished a save that was interrupted.", folder)
        os.unlink(journal_path)
    for entry in folder.iterdir():
        if entry.name.startswith(SCRATCH_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _read_journal(path: Path) -> Dict[str, Any]:
    """A save's journal, checked: its scratch folder one of ours, and what it moves and removes entries inside the
    folder (a journal in a copied or downloaded folder is run by the first load)."""
    keep = "delete it to keep the folder as it is (an interrupted save's new files are then dropped)"
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CorruptFileError(f"{path}: unreadable save journal ({exc}); {keep}.") from None
    if not isinstance(journal, dict) or not all(isinstance(journal.get(f), list) for f in ("move", "remove")):
        raise CorruptFileError(f"{path}: not a save journal of this library (an object with lists 'move' and "
                               f"'remove'); {keep}.")
    scratch = inside_name(journal.get("scratch"), path, "'scratch'")
    if not scratch.startswith(SCRATCH_PREFIX) or (path.parent / scratch).is_symlink():
        raise CorruptFileError(f"{path}: 'scratch' names {scratch!r}, not a scratch folder of this library (a folder "
                               f"named {SCRATCH_PREFIX}...); {keep}.")
    for field in ("move", "remove"):
        for name in journal[field]:
            inside_name(name, path, repr(field))
    return journal


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield a scratch folder to write a complete save of ``kind`` (``model``, ``index``) into; on exit, commit
    it into ``target``.

    Entries of ``target`` that the previous save did not write (a user's README, notes, other folders)
    are never touched: a save that would replace one (a user's own ``config.json`` or ``ids.json``) is refused
    before anything moves. Entries the previous save wrote and the
    new one does not (a full model replaced by a LoRA adapter) are removed, so the folder never mixes two saves.
    A save of another kind than the previous one is refused (an index saved into a model's folder would
    otherwise remove the model as the previous save's stale entries).
    """
    target = Path(target).expanduser()  # as check_model_path reads "~/m": not a folder named "~" here
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    with folder_lock(target):  # readers and other saves of this folder wait until this one is committed
        recover(target)
        previous = saved_kind(target)
        if previous is not None and previous != kind:
            raise OutputExistsError(f"{target}: holds a saved {previous}; saving {'an' if kind[0] in 'aeiou' else 'a'} "
                                    f"{kind} there would replace it. Save it into another folder (or delete the {previous} first).")
        scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=target))
        try:
            yield scratch
            new = sorted([entry.name for entry in scratch.iterdir()] + [FILES_NAME])
            check_no_foreign_clash(target, new)
            check_no_foreign_files_inside(target, set(new) | set(saved_entries(target)))
            # "entries" too: an empty folder (sentence-transformers' 2_Normalize) holds no file to list
            atomic_write_json(scratch / FILES_NAME, {"kind": kind, "files": record_files(scratch), "entries": new})
            stale = [name for name in saved_entries(target) if name not in new]
            journal = {"scratch": scratch.name, "move": new, "remove": stale}
            atomic_write_json(target / JOURNAL_NAME, journal)  # the commit point
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            if created and empty_folder(target):  # a failed first save leaves nothing, not an empty folder
                target.rmdir()
            raise
        recover(target, announce=False)  # this save's own roll-forward


def empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def check_no_foreign_files_inside(target: Path, names: Set[str]) -> None:
    """Refuse a save that would replace or remove a folder of ours (``onnx/``, ``1_Pooling/``) holding files no save
    of ours wrote: a whole entry is replaced at the commit, so a user's file put there (sentence-transformers'
    quantised ``onnx/model_qint8_avx512.onnx``, a note) went with it."""
    entries, files = set(saved_entries(target)), saved_files(target)
    foreign = sorted(path.relative_to(target).as_posix() for name in names
                     if name in entries and (target / name).is_dir() and not (target / name).is_symlink()
                     for path in _walk_files(target / name) if path.relative_to(target).as_posix() not in files)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputExistsError(f"{target}: holds {shown}, which this library did not write, inside a folder this save "
                                "replaces; save into another folder (or move those files).")


def check_no_foreign_clash(target: Path, names: List[str]) -> None:
    """Refuse a save whose entries ``names`` would replace ones of ``target`` that no save of ours wrote (none that
    its ``retrievals_files.json`` lists): the commit replaces same-named entries, so a user's own file of that name
    (another tool's ``config.json``, a hand-made ``ids.json``) would be lost without a word."""
    ours = set(saved_entries(target))
    # an empty folder holds nothing to lose (saves before 2026-12 did not list sentence-transformers' empty
    # 2_Normalize as theirs)
    clashes = sorted(name for name in names if name not in ours and not empty_folder(target / name)
                     and ((target / name).exists() or (target / name).is_symlink()))
    if clashes:
        raise OutputExistsError(f"{target}: holds {', '.join(clashes)}, which this library did not write and this "
                                "save would replace; save into another folder (or move those files).")


_VERIFIED: set = set()  # (path, size, mtime, sha256) of files whose checksum matched: unchanged files are not rehashed
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npy", ".npz", ".faiss", ".index", ".onnx",
                   ".onnx.data", ".xml")  # the last three: CPU backends' graphs


def verify_files(folder: str | os.PathLike, full: bool = True) -> None:
    """Check the files a save recorded in ``folder``: every one present (a missing ``retrievals_config.json``
    loaded the model with default settings, scoring differently), and each weights file the same size and
    (``full``) the same sha256.

    Weights and index data are checked byte for byte: a truncated or corrupted one would load as a silently wrong
    model. Config and tokenizer files stay editable by hand (their own parsers catch broken ones). Folders
    without a ``retrievals_files.json`` (not saved by retrievals) pass unchecked.
    """
    folder = Path(folder)
    record = folder / FILES_NAME
    if not record.is_file():
        return
    try:
        files = json.loads(record.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, OSError) as exc:
        raise CorruptFileError(f"{record}: unreadable ({exc}); the folder was damaged after it was saved.") from None
    for name, info in files.items():
        path = folder / inside_name(name, record, "'files'", nested=True)
        if not path.is_file():
            raise CorruptFileError(f"{path}: missing (listed in {record.name}); the saved folder is incomplete.")
        if not name.endswith(WEIGHT_SUFFIXES):
            continue
        stat = path.stat()
        if stat.st_size != info["size"]:
            raise CorruptFileError(f"{path}: {stat.st_size} bytes, but {info['size']} were saved; the file is truncated or altered.")
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, info["sha256"])
        if full and key not in _VERIFIED:  # one hash per file version: loading a model checks its path more than once
            if sha256_file(path) != info["sha256"]:
                raise CorruptFileError(f"{path}: checksum does not match the one saved; the file is corrupted.")
            _VERIFIED.add(key)


def prepare_folder(folder: str | os.PathLike) -> Optional[Path]:
    """Recover ``folder`` (if it is a folder) so it holds one complete save; returns it as a Path or None."""
    path = Path(folder)
    if not path.is_dir():
        return None
    try:
        recover(path)
    except PermissionError as exc:
        raise CorruptFileError(f"{path}: an interrupted save needs finishing, but the folder is read-only ({exc}).") from None
    return path


def check_new_output(path: str | os.PathLike, overwrite: bool, flag: str = "--overwrite",
                     inputs: Dict[str, Any] | None = None) -> Path:
    """``path`` as a Path when it may be written: absent, or a regular file (a link: its target) with ``overwrite``
    (the user named it); never one of ``inputs`` (``{flag: path or list of paths}``: the files and folders the run
    reads or writes itself, such as a model or an index folder) nor inside one of them, even with ``overwrite``
    (a new file in a data folder is read as data by the next run; one in an index folder breaks the index); and
    checked before any work: a folder on the way that is a file would otherwise fail only when the results are
    written."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder; expected an output file path.")
    if path.exists() and not path.is_file():  # a device or pipe: replacing it whole would put a file in its place
        raise OutputExistsError(f"{path}: is not a regular file (a device, pipe or socket); results are written by "
                                "replacing a file whole: give a file path.")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{path}: {parent} is a file, so nothing can be written under it.")
            break
    target = path.resolve()  # through links, and as far as the path exists
    for name, given in (inputs or {}).items():
        for source in (given if isinstance(given, (list, tuple)) else [given]):
            if not source:
                continue
            source = Path(source).resolve()
            if source == target or source in target.parents:
                raise OutputExistsError(f"{path}: is {'the' if source == target else 'in the'} {name} this run "
                                        "uses; write the output to another file.")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass {flag} to replace it, or choose another path.")
    return path

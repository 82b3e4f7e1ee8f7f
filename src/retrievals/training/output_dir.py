"""What a training run may do with its output folder: start, resume, or refuse; and what it wrote there.

A run keeps a manifest, ``retrievals_run.json``, in its output folder: its status (running or
finished), the fingerprint of what decides its result (see :mod:`.fingerprint`) and every top-level
entry it wrote. The rules:

* Without ``--overwrite_output_dir`` a run starts only in a new or empty folder, or resumes its own
  unfinished run there; a folder holding anything else is refused, naming what is there.
* With it, a run replaces the entries an earlier run of ours wrote and never deletes or rewrites one
  it did not write (the user's README, notes and folders stay as they are; the log says so).
* A rerun resumes from the last complete checkpoint only when its fingerprint matches; otherwise it
  stops before loading weights, naming what changed. ``--resume false`` retires old checkpoints.
* One run at a time: a run holds the folder's lock (:func:`run_lock`) until it ends; a second run into it is refused.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

from filelock import FileLock

from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

from ..files import (FILES_NAME, JOURNAL_NAME, SCRATCH_PREFIX, atomic_write_json, empty_folder, holding, lock_path, recover,
                     saved_entries)
from ..models.base import CONFIG_NAME
from ..utils import logger
from .fingerprint import FINGERPRINT_NAME, describe_changes

MANIFEST_NAME = "retrievals_run.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_INTERNAL = {MANIFEST_NAME, JOURNAL_NAME}
# Names a run of ours writes; a folder without our manifest holding one of them is not overwritten.
_OUR_NAMES = re.compile(
    r"^(checkpoint-\d+|config\.json|generation_config\.json|model.*\.safetensors(\.index\.json)?|pytorch_model.*\.bin"
    r"|adapter_(config\.json|model\.safetensors)|tokenizer.*|vocab\.txt|merges\.txt|special_tokens_map\.json"
    r"|added_tokens\.json|chat_template\.jinja|modules\.json|sentence_bert_config\.json|config_sentence_transformers\.json"
    r"|\d+_\w+|colbert_linear\.pt|query_weights\.safetensors|retrievals_.*\.json|training_args\.bin"
    r"|trainer_state\.json|training_curve(\.running)?\.png|onnx|openvino|merged|embeddings\.npy|runs)$"
)  # \d+_\w+: sentence-transformers' module folders (1_Pooling, 2_Dense, 2_Normalize, 1_SpladePooling)


class OutputDirError(RuntimeError):
    """The output folder cannot be used as asked; the message names the folder and what is in the way."""


def _visible(folder: Path) -> List[str]:
    return sorted(e.name for e in folder.iterdir() if e.name not in _INTERNAL and not e.name.startswith(SCRATCH_PREFIX))


def _listing(names: List[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def last_complete_checkpoint(folder: str | Path, among: Optional[Set[str]] = None) -> Optional[str]:
    """The highest ``checkpoint-N`` that finished saving: its ``trainer_state.json``, which transformers writes last
    (and not atomically: a kill mid-write leaves it cut short), reads as JSON."""
    found = []
    for number, entry in _checkpoints(Path(folder)):
        if (among is None or entry.name in among) and (entry / CONFIG_NAME).is_file() and _readable(entry / "trainer_state.json"):
            found.append((number, entry))
    return str(max(found)[1]) if found else None


def _readable(file: Path) -> bool:
    try:
        return isinstance(json.loads(file.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def has_training_state(checkpoint: str | Path) -> bool:
    """Whether a checkpoint holds the optimizer and scheduler (not with ``--save_only_model``): resuming without
    them would restart both, which is another run than the one that was killed."""
    return all((Path(checkpoint) / name).is_file() for name in (OPTIMIZER_NAME, SCHEDULER_NAME))


def _checkpoints(folder: Path) -> List[tuple]:
    if not folder.is_dir():
        return []
    return [(int(m.group(1)), e) for e in folder.iterdir() if (m := _CHECKPOINT.match(e.name)) and e.is_dir()]


@dataclass
class RunFolder:
    """The output folder of one training run and its manifest; only the main process writes."""

    path: Path
    fingerprint: Dict[str, Any]
    is_main: bool = True
    written: Set[str] = field(default_factory=set)  # every entry of ours in the folder
    this_run: Set[str] = field(default_factory=set)  # entries this run (re)wrote
    resume_from: Optional[str] = None

    def record(self, *names: str) -> None:
        """Note entries as written by this run (before writing them, so a kill leaves them ours)."""
        new = {n for n in names if n} - self.this_run
        if not new:
            return
        self.written |= new
        self.this_run |= new
        self._write("running")

    def finish(self) -> None:
        """Mark the run finished and remove entries of earlier runs that this run did not rewrite."""
        if self.is_main:
            for name in sorted(self.written - self.this_run):
                _remove(self.path / name)
            self.written = set(self.this_run)
        self._write("finished")

    def _write(self, status: str) -> None:
        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / MANIFEST_NAME, {
            "status": status,
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "fingerprint": self.fingerprint,
            "written": sorted(self.written),
            "this_run": sorted(self.this_run),
        })

    def drop_checkpoints_after(self, checkpoint: str) -> None:
        """Delete our checkpoints newer than the one resumed from (a save the kill interrupted): the resumed run
        writes them again, and a half-written one must never be mistaken for a complete one."""
        keep = int(_CHECKPOINT.match(Path(checkpoint).name).group(1))
        for number, entry in _checkpoints(self.path):
            if number > keep and entry.name in self.written and self.is_main:
                shutil.rmtree(entry, ignore_errors=True)

    def retire_checkpoints(self) -> None:
        """Delete this folder's checkpoints of ours (incomplete ones too), so no later rerun resumes them."""
        for _, entry in sorted(_checkpoints(self.path)):
            if entry.name in self.written and self.is_main:
                shutil.rmtree(entry, ignore_errors=True)
                logger.warning("Retired %s (an earlier run's checkpoint).", entry)
        self.written = {n for n in self.written if not _CHECKPOINT.match(n)}
        self.this_run = {n for n in self.this_run if not _CHECKPOINT.match(n)}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def read_manifest(folder: Path) -> Optional[Dict[str, Any]]:
    file = folder / MANIFEST_NAME
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and data.get("status") in {"running", "finished"} else None
    except ValueError:
        raise OutputDirError(f"{file}: unreadable run manifest; delete it only if that folder holds nothing you need.") from None


@contextlib.contextmanager
def run_lock(output_dir: str | Path) -> Iterator[None]:
    """Exclusive use of ``output_dir`` by one training run, held from before :func:`prepare_output_dir` until the run
    ends (finished, failed or killed: an OS lock dies with its process). A second run into the folder is refused:
    it would resume the live run's checkpoints while that run goes on writing them, and one of the two would crash.

    Its lock file lives in ``lock_dir()`` beside :func:`~retrievals.files.folder_lock`'s, under another name: a save
    into the folder during the run takes that lock, which this one must not block. Only the main process of a
    torchrun job takes it (the others run inside its run). Where no lock file can be made, the run goes unlocked."""
    path = lock_path(output_dir, "run.lock")

    def busy() -> None:
        raise OutputDirError(f"{output_dir}: another training run is writing into this --output_dir now (it holds "
                             f"{path}); wait for it to end, or choose another --output_dir.")

    def unavailable() -> None:
        logger.warning("%s: cannot lock the folder (%s); a second run into it at the same time would not be refused.",
                       output_dir, path)

    with holding(FileLock(str(path)), busy, unavailable):
        yield


def prepare_output_dir(output_dir: str, overwrite: bool, resume: bool, fingerprint: Dict[str, Any],
                       is_main: bool = True, named_checkpoint: Optional[str] = None) -> RunFolder:
    """Apply the rules above; returns the run's folder with ``resume_from`` set when it resumes.
    ``named_checkpoint`` (``--resume_from_checkpoint``) is checked as a resumed run's own checkpoint is."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputDirError(f"{folder}: is a file; --output_dir must be a folder.")
    if is_main:
        recover(folder)
    run = RunFolder(folder, fingerprint, is_main)
    manifest = read_manifest(folder) if folder.is_dir() else None
    if named_checkpoint:
        _check_named_checkpoint(Path(named_checkpoint).expanduser(), folder, resume, manifest, fingerprint)
    entries = _visible(folder) if folder.is_dir() else []
    if manifest is None:
        if entries:
            _check_foreign_folder(folder, entries, overwrite)
        run._write("running")
        return run
    # what the last save wrote counts as ours even when a kill came before the manifest was updated
    run.written = (set(manifest.get("written", [])) | set(saved_entries(folder))) & set(entries)
    foreign = [e for e in entries if e not in run.written]
    _check_clashes(folder, foreign, "were added after our run wrote it (not in its manifest)")
    if foreign:
        logger.warning("%s: leaving alone what this library did not write there: %s", folder, _listing(foreign))
    if manifest["status"] == "finished":
        _check_finished(folder, overwrite)
        run.retire_checkpoints()
        run._write("running")
        return run
    checkpoint = last_complete_checkpoint(folder, among=run.written)
    if checkpoint and resume:
        saved = _checkpoint_fingerprint(Path(checkpoint)) or manifest.get("fingerprint") or {}
        changes = describe_changes(saved, fingerprint)
        if changes:
            raise OutputDirError(
                f"{folder} holds an unfinished run ({Path(checkpoint).name}) with other settings: {changes}. "
                "Pass --resume false to start over (its checkpoints are retired), restore those settings to resume, "
                "or choose another --output_dir."
            )
        if not has_training_state(checkpoint):
            raise OutputDirError(
                f"{folder} holds an unfinished run whose last checkpoint ({Path(checkpoint).name}) has weights only "
                f"(--save_only_model): resuming it would restart the optimizer and the learning-rate schedule. Pass "
                "--resume false to start over (its checkpoints are retired), or choose another --output_dir."
            )
        run.resume_from = checkpoint
        run.this_run = set(run.written)  # resuming continues that run: what it wrote stays
        run.drop_checkpoints_after(checkpoint)
    else:
        run.retire_checkpoints()
    run._write("running")
    return run


def check_output_dir(output_dir: str | Path, overwrite: bool) -> None:
    """The refusals of :func:`prepare_output_dir` that need no fingerprint, writing nothing: for a pipeline with
    minutes of work before its training starts (the demo's evaluation and mining)."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputDirError(f"{folder}: is a file; --output_dir must be a folder.")
    if not folder.is_dir():
        return
    manifest, entries = read_manifest(folder), _visible(folder)
    if manifest is None and entries:
        if not overwrite:
            _check_foreign_folder(folder, entries, overwrite)
        _check_clashes(folder, entries, f"no run of ours wrote (no {MANIFEST_NAME})")
    elif manifest is not None and manifest["status"] == "finished":
        _check_finished(folder, overwrite)


def _check_finished(folder: Path, overwrite: bool) -> None:
    if not overwrite:
        raise OutputDirError(
            f"{folder} already holds a finished model ({MANIFEST_NAME}); pass --overwrite_output_dir to replace it "
            "(only what our runs wrote is replaced), or choose another --output_dir."
        )


def _check_named_checkpoint(checkpoint: Path, folder: Path, resume: bool, manifest: Optional[Dict[str, Any]],
                            fingerprint: Dict[str, Any]) -> None:
    """``--resume_from_checkpoint``: refused when the run would delete it before resuming (``--resume false``, or an
    overwrite of the finished run that wrote it, retire the folder's checkpoints), when it is incomplete or lacks the
    optimizer, or when it was trained with other settings (a changed flag resumed silently)."""
    flag = f"--resume_from_checkpoint {checkpoint}"
    if not resume:
        raise OutputDirError(f"{flag} asks to resume, --resume false to start over (retiring this folder's "
                             "checkpoints): pass one of them.")
    if checkpoint.resolve().parent == folder.resolve() and manifest is not None and manifest["status"] == "finished":
        raise OutputDirError(f"{flag}: a checkpoint of the finished run in {folder}, whose checkpoints an "
                             "--overwrite_output_dir run retires before training: copy it out of the folder to resume it.")
    if not (checkpoint.is_dir() and _readable(checkpoint / "trainer_state.json")):
        raise OutputDirError(f"{flag}: not a complete checkpoint (no readable trainer_state.json).")
    if not has_training_state(checkpoint):
        raise OutputDirError(f"{flag}: has weights only (--save_only_model); resuming it would restart the optimizer "
                             "and the learning-rate schedule.")
    saved = _checkpoint_fingerprint(checkpoint)
    changes = describe_changes(saved, fingerprint) if saved is not None else ""
    if changes:
        raise OutputDirError(f"{flag} was trained with other settings: {changes}. Restore them to resume it.")


def _checkpoint_fingerprint(checkpoint: Path) -> Optional[Dict[str, Any]]:
    file = checkpoint / FINGERPRINT_NAME
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        return None


def _check_foreign_folder(folder: Path, entries: List[str], overwrite: bool) -> None:
    """A non-empty folder without our manifest: refused, or (overwrite) written beside what is there when no name collides."""
    if not overwrite:
        raise OutputDirError(
            f"{folder} is not empty and holds no run of ours ({_listing(entries)}); choose a new or empty --output_dir, "
            "or pass --overwrite_output_dir to write beside these files (they are left untouched)."
        )
    _check_clashes(folder, entries, f"no run of ours wrote (no {MANIFEST_NAME})")
    logger.warning("%s: writing beside files this library did not write, which stay untouched: %s", folder, _listing(entries))


def _check_clashes(folder: Path, foreign: List[str], why: str) -> None:
    """Refuse when files we did not write carry names a run may write: the save would replace them. An empty folder
    holds nothing to lose (saves before 2026-12 did not list sentence-transformers' empty 2_Normalize as theirs)."""
    clashes = [e for e in foreign if (_OUR_NAMES.match(e) or e == FILES_NAME) and not empty_folder(folder / e)]
    if clashes:
        raise OutputDirError(
            f"{folder} holds {_listing(clashes)}, which a run would overwrite but which {why}; --overwrite_output_dir "
            "never rewrites files it did not write: move them, or choose another --output_dir."
        )


def record_written(output_dir: str | Path, *names: str) -> None:
    """Add files a pipeline wrote into a finished run's folder (a demo's results) to its manifest, so a later
    ``--overwrite_output_dir`` run may replace them."""
    folder = Path(output_dir)
    manifest = read_manifest(folder)
    if manifest is None:
        raise OutputDirError(f"{folder}: no {MANIFEST_NAME}; only a run's own folder records what it wrote.")
    manifest["written"] = sorted(set(manifest.get("written", [])) | set(names))
    manifest["this_run"] = sorted(set(manifest.get("this_run", [])) | set(names))
    atomic_write_json(folder / MANIFEST_NAME, manifest)

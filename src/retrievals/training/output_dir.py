"""Decide what a training run may do with its output folder: start, resume, or refuse."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ..models.base import CONFIG_NAME

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_MODEL_FILES = (CONFIG_NAME, "config.json", "model.safetensors", "adapter_model.safetensors", "pytorch_model.bin")


class OutputDirError(RuntimeError):
    pass


def last_complete_checkpoint(folder: str | Path) -> Optional[str]:
    """The highest ``checkpoint-N`` that finished saving (its ``trainer_state.json`` is written last)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for entry in folder.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match and entry.is_dir() and (entry / "trainer_state.json").is_file() and (entry / CONFIG_NAME).is_file():
            found.append((int(match.group(1)), entry))
    return str(max(found)[1]) if found else None


def resolve_output_dir(output_dir: str, overwrite: bool, resume: bool) -> Optional[str]:
    """Return the checkpoint to resume from (or None), refusing to replace a user's model unasked.

    * A finished model in ``output_dir`` is replaced only with ``overwrite``.
    * An unfinished run (complete checkpoints, no final model) resumes from its last checkpoint
      unless ``resume`` is False.
    """
    folder = Path(output_dir)
    if not folder.exists() or not any(folder.iterdir()):
        return None
    finished = any((folder / name).exists() for name in _MODEL_FILES)
    if finished:
        if not overwrite:
            raise OutputDirError(
                f"{folder} already holds a model; pass --overwrite_output_dir to replace it, or choose another --output_dir."
            )
        return None
    checkpoint = last_complete_checkpoint(folder)
    return checkpoint if resume else None

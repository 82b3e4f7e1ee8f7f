"""The fingerprint of a training run: what decides its result, so a rerun resumes only the same run.

It holds the base model (path and a hash of its weight files; the tokenizer's files and a starting adapter's weights
too), a hash of the training data, and the
settings that change the outcome (optimiser and schedule, epochs, batch, group size, loss and its
settings, seed, pooling and instructions, LoRA), and what picks the saved model from evaluations when something does
(``--load_best_model_at_end``, a metric's scheduler: the metric and the held-out data). Other logging, saving and
evaluation flags are left out: changing them does not change the model, so a rerun with them changed still resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from ..files import sha256_file
from ..models.base import is_lora_dir, lora_base_of
from .arguments import METRIC_SCHEDULERS

FINGERPRINT_NAME = "retrievals_fingerprint.json"

# TrainingArguments fields that change the trained weights.
TRAINING_FIELDS = (
    "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps", "weight_decay",
    "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "optim_args", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "world_size", "seed", "data_seed",
    "dataloader_drop_last", "fp16", "bf16", "loss_fn", "temperature", "margin", "use_inbatch_neg",
    "negatives_cross_device", "label_smoothing_factor", "matryoshka_dims", "matryoshka_weights",
    "matryoshka_distill", "train_sampling_strategy", "mask_duplicate_positives",
)
# Fields fingerprinted since a later version, with the value every run before it trained with: a run whose
# fingerprint lacks one resumes when the rerun's value is that one (the same run), and is refused otherwise.
ADDED_LATER = {"train_sampling_strategy": "random", "mask_duplicate_positives": False, "model_selection": None}
# Settings inside the recorded loss ("loss") added by a later version, which fingerprinted inputs decided before
# (Matryoshka's normalize: the model and --normalize_embeddings): a run that lacks one resumes.
LOSS_ADDED_LATER = {"normalize"}
# Argument fields that do not change the result (or are fingerprinted another way).
IGNORED_FIELDS = {"train_data", "eval_data", "model_name_or_path", "trust_remote_code", "tokenizer_name"}
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
_TOKENIZER_PATTERNS = ("tokenizer*.json", "vocab.txt", "vocab.json", "merges.txt", "*.model", "special_tokens_map.json",
                       "added_tokens.json", "chat_template.jinja")
CONTENT_KEYS = {"model_weights", "teacher_weights", "train_data", "tokenizer", "lora_weights", "lora_base_weights"}


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def files_digest(path: str, patterns: Iterable[str] = _WEIGHT_PATTERNS) -> str:
    """sha256 over a local folder's files matching ``patterns`` (names and contents); a hub id is its own name."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return f"not a local folder: {path}"
    digest = hashlib.sha256()
    for pattern in patterns:
        for file in sorted(folder.glob(pattern)):
            digest.update(f"{file.name}\0{sha256_file(file)}\0".encode())
    return digest.hexdigest()[:16]


def weights_digest(path: str) -> str:
    """:func:`files_digest` of a model folder's weight files."""
    return files_digest(path)


def data_digest(records: Iterable[Any]) -> str:
    """sha256 over the validated training records, in order."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record.query, record.positives, record.negatives], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def flat_settings(settings: Iterable[Mapping[str, Any]]) -> Dict[str, Any]:
    """The pipeline's argument groups as one mapping (the groups' field names do not overlap)."""
    return {key: value for group in settings for key, value in group.items()}


def model_selection(args: Any, eval_records: Optional[Iterable[Any]]) -> Optional[Dict[str, Any]]:
    """What picks the saved model or steers the learning rate from evaluations, when something does: the metric, its
    direction and the held-out data (``--load_best_model_at_end``, a metric's scheduler); else None. A rerun
    resumed with another one compared the restored best score (nDCG on one set) with another metric or set."""
    scheduler = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    if not (getattr(args, "load_best_model_at_end", False) or scheduler in METRIC_SCHEDULERS):
        return None
    return {"metric": args.metric_for_best_model, "greater_is_better": args.greater_is_better,
            "eval_data": data_digest(eval_records or [])}


def run_fingerprint(model_path: str, records: Iterable[Any], args: Any, *settings: Mapping[str, Any],
                    eval_records: Optional[Iterable[Any]] = None) -> Dict[str, Any]:
    """The fingerprint as a flat dict of JSON values (compared key by key to name what changed)."""
    out: Dict[str, Any] = {
        "model": os.path.abspath(model_path) if os.path.isdir(os.path.expanduser(model_path)) else model_path,
        "model_weights": weights_digest(model_path),
        "train_data": data_digest(records),
    }
    given = flat_settings(settings)
    # the tokenizer that turns the data into ids (--tokenizer_name, else the model's own), and the adapter a run
    # starts from (--lora_path, or the model folder being an adapter: then its base model too), by content
    out["tokenizer"] = files_digest(given.get("tokenizer_name") or model_path, _TOKENIZER_PATTERNS)
    if given.get("lora_path"):
        out["lora_weights"] = weights_digest(given["lora_path"])
    if is_lora_dir(Path(model_path).expanduser()):
        out["lora_base_weights"] = weights_digest(lora_base_of(model_path))
    for key, value in given.items():
        if key not in IGNORED_FIELDS:
            out[key] = _plain(value)
    for key in TRAINING_FIELDS:
        if hasattr(args, key):
            out[key] = _plain(getattr(args, key))
    if hasattr(args, "lr_scheduler_type"):
        out["model_selection"] = model_selection(args, eval_records)
    return out


def _same_loss(old: Any, new: Any) -> bool:
    """The recorded loss settings equal, a setting of :data:`LOSS_ADDED_LATER` missing from the old record aside."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(_same_loss(old.get(k, "(unset)"), new.get(k, "(unset)")) for k in set(old) | set(new)
                   if k in old or k not in LOSS_ADDED_LATER)
    return old == new


def describe_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """``"learning_rate 3e-05 -> 5e-05, train_data (content changed)"``, or ``""`` when nothing changed."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "(unset)"), current.get(key, "(unset)")
        if old == new or (key not in saved and key in ADDED_LATER and new == ADDED_LATER[key]):
            continue
        if key == "loss" and _same_loss(old, new):
            continue
        if key in CONTENT_KEYS and key not in saved:  # a run started by a version that did not record it
            changes.append(f"{key} (not recorded by the run in that folder)")
        elif key in CONTENT_KEYS:
            changes.append(f"{key} (content changed)")
        else:
            changes.append(f"{key} {old!r} -> {new!r}")
    return ", ".join(changes)

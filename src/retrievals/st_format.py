"""Read and write the sentence-transformers folder layout (modules.json, pooling, normalize, prompts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from .utils import UsageError, logger

_POOL_FLAGS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "last": "pooling_mode_lasttoken"}
_POOL_NAMES = {"cls": "cls", "mean": "mean", "lasttoken": "last", "last": "last"}


def read_st_settings(path: str | Path) -> Dict[str, Any]:
    """Settings of a sentence-transformers folder: pooling (and whether it includes the prompt), normalization,
    max length and prompts.

    Returns an empty dict when ``path`` is not such a folder. Both the classic pooling config
    (``pooling_mode_mean_tokens: true``) and the v6 one (``pooling_mode: "mean"``) are understood.
    """
    path = Path(path)
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {}
    settings: Dict[str, Any] = {"normalize_embeddings": False}
    for module in json.loads(modules_file.read_text(encoding="utf-8")):
        kind = module.get("type", "")
        folder = path / module.get("path", "")
        if kind.endswith("Pooling") and ".sparse_encoder." not in kind:  # SpladePooling: see models/sparse.py
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            mode = cfg.get("pooling_mode")
            if isinstance(mode, list):
                mode = mode[0] if len(mode) == 1 else None
            if mode is None:
                mode = next((name for name, flag in _POOL_FLAGS.items() if cfg.get(flag)), None)
            if mode is None or mode not in _POOL_NAMES:
                raise UsageError(
                    f"{folder / 'config.json'}: pooling mode {cfg!r} is not supported; retrievals supports cls, mean and last."
                )
            settings["pooling_method"] = _POOL_NAMES[mode]
            if not cfg.get("include_prompt", True):
                settings["include_prompt"] = False
        elif kind.endswith("Normalize"):
            settings["normalize_embeddings"] = True
        elif kind.endswith("Transformer"):
            st_cfg = folder / "sentence_bert_config.json"
            max_len = json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length") if st_cfg.is_file() else None
            tok_cfg = folder / "tokenizer_config.json"
            if not max_len and tok_cfg.is_file():  # sentence-transformers v6 keeps it as the tokenizer's max length
                max_len = json.loads(tok_cfg.read_text(encoding="utf-8")).get("model_max_length")
                max_len = max_len if isinstance(max_len, int) and max_len < 1_000_000 else None  # "no limit" sentinels
            if max_len:
                settings["query_max_length"] = settings["document_max_length"] = int(max_len)
    prompts_file = path / "config_sentence_transformers.json"
    if prompts_file.is_file():
        prompts = json.loads(prompts_file.read_text(encoding="utf-8")).get("prompts") or {}
        if prompts.get("query"):
            settings["query_instruction"] = prompts["query"]
        doc = prompts.get("document") or prompts.get("passage")
        if doc:
            settings["document_instruction"] = doc
    return settings


def write_st_files(
    path: str | Path,
    embedding_dim: int,
    pooling_method: str,
    normalize: bool,
    max_seq_length: int,
    query_prompt: Optional[str],
    document_prompt: Optional[str],
    include_prompt: bool = True,
) -> None:
    """Write the classic sentence-transformers module files next to a saved transformer."""
    path = Path(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (path / "2_Normalize").mkdir(exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2) + "\n", encoding="utf-8"
    )
    pooling = {"word_embedding_dimension": embedding_dim, **{flag: name == pooling_method for name, flag in _POOL_FLAGS.items()}}
    pooling.update({"pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": include_prompt})
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n", encoding="utf-8")
    prompts = {"query": query_prompt or "", "document": document_prompt or ""}
    st_config = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine" if normalize else "dot"}
    (path / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n", encoding="utf-8")


def warn_unsupported_prefix(kind: str) -> None:
    logger.warning(
        "The %s instruction is a template with text after '{}': sentence-transformers cannot express it as a "
        "prompt, so the sentence-transformers files are written without it. retrievals reloads it exactly.",
        kind,
    )

"""Read and write the sentence-transformers folder layout (modules.json, pooling, dense, normalize, prompts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .utils import UsageError, logger

# the Dense activations retrievals runs, by its name and by sentence-transformers' (the class's full name)
DENSE_ACTIVATIONS = {"identity": "torch.nn.modules.linear.Identity", "tanh": "torch.nn.modules.activation.Tanh"}
DENSE_FOLDER = "2_Dense"  # where retrievals saves its Dense module (before Normalize, as sentence-transformers orders them)
_POOL_FLAGS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "last": "pooling_mode_lasttoken"}
_POOL_NAMES = {"cls": "cls", "mean": "mean", "lasttoken": "last", "last": "last"}
_MODULES_RUN = ("Transformer", "Pooling", "Dense", "Normalize")  # the sentence-transformers modules an embedder runs


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
    sparse = False  # a SparseEncoder: dot products of its vocabulary weights, whatever a dense default would be
    for module in json.loads(modules_file.read_text(encoding="utf-8")):
        kind = module.get("type", "")
        folder = path / module.get("path", "")
        name = kind.rsplit(".", 1)[-1]
        if name == "MLMTransformer":  # a SparseEncoder's transformer: its max length is read as any transformer's
            name = "Transformer"
        elif ".sparse_encoder." in kind:  # a SparseEncoder's pooling: models/sparse.py reads and checks it
            sparse = True
            continue
        if name not in _MODULES_RUN:  # a module we would skip: other vectors than sentence-transformers', silently
            raise UsageError(f"{modules_file}: module {kind or module!r} is not supported; an embedder runs "
                             f"{', '.join(_MODULES_RUN)} modules.")
        if name == "Dense":
            if "dense_dim" in settings:
                raise UsageError(f"{modules_file}: more than one Dense module; retrievals runs one.")
            if settings["normalize_embeddings"]:
                raise UsageError(f"{modules_file}: a Dense module after Normalize is not supported (retrievals "
                                 "normalises last).")
            settings.update(_dense_settings(folder / "config.json"))
        elif name == "Pooling":
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            mode = cfg.get("pooling_mode")
            if isinstance(mode, list):
                mode = mode[0] if len(mode) == 1 else None
            if mode is None:  # the classic layout: one flag per mode; several set = their outputs concatenated
                on = [key for key, value in cfg.items() if key.startswith("pooling_mode_") and value is True]
                mode = next((name for name, flag in _POOL_FLAGS.items() if on == [flag]), None)
            if mode is None or mode not in _POOL_NAMES:
                raise UsageError(
                    f"{folder / 'config.json'}: pooling mode {cfg!r} is not supported; retrievals supports cls, mean and last."
                )
            settings["pooling_method"] = _POOL_NAMES[mode]
            if not cfg.get("include_prompt", True):
                settings["include_prompt"] = False
        elif name == "Normalize":
            settings["normalize_embeddings"] = True
        else:  # Transformer
            st_cfg = folder / "sentence_bert_config.json"
            st_settings = json.loads(st_cfg.read_text(encoding="utf-8")) if st_cfg.is_file() else {}
            if st_settings.get("do_lower_case") and not _tokenizer_lower_cases(folder):
                raise UsageError(f"{st_cfg}: do_lower_case is true and the tokenizer keeps case: sentence-transformers "
                                 "lower-cases every text first, which retrievals does not do (other vectors); lower-case "
                                 "the tokenizer's normalizer, or the texts yourself and set do_lower_case false.")
            max_len = st_settings.get("max_seq_length")
            tok_cfg = folder / "tokenizer_config.json"
            if not max_len and tok_cfg.is_file():  # sentence-transformers v6 keeps it as the tokenizer's max length
                max_len = json.loads(tok_cfg.read_text(encoding="utf-8")).get("model_max_length")
                max_len = max_len if isinstance(max_len, int) and max_len < 1_000_000 else None  # "no limit" sentinels
            if max_len:
                settings["query_max_length"] = settings["document_max_length"] = int(max_len)
    prompts_file = path / "config_sentence_transformers.json"
    st_config = json.loads(prompts_file.read_text(encoding="utf-8")) if prompts_file.is_file() else {}
    prompts = st_config.get("prompts") or {}
    if isinstance(st_config.get("truncate_dim"), int) and not isinstance(st_config["truncate_dim"], bool):
        settings["truncate_dim"] = st_config["truncate_dim"]  # the size its vectors are served at
    if prompts.get("query"):
        settings["query_instruction"] = prompts["query"]
    # the first of these keys the folder has, as sentence-transformers' encode_document takes it ("document": ""
    # is no prompt, even beside a "passage" one)
    doc = next((prompts[key] for key in DOCUMENT_PROMPT_KEYS if key in prompts), None)
    if doc:
        settings["document_instruction"] = doc
    if not settings["normalize_embeddings"] and not sparse:
        settings.update(_similarity_settings(st_config.get("similarity_fn_name") or "cosine", prompts_file))
    return settings


DOCUMENT_PROMPT_KEYS = ("document", "passage", "corpus")


def _similarity_settings(name: str, config_file: Path) -> Dict[str, Any]:
    """How retrievals ranks like sentence-transformers' ``similarity_fn_name`` (cosine when unset) for a folder
    without a Normalize module: every index and score here is a dot product, so cosine is served as normalised
    vectors (dot-product ranking of the raw vectors differed). Distances it cannot rank by are refused."""
    if name == "cosine":
        return {"normalize_embeddings": True}
    if name == "dot":
        return {}
    raise UsageError(f"{config_file}: similarity_fn_name {name!r} is not supported; retrievals ranks by dot product "
                     "(or cosine) only, so its rankings would differ from sentence-transformers'.")


def st_transformer_folder(path: str | Path) -> Optional[str]:
    """The subfolder a sentence-transformers ``modules.json`` names for its Transformer module, when not the root
    (older layouts: ``0_Transformer/``); None without one."""
    try:
        modules = json.loads((Path(path) / "modules.json").read_text(encoding="utf-8"))
        return next((m["path"] for m in modules if str(m.get("type", "")).endswith("Transformer") and m.get("path")), None)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _tokenizer_lower_cases(folder: Path) -> bool:
    """Whether the folder's tokenizer gives a text and its lower-cased form the same ids (an uncased model, where
    sentence-transformers' ``do_lower_case`` changes nothing). Unknown (no ``tokenizer.json``): False."""
    file = folder / "tokenizer.json"
    if not file.is_file():
        return False
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(file))
    sample = "Hello World ÄÖ Tax"
    return tok.encode(sample).ids == tok.encode(sample.lower()).ids


def write_st_files(
    path: str | Path,
    embedding_dim: int,
    pooling_method: str,
    normalize: bool,
    max_seq_length: int,
    query_prompt: Optional[str],
    document_prompt: Optional[str],
    include_prompt: bool = True,
    dense: bool = False,
    truncate_dim: Optional[int] = None,
) -> None:
    """Write the classic sentence-transformers module files next to a saved transformer. ``dense``: list the Dense
    module (``2_Dense``, written by :func:`write_st_dense`) between pooling and normalisation."""
    path = Path(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if dense:
        modules.append({"idx": 2, "name": "2", "path": DENSE_FOLDER, "type": "sentence_transformers.models.Dense"})
    if normalize:
        folder = f"{len(modules)}_Normalize"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder,
                        "type": "sentence_transformers.models.Normalize"})
        (path / folder).mkdir(exist_ok=True)
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
    if truncate_dim is not None:  # sentence-transformers reads it from here (it does not renormalise: cosine does)
        st_config["truncate_dim"] = truncate_dim
    (path / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n", encoding="utf-8")


def _dense_settings(config_file: Path) -> Dict[str, Any]:
    """A sentence-transformers Dense module's settings as config fields, or a UsageError naming the file and field."""
    if not config_file.is_file():
        raise UsageError(f"{config_file}: missing; the Dense module listed in modules.json needs it.")
    try:
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UsageError(f"{config_file}: not valid JSON ({exc}).") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"{config_file}: expected a JSON object, got {type(cfg).__name__}.")
    names = {full: name for name, full in DENSE_ACTIVATIONS.items()}
    activation = cfg.get("activation_function", DENSE_ACTIVATIONS["tanh"])  # sentence-transformers' default: Tanh
    if activation not in names:
        raise UsageError(f"{config_file}: activation_function {activation!r} is not supported; retrievals runs "
                         f"{sorted(names)}.")
    if cfg.get("use_residual") or cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise UsageError(f"{config_file}: use_residual / module_input_name other than the defaults are not supported.")
    for key in ("in_features", "out_features"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise UsageError(f"{config_file}: field {key!r} must be a positive integer, got {cfg.get(key)!r}.")
    return {"dense_dim": cfg["out_features"], "dense_bias": bool(cfg.get("bias", True)),
            "dense_activation": names[activation]}


def st_dense_folder(path: str | Path) -> Path:
    """The folder of a model's Dense module: the one modules.json lists, else ``2_Dense`` (a LoRA adapter folder
    of ours, which has no modules.json)."""
    path = Path(path)
    modules_file = path / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text(encoding="utf-8")):
            if module.get("type", "").endswith("Dense"):
                return path / module.get("path", "")
    return path / DENSE_FOLDER


def write_st_dense(folder: str | Path, linear: torch.nn.Linear, activation: str) -> None:
    """A Dense module's folder as sentence-transformers writes it: config.json and model.safetensors
    (``linear.weight`` / ``linear.bias``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    cfg = {"in_features": linear.in_features, "out_features": linear.out_features, "bias": linear.bias is not None,
           "activation_function": DENSE_ACTIVATIONS[activation]}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_file({f"linear.{k}": v.detach().cpu().contiguous() for k, v in linear.state_dict().items()},
              str(folder / "model.safetensors"))


def read_st_dense(folder: str | Path) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """A Dense module's settings (config fields ``dense_dim``, ``dense_bias``, ``dense_activation``) and its linear
    weights (keys ``weight`` and, with a bias, ``bias``) from model.safetensors or, in folders of older
    sentence-transformers, pytorch_model.bin."""
    folder = Path(folder)
    settings = _dense_settings(folder / "config.json")
    file = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin for the Dense module.")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: say which one
        raise UsageError(f"{file}: unreadable Dense weights ({exc}).") from None
    return settings, {key[len("linear."):]: value for key, value in state.items() if key.startswith("linear.")}


def warn_unsupported_prefix(kind: str) -> None:
    logger.warning(
        "The %s instruction is a template with text after '{}': sentence-transformers cannot express it as a "
        "prompt, so the sentence-transformers files are written without it. retrievals reloads it exactly.",
        kind,
    )


def warn_one_max_length(query_max_length: int, document_max_length: int) -> int:
    """The one max length written for sentence-transformers (the larger), with a warning when the two differ."""
    if query_max_length != document_max_length:
        logger.warning("sentence-transformers has one max length: written as the larger (%d), so there %s longer "
                       "than %d tokens are not cut as retrievals cuts them.", max(query_max_length, document_max_length),
                       "queries" if query_max_length < document_max_length else "documents",
                       min(query_max_length, document_max_length))
    return max(query_max_length, document_max_length)

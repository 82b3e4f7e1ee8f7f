"""Shared model machinery: the persisted config, backbone/tokenizer loading, LoRA and atomic saving."""

from __future__ import annotations

import abc
import collections
import contextlib
import copy
import dataclasses
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, TypeVar, Union

from safetensors.torch import load_file

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from ..files import (CorruptFileError, atomic_directory, atomic_write_json, folder_lock, prepare_folder, saved_entries,
                     verify_files)
from ..inputs import check_int
from ..st_format import st_transformer_folder
from ..utils import UsageError, logger, require
from .compiled import CompiledForward, active_forward, check_inference_compile, wants_compile
from .precision import autocast, autocast_dtype, check_inference_precision
from .processing import tokenizer_at_rest

CONFIG_NAME = "retrievals_config.json"
_COMPILE_LOCK = threading.Lock()  # one compiled forward made per model, whatever the threads
BATCHES_PER_COPY = 32  # batches kept on the GPU between device-to-host copies (bounded memory, rare waits)
ADAPTER_CONFIG_NAME = "adapter_config.json"

C = TypeVar("C", bound="ModelConfig")


@dataclasses.dataclass
class ModelConfig:
    """Base of every model's persisted config: a flat dataclass written as ``retrievals_config.json``."""

    model_type: str = ""
    lora_base: Optional[str] = None  # base model of a LoRA adapter saved in the same folder

    def to_dict(self) -> Dict[str, Any]:
        from .. import __version__

        return {**dataclasses.asdict(self), "retrievals_version": __version__}

    def save(self, directory: str | os.PathLike) -> None:
        atomic_write_json(Path(directory) / CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls: Type[C], directory: str | os.PathLike) -> Optional[C]:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:  # was a bare JSONDecodeError naming no file
            raise CorruptFileError(f"{path}: not valid JSON ({exc}); fix it or save the model again.") from None
        if not isinstance(data, dict):  # a list failed with "'list' object has no attribute 'items'"
            raise CorruptFileError(f"{path}: expected a JSON object of settings, got {type(data).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def update(self, **overrides: Any) -> None:
        """Set every override that is not None."""
        for key, value in overrides.items():
            if value is not None:
                setattr(self, key, value)


def saved_model_type(path: str | os.PathLike) -> Optional[str]:
    """The ``model_type`` a folder saved by this library records (None for other folders or unreadable configs)."""
    config = Path(path) / CONFIG_NAME
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None
    except (ValueError, AttributeError, OSError):
        return None


def is_decoder_only(config: PretrainedConfig) -> bool:
    """True for decoder-only LLM architectures (Llama, Qwen2, Mistral ...), False for BERT-like encoders."""
    model_type = getattr(config, "model_type", "")
    if getattr(config, "is_encoder_decoder", False):
        return False
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def is_lora_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG_NAME).is_file()


def lora_base_of(path: str | os.PathLike) -> str:
    """The base model recorded in a LoRA adapter folder."""
    data = json.loads((Path(path) / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    base = data.get("base_model_name_or_path")
    if not base:
        raise UsageError(f"{Path(path) / ADAPTER_CONFIG_NAME}: field 'base_model_name_or_path' is missing.")
    return base


def has_tokenizer(path: str) -> bool:
    """Whether ``path`` is a folder with tokenizer files."""
    p = Path(path)
    return p.is_dir() and any((p / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def load_tokenizer(path: str, padding_side: Optional[str] = None, trust_remote_code: bool = False):
    """Load a tokenizer and give it a pad token when it has none (decoder LLMs). Texts are cut at their end: a
    tokenizer saved with ``truncation_side="left"`` (some chat models') cut away every instruction and scored
    documents by their last tokens, in training too."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if getattr(tokenizer, "truncation_side", "right") != "right":
        logger.warning("%s: its tokenizer cuts long texts at their start (truncation_side=%r); retrievals cuts them "
                       "at their end, after the instruction.", path, tokenizer.truncation_side)
        tokenizer.truncation_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def load_backbone(
    path: str,
    causal_lm: bool = False,
    dtype: Optional[torch.dtype] = None,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """Load the transformer: the bare ``AutoModel`` or, with ``causal_lm``, the model with its LM head."""
    cls = AutoModelForCausalLM if causal_lm else AutoModel
    kwargs: Dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return cls.from_pretrained(path, **kwargs)


def hf_config(path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:  # a hub id that could not be fetched: one line, not transformers' traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelPathError(f"{path}: not a local model folder, and loading it as a hub id failed: {first}") from None


class ModelPathError(FileNotFoundError):
    """A model path that does not exist or holds no model; the message names the path."""


_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _offline() -> bool:
    return any(os.environ.get(name, "").lower() in {"1", "true", "yes", "on"} for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model_path(path: str | os.PathLike, what: str = "model") -> str:
    """Validate a model path before anything loads, naming it in one line when it is wrong.

    A local folder is first recovered from an interrupted save and its recorded checksums checked
    (a truncated or altered weights file is named). A name that is not a local path is accepted only
    when it can be a hub id and hub downloads are allowed.
    """
    text = os.fspath(path)
    folder = Path(text).expanduser()
    if not folder.exists():
        if _HUB_ID.fullmatch(text) and not _offline():
            return text
        hint = " (hub ids are not tried: HF_HUB_OFFLINE is set)" if _HUB_ID.fullmatch(text) else ""
        raise ModelPathError(f"{text}: no such {what} folder{hint}.")
    if not folder.is_dir():
        raise ModelPathError(f"{text}: is a file; a {what} is a folder (config.json, weights, tokenizer).")
    prepare_folder(folder)
    verify_files(folder)
    if is_lora_dir(folder):
        if not any(folder.glob("adapter_model.*")):
            raise ModelPathError(f"{text}: LoRA adapter folder without adapter_model.safetensors.")
        return str(folder)
    if what == "tokenizer":
        return str(folder)
    if not (folder / "config.json").is_file():
        inner = st_transformer_folder(folder)
        hint = f" (its modules.json puts the transformer in {inner}/: pass {folder / inner})" if inner else ""
        raise ModelPathError(f"{text}: no config.json; not a transformers model folder{hint}.")
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_FILES):
        raise ModelPathError(f"{text}: no weights (model.safetensors or pytorch_model.bin) in this folder.")
    return str(folder)


def local_abspath(path: str) -> str:
    """An absolute path for a local folder (so a LoRA adapter finds its base from any working directory)."""
    return os.path.abspath(os.path.expanduser(path)) if os.path.isdir(os.path.expanduser(path)) else path


def record_lora_base(folder: Path, base: str) -> None:
    """Write the (absolute) base model into a saved adapter's ``adapter_config.json`` too, for peft users."""
    file = folder / ADAPTER_CONFIG_NAME
    if file.is_file():
        data = json.loads(file.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = base
        atomic_write_json(file, data)


def add_lora(
    model: torch.nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Optional[list[str]] = None,
    task_type: str = "FEATURE_EXTRACTION",
) -> torch.nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (all linear layers unless ``target_modules`` is given)."""
    peft = require("peft", "lora")
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or "all-linear",
        task_type=task_type,
    )
    return peft.get_peft_model(model, config)


def load_lora(model: torch.nn.Module, adapter_path: str, is_trainable: bool = False) -> torch.nn.Module:
    peft = require("peft", "lora")
    return peft.PeftModel.from_pretrained(model, adapter_path, is_trainable=is_trainable)


def resolve_lora_paths(path: str, saved_lora_base: Optional[str], lora_path: Optional[str]) -> Tuple[str, Optional[str]]:
    """(base model path, adapter path): a folder holding only a LoRA adapter loads onto its recorded base."""
    if is_lora_dir(path):
        base = saved_lora_base or lora_base_of(path)
        if os.path.isabs(base) and not os.path.exists(base):  # moved or deleted: transformers would try it as a hub id
            raise ModelPathError(f"{path}: this LoRA adapter's base model {base} is gone; load the base from where it is "
                                 f"now with the adapter: from_pretrained(<base folder>, lora_path={path!r}) (--lora_path).")
        return base, path
    return path, lora_path


def attach_lora(
    backbone: torch.nn.Module,
    config: ModelConfig,
    base_path: str,
    adapter_path: Optional[str],
    use_lora: bool,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Optional[List[str]] = None,
    task_type: str = "FEATURE_EXTRACTION",
) -> torch.nn.Module:
    """Load trained adapters (trainable with ``use_lora``) or add fresh ones; records the base in ``config``."""
    if target_modules is not None and not target_modules:  # peft read [] as "all-linear"
        raise UsageError("lora_target_modules is empty: name the modules to adapt, or leave it unset (all linear layers).")
    if adapter_path:
        # the adapter's own settings apply: others given were dropped silently (and a run's record said they trained);
        # the defaults (8, 16, 0.05, all linear layers) count as not given
        try:
            own = json.loads((Path(adapter_path) / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            own = {}
        given = {"r": (r, 8), "lora_alpha": (alpha, 16), "lora_dropout": (dropout, 0.05),
                 "target_modules": (sorted(target_modules) if target_modules else None, None)}
        saved = {**own, "target_modules": sorted(own["target_modules"]) if isinstance(own.get("target_modules"), list)
                 else own.get("target_modules")}
        clash = [f"{name} {value!r} (the adapter's: {saved.get(name)!r})" for name, (value, default) in given.items()
                 if value != default and value != saved.get(name)]
        if clash:
            raise UsageError(f"{adapter_path}: a trained LoRA adapter keeps its own settings; given {', '.join(clash)}. "
                             "Drop those lora_* settings (--lora_r, --lora_alpha, --lora_dropout, "
                             "--lora_target_modules), or start fresh adapters on the base model.")
    if adapter_path:
        backbone = load_lora(backbone, adapter_path, is_trainable=use_lora)
    elif use_lora:
        backbone = add_lora(backbone, r, alpha, dropout, target_modules, task_type=task_type)
    else:
        return backbone
    config.lora_base = local_abspath(base_path)
    return backbone


def check_mergeable(model: torch.nn.Module, what: str) -> None:
    """Refuse merging a LoRA that adapts a module whose weight another module shares (``lm_head`` tied to
    ``embed_tokens``: Qwen2.5, SmolLM2): merging writes the delta into that shared weight, so the other module changes
    too (peft only warns). ``what`` names the call or flag in the message."""
    uses = collections.Counter(p.data_ptr() for _, p in model.named_parameters(remove_duplicate=False))
    tied = [name for name, module in model.named_modules()
            if hasattr(module, "base_layer") and getattr(module.base_layer, "weight", None) is not None
            and uses[module.base_layer.weight.data_ptr()] > 1]
    if tied:
        raise UsageError(f"{what}: LoRA adapts {tied[0]}, whose weight is tied to another module's (the input "
                         "embeddings): merged, both would change. Keep the adapter unmerged, or leave tied modules out "
                         "of the LoRA targets (--lora_target_modules).")


def is_peft_model(model: torch.nn.Module) -> bool:
    try:
        import peft
    except ImportError:
        return False
    return isinstance(model, peft.PeftModel)


def load_backbone_weights(backbone: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load weights that ``save_pretrained`` wrote into ``backbone`` (LoRA adapter or full weights).

    Used when resuming a training checkpoint; fails when the checkpoint lacks weights the model has.
    """
    path = Path(path)
    verify_files(path)
    if is_peft_model(backbone):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(backbone, load_file(str(path / "adapter_model.safetensors")))
        return
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no model*.safetensors to load.")
    state: Dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    backbone.load_state_dict(state, strict=False)
    missing = set(backbone.state_dict()) - set(state)
    tied = {k for k in missing if "lm_head" in k or "position_ids" in k}
    if missing - tied:
        raise UsageError(f"{path}: checkpoint lacks weights {sorted(missing - tied)[:5]} ...")


class CheckpointingMixin:
    """``--gradient_checkpointing`` support for models that keep their transformer in ``self.backbone``."""

    backbone: torch.nn.Module

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: Optional[dict] = None, **kwargs: Any) -> None:
        """Recompute activations in backward to save memory (``kwargs``: the Trainer's ``every_n_layers``, ``offload``)."""
        ckpt_kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        enable = getattr(self.backbone, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=ckpt_kwargs, **kwargs)
        else:  # transformers releases before the rename
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs, **kwargs)
        if is_peft_model(self.backbone):
            self.backbone.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None, **kwargs: Any) -> None:
        """The name transformers' Trainer calls in releases before ``activation_checkpointing_enable``."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device



# model types whose position ids start after the padding index (padding_idx + 1): their max_position_embeddings
# holds pad_token_id + 1 positions no text can use (XLM-R, bge-m3, e5: 514 -> 512)
PADDING_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "data2vec-text",
                                      "roberta-prelayernorm", "ibert", "xmod"})


def usable_positions(backbone_config: Any) -> Optional[int]:
    """The longest sequence the backbone takes (None: unknown). RoBERTa-style position ids start at
    ``pad_token_id + 1``: a length up to ``max_position_embeddings`` passed every check and failed in the backbone
    with an IndexError."""
    positions = getattr(backbone_config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    pad = getattr(backbone_config, "pad_token_id", None)
    if getattr(backbone_config, "model_type", None) in PADDING_OFFSET_POSITIONS and isinstance(pad, int) and pad >= 0:
        positions -= pad + 1
    return positions if positions > 0 else None


def check_config_numbers(config: ModelConfig, backbone_config: Any) -> None:
    """The config's lengths and sizes, whoever set them (a saved file, ``from_pretrained`` or a CLI flag): a named
    error here instead of a tokenizer that stops truncating, an ``OverflowError`` or an index error deep in the
    backbone. A max length over the backbone's positions is lowered to them (a default of 512 on a smaller model
    too), with a warning; ``padding_side`` is left or right."""
    positions = usable_positions(backbone_config)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name.endswith("max_length"):
            check_int(f.name, value, 1)
            if isinstance(positions, int) and positions > 0 and value > positions:
                if value != f.default:
                    logger.warning("%s=%d is over the %d positions this model has: using %d.", f.name, value, positions,
                                   positions)
                setattr(config, f.name, positions)
        elif f.name == "window_overlap":
            check_int(f.name, value, 0)
        elif f.name == "truncate_dim" and value is not None:
            check_int(f.name, value, 1)
        elif f.name == "padding_side" and value not in ("left", "right"):
            raise UsageError(f"padding_side must be 'left' or 'right', got {value!r}.")
        elif f.type in (str, Optional[str], "str", "Optional[str]") and value is not None and not isinstance(value, str):
            raise TypeError(f"{f.name} must be a string, got {type(value).__name__}")  # 5 failed deep in the tokenizer
        elif f.type in (bool, Optional[bool], "bool", "Optional[bool]") and value is not None and not isinstance(value, bool):
            # the string "false" is truthy: normalize_embeddings="false" would still normalise
            raise UsageError(f"{f.name} must be true or false, got {value!r}.")


class RetrievalModel(CheckpointingMixin, torch.nn.Module, metaclass=abc.ABCMeta):
    """What every model kind shares: loading (path checks, config resolution, tokenizer, backbone, LoRA, dtype,
    device, eval mode), atomic saving, resuming weights and its repr.

    A kind sets ``config_class`` and ``model_type`` and fills the slots: ``_default_config`` (a config for a
    folder we did not save), ``_load_backbone``, ``_make_processor``; optionally ``_finish_config`` (settle
    settings that need the tokenizer), ``_load_extra``/``_save_extra`` (weights and files beside the backbone)
    and ``_tokenizer_for_saving``. Config fields given to ``from_pretrained`` override the saved ones.
    """

    config_class: ClassVar[Type[ModelConfig]] = ModelConfig
    model_type: ClassVar[str] = ""
    kinds: ClassVar[Dict[str, Type["RetrievalModel"]]] = {}  # every kind by model_type (filled as classes are defined)
    lora_task_type: ClassVar[str] = "FEATURE_EXTRACTION"
    accepted_and_ignored: ClassVar[frozenset] = frozenset()  # CLI spellings that mean nothing to this kind
    model_type_aliases: ClassVar[Dict[str, str]] = {}  # other names of kinds loadable through this class
    per_call_max_length: ClassVar[bool] = False  # whether a call may set max_length (then room is checked per call)
    internal_fields: ClassVar[frozenset] = frozenset({"lora_base"})  # config fields not set from outside
    backend_output: ClassVar[Optional[str]] = None  # the backbone output a CPU backend gives (None: torch only)

    def __init__(self, backbone: torch.nn.Module, tokenizer: Any, config: ModelConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.retrieval_config = config
        self.config = getattr(backbone, "config", None)  # what transformers' Trainer looks for
        check_config_numbers(config, self.config)
        self.processor = self._make_processor()
        self.inference_backend: Any = None  # a CPU backend standing in for the backbone (models/backends)
        self.inference_precision = "auto"  # autocast for inference: see models/precision.py
        self.inference_compile = "auto"  # compiled batched inference: see models/compiled.py
        self._compiled: Optional[CompiledForward] = None  # made on first use (not a submodule: not saved, not copied)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model_type" in cls.__dict__ and cls.model_type:
            RetrievalModel.kinds[cls.model_type] = cls

    @classmethod
    def _kind_for(cls, path: str) -> Type["RetrievalModel"]:
        """The kind that loads ``path``: a subclass of ``cls`` when the folder records its model type (a sparse
        embedder loaded through ``AutoModelForEmbedding``) or, for another library's folder, when the subclass
        reads its layout (:meth:`_reads_folder`); else ``cls``."""
        found = cls.kind_of(path)
        return next((kind for kind in RetrievalModel.kinds.values()
                     if kind is not cls and issubclass(kind, cls) and kind.model_type == found), cls)

    @classmethod
    def kind_of(cls, path: str | os.PathLike) -> Optional[str]:
        """The ``model_type`` of the model in folder ``path`` as :meth:`from_pretrained` reads it: recorded by this
        library, or another library's layout a kind reads (a sentence-transformers SparseEncoder: ``sparse``); None
        for a plain transformers folder, a hub id or no folder."""
        path = os.path.expanduser(str(path))
        if not os.path.isdir(path):
            return None
        saved = saved_model_type(path)
        if saved is not None:
            return saved
        return next((kind.model_type for kind in RetrievalModel.kinds.values() if kind._reads_folder(path)), None)

    @classmethod
    def _start_config(cls, path: str, lora_path: Optional[str], backbone_only: bool,
                      trust_remote_code: bool) -> Tuple[ModelConfig, str, bool, str, Optional[str]]:
        """The config ``path`` loads with before settings and tokenizer are applied: the saved one (an adapter trained
        by us carries its run's), else the kind's defaults for that folder; with the folder the config and extra
        files come from, whether we saved it, the base model's path and the adapter's."""
        # an adapter trained by us (--lora_path) carries the run's settings and extra files: they are its model's,
        # whatever the base folder holds
        source = lora_path if lora_path and (Path(lora_path) / CONFIG_NAME).is_file() and not backbone_only else path
        config = cls.config_class.load(source) if os.path.isdir(source) and not backbone_only else None
        if config is not None and config.model_type != cls.model_type:
            raise UsageError(f"{path} holds a {config.model_type!r} model, not {cls.model_type!r}; to start a fresh "
                             f"{cls.model_type!r} from its transformer weights, pass backbone_only=True (--backbone_only true).")
        saved_by_us = config is not None
        base_path, adapter_path = resolve_lora_paths(path, config.lora_base if config else None, lora_path)
        if config is None:
            if not backbone_only:
                cls._check_foreign_folder(path)
            config = cls._default_config(path, base_path, trust_remote_code)
        return config, source, saved_by_us, base_path, adapter_path

    @classmethod
    def settings_of(cls, model_name_or_path: str, lora_path: Optional[str] = None, backbone_only: bool = False,
                    trust_remote_code: bool = False, **overrides: Any) -> ModelConfig:
        """The settings :meth:`from_pretrained` would load ``model_name_or_path`` with (config fields given as
        ``overrides``), read from its config files without loading weights or tokenizer, so a training run can settle
        what depends on them (its loss's temperature, say) before it loads anything. Settings the tokenizer decides
        (``padding_side``, ``append_eos`` of a fresh decoder) are not settled here."""
        checked = check_model_path(model_name_or_path)
        kind = cls if backbone_only else cls._kind_for(checked)
        if lora_path:
            lora_path = check_model_path(lora_path, "LoRA adapter")
        config = kind._start_config(checked, lora_path, backbone_only, trust_remote_code)[0]
        unknown = set(overrides) - {f.name for f in dataclasses.fields(kind.config_class)}
        if unknown:
            raise TypeError(f"{kind.__name__}.settings_of() got unexpected keyword arguments {sorted(unknown)}.")
        config.update(**overrides)  # those given (not None)
        return config

    @classmethod
    def _requested_kind(cls, requested: Any, found: Type["RetrievalModel"], path: str,
                        backbone_only: bool) -> Type["RetrievalModel"]:
        """The kind a ``model_type`` names (a kind loadable through ``cls``; ``cls.model_type_aliases`` too), refused
        when the folder records or reads as another kind (a fresh transformers folder takes any; ``backbone_only``
        takes its weights alone)."""
        name = cls.model_type_aliases.get(str(requested).lower(), str(requested).lower())
        kinds = {k: v for k, v in RetrievalModel.kinds.items() if issubclass(v, cls)}
        if name not in kinds:
            raise UsageError(f"model_type={requested!r}: {cls.__name__} loads {sorted([*kinds, *cls.model_type_aliases])}.")
        wanted = kinds[name]
        recorded = found is not cls or (os.path.isdir(path) and saved_model_type(path) is not None)
        if recorded and not backbone_only and found is not wanted:
            raise UsageError(f"{path} holds a {found.model_type} model, not model_type={requested!r}; drop "
                             "model_type (it is read from the folder).")
        return wanted

    @classmethod
    def _reads_folder(cls, path: str) -> bool:
        """True when ``path`` is another library's folder of this kind (a sentence-transformers SparseEncoder)."""
        return False

    # ------------------------------------------------------------------ slots
    @abc.abstractmethod
    def _make_processor(self) -> Any:
        """The processor that turns texts into this model's inputs (training collator and inference alike)."""

    @classmethod
    @abc.abstractmethod
    def _default_config(cls, path: str, base_path: str, trust_remote_code: bool) -> ModelConfig:
        """The config of a folder without ``retrievals_config.json`` (a plain transformers or other library's folder)."""

    @classmethod
    @abc.abstractmethod
    def _load_backbone(cls, path: str, config: Any, dtype: Optional[torch.dtype], trust_remote_code: bool) -> torch.nn.Module:
        """The transformer this kind runs."""

    @classmethod
    def _check_foreign_folder(cls, path: str) -> None:
        """Refuse another library's folder whose layers this kind would skip (other scores than that library's,
        silently); ``backbone_only=True`` takes its transformer on purpose and skips this check."""

    @classmethod
    def _finish_config(cls, config: Any, tokenizer: Any, overrides: Dict[str, Any], saved_by_us: bool) -> None:
        """Settle settings that depend on the tokenizer (after overrides)."""

    def _load_extra(self, path: str, fresh: bool) -> None:
        """Load weights kept outside the backbone (ColBERT's projection)."""

    def check_takes_text(self) -> None:
        """Refuse settings that leave no room for any text (an instruction filling ``query_max_length``, an LLM
        reranker's ``max_length`` under its prompt): every call would fail alike, so they are refused at load (and
        when a server starts), naming the settings. A kind tokenizes a one-word input of each sort here."""

    def _save_extra(self, folder: Path, config: Any, lora: bool) -> None:
        """Write files kept outside the backbone into the save's scratch folder."""

    def _tokenizer_for_saving(self, config: Any) -> Any:
        return self.tokenizer

    def backend_inputs(self) -> List[str]:
        """The tensors this kind passes to its backbone, which a CPU backend's graph takes."""
        return ["input_ids", "attention_mask"]

    # ------------------------------------------------------------------ the transformer forward
    def run_backbone(self, **inputs: Any) -> Any:
        """The backbone's forward: the torch module (compiled inside this model's batched inference loop, see
        :mod:`retrievals.models.compiled`), or the CPU backend standing in for it (inference only)."""
        if self.inference_backend is None:
            compiled = active_forward()
            if compiled is not None and compiled.backbone is self.backbone and not torch.is_grad_enabled():
                return compiled(self.backbone, self.pads_left(), **inputs)
            return self.backbone(**inputs)
        if torch.is_grad_enabled():
            raise UsageError(f"backend {self.inference_backend} runs inference only (no gradients): call it under "
                             "torch.inference_mode(), or load the model with backend='torch' to train.")
        return self.inference_backend(**inputs)

    def pads_left(self) -> bool:
        """Whether the backbone's inputs are padded on the left (where a compiled call pads them too)."""
        return getattr(self.tokenizer, "padding_side", "right") == "left"

    def max_input_length(self) -> int:
        """The longest input the config allows (its ``*max_length`` settings): a compiled call pads no further."""
        config = self.retrieval_config
        lengths = [getattr(config, f.name) for f in dataclasses.fields(config) if f.name.endswith("max_length")]
        return max([n for n in lengths if isinstance(n, int)] or [512])

    def inference_compiled(self) -> Optional[CompiledForward]:
        """The compiled forward the batched loop runs under at this model's ``inference_compile`` on its device
        (made on first use, remade when the model moved), or None: eager."""
        setting = getattr(self, "inference_compile", "auto")  # a model pickled before the setting existed: auto
        if self.inference_backend is not None or not wants_compile(setting, self.device):
            return None
        strict = setting == "on"
        with _COMPILE_LOCK:
            compiled = getattr(self, "_compiled", None)
            if compiled is None or compiled.backbone is not self.backbone or compiled.device != self.device or compiled.strict != strict:
                pad_id = getattr(self.tokenizer, "pad_token_id", None)
                compiled = self._compiled = CompiledForward(self.backbone, self.device, pad_id if pad_id is not None else 0,
                                                            self.max_input_length(), strict)
        return None if compiled.failed is not None else compiled

    def train(self, mode: bool = True) -> "RetrievalModel":
        if mode and getattr(self, "inference_backend", None) is not None:
            raise UsageError(f"A model running on backend {self.inference_backend} cannot train; "
                             "load it with backend='torch'.")
        return super().train(mode)

    def to(self, *args: Any, **kwargs: Any) -> "RetrievalModel":
        if getattr(self, "inference_backend", None) is not None:
            device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
            if (device is not None and torch.device(device).type != "cpu") or dtype not in (None, torch.float32):
                raise UsageError(f"backend {self.inference_backend} runs its float32 graph on CPU; it cannot move "
                                 f"to {device or dtype} (load the model with backend='torch' for that).")
        return super().to(*args, **kwargs)

    def cuda(self, device: Any = None) -> "RetrievalModel":
        if getattr(self, "inference_backend", None) is not None:
            return self.to("cuda")  # refused, with the message of to()
        return super().cuda(device)

    # a backend runs the float32 graph of the weights it was loaded with: other weights or another dtype given to the
    # torch module were accepted, the old graph kept serving, and the cache key (state_digest) named the new weights
    def half(self) -> "RetrievalModel":
        return self._refuse_on_backend("half()") or super().half()

    def bfloat16(self) -> "RetrievalModel":
        return self._refuse_on_backend("bfloat16()") or super().bfloat16()

    def double(self) -> "RetrievalModel":
        return self._refuse_on_backend("double()") or super().double()

    def type(self, dst_type: Any) -> "RetrievalModel":
        return self._refuse_on_backend(f"type({dst_type})") or super().type(dst_type)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._refuse_on_backend("load_state_dict()")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _refuse_on_backend(self, call: str) -> None:
        if getattr(self, "inference_backend", None) is not None:
            raise UsageError(f"{call}: backend {self.inference_backend} runs the float32 graph of the weights it was "
                             "loaded with; load other weights or another dtype with from_pretrained(path, backend='torch').")

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        use_lora: bool = False,
        lora_path: Optional[str] = None,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: Optional[List[str]] = None,
        tokenizer_name: Optional[str] = None,
        dtype: Optional[Union[str, torch.dtype]] = None,
        device: Optional[Union[str, torch.device]] = None,
        trust_remote_code: bool = False,
        backend: str = "torch",
        backend_precision: str = "fp32",
        backbone_only: bool = False,
        inference_precision: str = "auto",
        inference_compile: str = "auto",
        **settings: Any,
    ) -> "RetrievalModel":
        """Load a model saved by this library, a plain transformers folder (or another library's, where the kind
        reads it) or a LoRA adapter folder. ``settings`` are config fields; those left None come from the saved
        config, else from the kind's defaults. ``use_lora`` adds fresh adapters; ``lora_path`` loads trained ones.

        ``backend``: ``torch`` | ``onnx`` (ONNX Runtime) | ``openvino``, the last two for CPU inference of dense
        embedders and cross-encoders, with ``backend_precision`` ``fp32`` | ``int8`` | ``bf16`` (openvino only);
        see :mod:`retrievals.models.backends`.

        ``inference_precision``: ``auto`` (bf16 autocast on CUDA, exact float32 on CPU) | ``fp32`` | ``bf16`` |
        ``fp16``; see :mod:`retrievals.models.precision`. ``inference_compile``: ``auto`` (the batched inference loop
        compiled with CUDA graphs on a GPU, eager on CPU) | ``on`` | ``off``; see :mod:`retrievals.models.compiled`.

        ``backbone_only=True`` takes only the transformer weights of a folder this library saved as another kind
        (a fine-tuned embedder's encoder to start a cross-encoder or ColBERT, say): the head and every setting
        start fresh, as from a plain transformers folder."""
        from ..utils import LOADING, resolve_device, resolve_dtype
        from .backends import check_backend, load_backend

        if backbone_only and (lora_path or is_lora_dir(check_model_path(model_name_or_path))):
            raise UsageError(f"{model_name_or_path}: backbone_only takes full transformer weights, not a LoRA adapter; "
                             "use the merged copy (--save_merged) of that run.")
        check_inference_precision(inference_precision)
        check_inference_compile(inference_compile)
        if backend != "torch" and inference_compile == "on":
            raise UsageError(f"inference_compile='on' compiles the torch backbone; backend {backend!r} runs its own graph.")
        if backend != "torch" and inference_precision not in ("auto", "fp32"):
            raise UsageError(f"inference_precision={inference_precision!r} is for the torch backend; backend {backend!r} "
                             "takes backend_precision (fp32 | int8 | bf16).")
        checked = check_model_path(model_name_or_path)
        kind = cls if backbone_only else cls._kind_for(checked)
        requested = settings.pop("model_type", None) if "model_type" in cls.accepted_and_ignored else None
        if requested is not None:  # it was ignored: model_type="sparse" loaded a dense model, silently
            kind = cls._requested_kind(requested, kind, checked, backbone_only)
        if kind is not cls:
            return kind.from_pretrained(model_name_or_path, use_lora=use_lora, lora_path=lora_path, lora_r=lora_r,
                                        lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                        lora_target_modules=lora_target_modules, tokenizer_name=tokenizer_name, dtype=dtype,
                                        device=device, trust_remote_code=trust_remote_code, backend=backend,
                                        backend_precision=backend_precision, inference_precision=inference_precision,
                                        inference_compile=inference_compile, **settings)
        check_backend(cls, backend, backend_precision, device, dtype,
                      lora=bool(use_lora or lora_path or is_lora_dir(model_name_or_path)))
        fields = {f.name for f in dataclasses.fields(cls.config_class)} - cls.internal_fields
        unknown = set(settings) - fields - cls.accepted_and_ignored
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained() got unexpected keyword arguments {sorted(unknown)}; known: {sorted(fields)}")
        overrides = {k: v for k, v in settings.items() if k in fields}
        path = checked
        # the whole read under the folder's lock: a save committing meanwhile would mix its files with the old ones
        with folder_lock(path) if os.path.isdir(path) else contextlib.nullcontext():
            if lora_path:
                lora_path = check_model_path(lora_path, "LoRA adapter")
            if tokenizer_name and os.path.exists(tokenizer_name):
                tokenizer_name = check_model_path(tokenizer_name, "tokenizer")
            config, source, saved_by_us, base_path, adapter_path = cls._start_config(path, lora_path, backbone_only,
                                                                                     trust_remote_code)
            config.update(**overrides)
            if overrides.get("padding_side") not in (None, "left", "right"):  # before a kind settles it (encoders: right)
                raise UsageError(f"padding_side must be 'left' or 'right', got {overrides['padding_side']!r}.")
            tokenizer = load_tokenizer(tokenizer_name or next(p for p in (source, path, base_path) if p == base_path or has_tokenizer(p)),
                                       trust_remote_code=trust_remote_code)
            cls._finish_config(config, tokenizer, overrides, saved_by_us)
            device_ = resolve_device("cpu" if backend != "torch" else device)
            dtype_ = torch.float32 if backend != "torch" else resolve_dtype(dtype, device_)  # graphs are exported in float32
            with LOADING:
                backbone = cls._load_backbone(base_path, config, dtype_, trust_remote_code)
                backbone = attach_lora(backbone, config, base_path, adapter_path, use_lora, lora_r, lora_alpha, lora_dropout,
                                       lora_target_modules, task_type=cls.lora_task_type)
                model = cls(backbone, tokenizer, config)  # a kind may build fresh layers (a head) here or in _load_extra
                model._load_extra(source, fresh=not saved_by_us)
            try:
                if not cls.per_call_max_length:  # else a call's max_length can still make room
                    model.check_takes_text()
            except UsageError as exc:
                raise UsageError(f"these settings leave no room for any text: {exc}") from None
            model = model.to(device_).eval()  # as transformers does; training switches modes itself
            model.inference_precision = inference_precision
            model.inference_compile = inference_compile
            if backend != "torch":
                model.inference_backend = load_backend(model, path, backend, backend_precision)
            return model

    def save_pretrained(self, path: str | os.PathLike, merge_lora: bool = False, backend: Optional[str] = None,
                        backend_precision: str = "fp32") -> None:
        """Save weights (or the LoRA adapter), tokenizer, ``retrievals_config.json`` and the kind's extra files,
        atomically for the whole folder (see :func:`retrievals.files.atomic_directory`).

        With a LoRA model, ``merge_lora=True`` writes a full merged model instead of the adapter. ``backend``
        (``onnx`` | ``openvino``) also writes that backend's graph of ``backend_precision`` into ``<path>/<backend>/``,
        which ``from_pretrained(path, backend=...)`` then uses instead of exporting."""
        from .backends import BACKENDS, check_backend, save_backend

        config = copy.deepcopy(self.retrieval_config)
        backbone = self.backbone
        lora = is_peft_model(backbone)
        if lora and merge_lora:
            check_mergeable(backbone, "merge_lora")
            backbone = copy.deepcopy(backbone).merge_and_unload()
            lora = False
        if backend is not None or backend_precision != "fp32":
            check_backend(type(self), backend or "torch", backend_precision, lora=lora)
        if path is None or not str(path).strip():  # "" saved into the working folder
            raise UsageError(f"save_pretrained needs a folder path, got {path!r}.")
        path = Path(path).expanduser()  # "~/m" was written to ./~/m, while from_pretrained("~/m") read $HOME/m
        if path.exists() and not path.is_dir():  # was FileExistsError [Errno 17]
            raise UsageError(f"{path}: is a file; save_pretrained writes a folder.")
        dropped = sorted(set(saved_entries(path)) & set(BACKENDS) - {backend})
        if dropped:  # a graph of the earlier save would not match these weights, or another backend is shipped now
            logger.warning("%s: the %s graph of the earlier save there is removed (a save ships at most one backend's "
                           "graph, of the weights it saves); pass backend=... to ship one.", path, ", ".join(dropped))
        with atomic_directory(path, "model") as scratch:
            backbone.save_pretrained(scratch)
            # peft writes a placeholder model card beside an adapter: it would replace a README.md of the user's
            (scratch / "README.md").unlink(missing_ok=True)
            tokenizer_at_rest(self._tokenizer_for_saving(config)).save_pretrained(scratch)
            if lora:
                record_lora_base(scratch, config.lora_base)
            else:
                config.lora_base = None
            self._save_extra(scratch, config, lora)
            config.save(scratch)
            if backend not in (None, "torch"):
                save_backend(self, backbone, scratch, backend, backend_precision)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load weights saved by :meth:`save_pretrained` (resuming a training checkpoint)."""
        if self.inference_backend is not None:  # its graph holds the weights it was loaded with
            raise UsageError(f"A model running on backend {self.inference_backend} cannot load other weights; "
                             "load them with from_pretrained(path, backend=...).")
        load_backbone_weights(self.backbone, path)
        self._load_extra(str(path), fresh=False)

    def check_device(self, device: Any) -> None:
        """``device=`` of an inference call (sentence-transformers' signature): the model's own device, or None.
        Moving the model there would outlast the call and move it under other threads' calls."""
        try:
            asked = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError):  # torch's message lists every device type it knows
            raise UsageError(f"device={device!r} is not a device (cpu, cuda, cuda:1, mps).") from None
        # "cuda" is the model's cuda:0, and "cpu:0" its "cpu" (one CPU device whatever the index)
        if asked is not None and asked != self.device and not (asked.type == self.device.type and (
                asked.index is None or asked.type == "cpu")):
            raise UsageError(f"device={str(device)!r}: this model is on {self.device}; move it first with model.to(...).")

    def inference_autocast(self) -> Optional[torch.dtype]:
        """The dtype inference autocasts to on this model's device at its ``inference_precision`` (None: none, or
        a CPU backend runs it); a cache key (:func:`retrievals.utils.state_digest`) reads it too."""
        if self.inference_backend is not None:
            return None
        return autocast_dtype(getattr(self, "inference_precision", "auto"), self.device, next(self.parameters()).dtype)

    # ------------------------------------------------------------------ the batched inference loop
    def run_batches(self, lengths: List[int], collate: Any, compute: Any, out: torch.Tensor, batch_size: int,
                    max_tokens: Optional[int] = None, desc: str = "", show_progress_bar: bool = False) -> torch.Tensor:
        """Fill ``out`` (rows in input order) batch by batch: inputs grouped by length (:func:`length_batches`),
        ``collate(indices)`` builds a padded batch, ``compute(batch)`` gives its rows; in eval mode whatever the
        model's mode (thread-safe), on the model's device, at its ``inference_precision`` and ``inference_compile``
        (:mod:`retrievals.models.compiled`), float32 out.

        On a GPU, inputs go up from pinned memory without waiting and rows stay on the device until
        ``BATCHES_PER_COPY`` batches are done: one device-to-host copy (the loop's only wait) per that many."""
        from tqdm.auto import tqdm

        from .processing import eval_mode, length_batches

        dev = self.device
        gpu = dev.type == "cuda"
        dtype = self.inference_autocast()
        pending: List[Tuple[List[int], torch.Tensor]] = []

        def flush() -> None:
            if pending:
                out[[i for idx, _ in pending for i in idx]] = torch.cat([rows for _, rows in pending]).cpu()
                pending.clear()

        compiled = self.inference_compiled()
        with eval_mode(self), autocast(dev, dtype):
            for idx in tqdm(length_batches(lengths, batch_size, max_tokens), desc=desc, disable=not show_progress_bar):
                batch = {k: (v.pin_memory().to(dev, non_blocking=True) if gpu else v.to(dev)) for k, v in collate(idx).items()}
                if compiled is None:
                    rows = compute(batch).float()  # one path on every device (on CPU .cpu() is free)
                else:  # rows copied before the lock ends: the graph's next replay, any thread's, overwrites its outputs
                    with compiled.active(batch_size):
                        rows = compute(batch).float().clone()
                pending.append((idx, rows))
                if len(pending) >= BATCHES_PER_COPY:
                    flush()
            flush()
        return out

    def __repr__(self) -> str:
        fields = {f.name: getattr(self.retrieval_config, f.name) for f in dataclasses.fields(self.retrieval_config)}
        return f"{type(self).__name__}({type(self.backbone).__name__}, {fields})"

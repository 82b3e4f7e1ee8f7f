"""Exported graphs: the ONNX export from torch, the key that ties a graph to one model, and where a graph is found.

A graph is looked for in a saved model's ``onnx/`` or ``openvino/`` subfolder (written by
``save_pretrained(path, backend=...)``), then in the cache ``$RETRIEVALS_CACHE/backends/<digest>/``; when neither
holds it, it is made once into the cache. The key covers the backbone's weights and config, the inputs and output,
the backend and the graph precision (the cache digest also the library versions), so a graph is never served to
another model. Cache entries are written into a scratch folder and renamed into place: a reader sees a whole
entry or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import logging
import socket
import tempfile
import threading
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Type

import torch

from ...assets import cache_dir
from ...files import atomic_write_json, give_default_mode
from ...utils import logger, require, state_digest
from .base import Backend, GraphSpec

KEY_NAME = "backend.json"
FORMAT = 3  # raise when how a graph is made changes, so older cache entries are not used
_CONFIG_NOISE = {"transformers_version", "dtype", "torch_dtype", "_name_or_path"}  # say nothing about the graph


def model_key(backbone: torch.nn.Module, spec: GraphSpec) -> Dict[str, Any]:
    """What a graph of this backbone depends on (backend and precision are added by :func:`ensure_graph`)."""
    config = {k: v for k, v in backbone.config.to_dict().items() if k not in _CONFIG_NOISE}
    config_text = json.dumps(config, sort_keys=True, default=str)
    return {"format": FORMAT, "kind": spec.kind, "inputs": list(spec.inputs), "output": spec.output,
            "weights": state_digest(backbone), "config": hashlib.sha256(config_text.encode()).hexdigest()[:16]}


def versions(backend: Type[Backend]) -> Dict[str, str]:
    names = ["retrievals", "torch", "transformers", "onnx", "onnxscript", "onnxruntime", backend.module]
    found = {}
    for name in dict.fromkeys(names):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = ""
    return found


def stored_key(folder: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((folder / KEY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def matches(folder: Path, key: Dict[str, Any]) -> bool:
    """Whether ``folder`` holds the graph of ``key`` (a saved graph stays valid across library versions)."""
    stored = stored_key(folder)
    return stored is not None and {k: v for k, v in stored.items() if k != "versions"} == key


def ensure_graph(backbone: torch.nn.Module, spec: GraphSpec, base: Dict[str, Any], backend: Type[Backend], graph: str,
                 model_dirs: Sequence[Path] = ()) -> Path:
    """The folder holding ``backend``'s graph of precision ``graph``: the ``<backend>`` subfolder of one of
    ``model_dirs`` (saved models) when it holds this graph, else the cache entry, made (exported or converted)
    when missing. Nothing is ever written into ``model_dirs``."""
    key = {**base, "backend": backend.name, "graph": graph}
    for folder in model_dirs:
        if matches(folder / backend.name, key):
            return folder / backend.name
        stored = stored_key(folder / backend.name) or {}
        if stored.get("format") != key["format"] and {k: stored.get(k) for k in ("weights", "graph")} == {
                "weights": key["weights"], "graph": graph}:
            logger.warning("%s holds a graph in an older format (%s; this version makes format %s): using one made in "
                           "the cache; save_pretrained(path, backend=%r) again to ship the new one", folder / backend.name,
                           stored.get("format"), key["format"], backend.name)
    full = {**key, "versions": versions(backend)}
    root = cache_dir() / "backends"
    entry = root / hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:24]
    if matches(entry, key):
        return entry
    root.mkdir(parents=True, exist_ok=True)
    sweep_scratch(root)
    scratch = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH}{socket.gethostname()}-{os.getpid()}-", dir=root))
    give_default_mode(scratch)  # renamed into place, then copied into saved models: not 0o700
    try:
        source = backend.source(graph)
        if source is None:
            logger.warning("Exporting the %s model to ONNX (once; cached in %s)", spec.kind, entry)
            (scratch / "export").mkdir()
            export_onnx(backbone, spec, scratch / "export" / "model.onnx")
            backend.convert(scratch / "export", scratch, graph)
            shutil.rmtree(scratch / "export")
        else:
            origin = ensure_graph(backbone, spec, base, source[0], source[1], model_dirs)
            logger.warning("Making the %s %s graph from the %s %s one (once; cached in %s)", backend.name, graph,
                           source[0].name, source[1], entry)
            backend.convert(origin, scratch, graph)
        atomic_write_json(scratch / KEY_NAME, full)
        try:
            os.rename(scratch, entry)
        except OSError:
            if not matches(entry, key):  # not another process that finished the same entry first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return entry


_SCRATCH = ".tmp-"
_FOREIGN_SCRATCH_AGE = 24 * 3600  # another machine's scratch (a shared cache): its process cannot be asked


def sweep_scratch(root: Path) -> None:
    """Remove the scratch folders of exports whose process was killed (each holds about twice the model, hidden):
    on this machine those whose process is gone, others' after a day. A name without a host and pid is an older
    version's scratch."""
    host = socket.gethostname()
    for entry in root.glob(f"{_SCRATCH}*"):
        parts = entry.name[len(_SCRATCH):].rsplit("-", 2)
        try:
            age = time.time() - entry.stat().st_mtime
        except OSError:  # removed meanwhile by its own process
            continue
        if len(parts) == 3 and parts[1].isdigit() and parts[0] == host:
            gone = not _alive(int(parts[1]))
        else:
            gone = age > _FOREIGN_SCRATCH_AGE
        if gone:
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class _Forward(torch.nn.Module):
    """The backbone call as a module with named tensor inputs and one tensor output, for the exporter."""

    def __init__(self, backbone: torch.nn.Module, spec: GraphSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.spec = spec

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "position_ids": position_ids}
        inputs: Dict[str, Any] = {name: given[name] for name in self.spec.inputs}
        if getattr(self.backbone.config, "use_cache", False):  # decoders: no key/value cache in the graph
            inputs["use_cache"] = False
        return getattr(self.backbone(**inputs), self.spec.output)


def example_inputs(spec: GraphSpec, vocab_size: int) -> Dict[str, torch.Tensor]:
    """A padded batch of 2 x 8 tokens: sizes above 1, so the exporter keeps both axes dynamic."""
    ids = torch.arange(16).view(2, 8) % max(1, min(vocab_size, 100))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    made = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(2, 8, dtype=torch.long),
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    return {name: made[name] for name in spec.inputs}


def export_onnx(backbone: torch.nn.Module, spec: GraphSpec, file: Path) -> None:
    """Export the backbone call with torch's dynamo exporter (``torch.export``: batch and sequence stay dynamic,
    checked by its guards, where TorchScript tracing can silently fix a shape-dependent branch of transformers'
    mask code); weights go to ``model.onnx.data`` beside the graph."""
    require("onnxscript", "onnx")  # the dynamo exporter's translator
    bad = set(spec.inputs) - {"input_ids", "attention_mask", "token_type_ids", "position_ids"}
    if bad:
        raise RuntimeError(f"cannot export inputs {sorted(bad)}")
    with _EXPORTING:
        _export(backbone, spec, file)


_EXPORTING = threading.Lock()  # torch.export traces through process-wide state: two at once fail


def _export(backbone: torch.nn.Module, spec: GraphSpec, file: Path) -> None:
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    module, training = _Forward(backbone, spec), backbone.training
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed": its ops are not ours
    device = next(backbone.parameters()).device  # a model trained on a GPU saves its graph from there
    inputs = {k: v.to(device) for k, v in example_inputs(spec, int(backbone.config.vocab_size)).items()}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name: \w+ will not be used")  # our two axes, renamed
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*deprecated", category=FutureWarning)  # torch-internal
            torch.onnx.export(module.eval(), (), str(file), kwargs=inputs,
                              input_names=list(spec.inputs), output_names=[spec.output], dynamo=True, verbose=False,
                              dynamic_shapes={name: {0: batch, 1: sequence} for name in spec.inputs})
    finally:
        registration.setLevel(level)
        backbone.train(training)  # saving a graph mid-training leaves the model's mode as it was

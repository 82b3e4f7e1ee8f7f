"""ONNX Runtime on CPU: fp32 (the exported graph with ONNX Runtime's transformer fusions) or int8 (dynamic
quantization of that graph's weights).

``fp32`` is torch's dynamo export with its attention, layer norms and GELU fused into ONNX Runtime's kernels by
onnxscript's ``optimize_for_ort`` (ONNX Runtime's own session optimizer does not recognise the dynamo graph's
attention: unfused, it ran at 0.84x the speed of sentence-transformers' TorchScript-exported graph); OpenVINO reads
the fused graph too. ``int8`` is fused alike, but for the attention's projections (see :func:`fuse`), then quantized.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Type

import numpy as np

from ...utils import UsageError, logger, require
from .base import Backend, GraphSpec, cpu_threads
from .graphs import example_inputs

_EXTERNAL_DATA_ABOVE = 1 << 30  # protobuf cannot hold 2 GiB: large quantized graphs keep weights in a side file


class OnnxBackend(Backend):
    name = "onnx"
    extra = "onnx"
    module = "onnxruntime"
    precisions = ("fp32", "int8")

    @classmethod
    def check(cls, precision: str) -> None:
        if precision == "bf16":
            raise UsageError("backend_precision='bf16' is not available with backend='onnx' (ONNX Runtime's CPU "
                             "kernels have no bf16 path); use fp32 or int8, or backend='openvino'.")
        require("onnxruntime", cls.extra)

    @classmethod
    def source(cls, graph: str) -> Optional[Tuple[Type[Backend], str]]:
        return None  # both from torch's export: they are fused differently

    @classmethod
    def convert(cls, source: Path, out: Path, graph: str) -> None:
        if graph == "fp32":
            fuse(source, out)
            return
        with tempfile.TemporaryDirectory(dir=out) as fused:  # inside the entry's scratch folder
            fuse(source, Path(fused), for_int8=True)
            quantize(Path(fused), out)

    def __init__(self, folder: Path, spec: GraphSpec, precision: str) -> None:
        super().__init__(folder, spec, precision)
        ort = require("onnxruntime", self.extra)
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads()  # ONNX Runtime's own default; set so it is the documented one
        options.inter_op_num_threads = 1  # one graph branch at a time: a transformer has no parallel branches
        options.log_severity_level = 3  # errors only: its optimizer's notes are noise for users
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def run(self, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.spec.output], feeds)[0]  # InferenceSession.run is thread-safe


def fuse(source: Path, out: Path, for_int8: bool = False) -> None:
    """The export in fewer, fused kernels (attention, skip + layer norm, bias + GELU). ``for_int8``: the query, key
    and value projections stay three matrix products, which dynamic quantization makes int8, instead of joining the
    fp32 weights of one Attention kernel (int8 MiniLM encoded passages 1.1x faster so, at
    ``benchmarks/cpu_backends.py``'s settings; fp32 is faster with the one kernel). The fused graph is run against
    the export on a padded example batch; where the fusion pass fails on an architecture, or its graph does not
    give the export's outputs (within 1e-4), the export is kept as it is (slower, same outputs), with a warning."""
    ir = require("onnx_ir", OnnxBackend.extra)  # onnxscript's graph representation (installed with it)
    fusions = require("onnxscript.rewriter.ort_fusions", OnnxBackend.extra)
    try:
        model, counts = _optimize_for_ort(fusions, ir.load(str(source / "model.onnx")), keep_projections=for_int8)
        ir.save(model, str(out / "model.onnx"), external_data="model.onnx.data")
        difference = _largest_difference(source, out)
        if not difference <= 1e-4:  # also nan
            raise ValueError(f"the fused graph's outputs differ from the export's by {difference:.2g}")
    except Exception as exc:  # an optimizer's failure is not the user's: the unfused graph computes the same
        logger.warning("ONNX Runtime fusions not used (%s: %s); running the unfused export (slower, same outputs)",
                       type(exc).__name__, exc)
        for name in ("model.onnx", "model.onnx.data"):  # what the fused save may have written
            (out / name).unlink(missing_ok=True)
        for file in source.iterdir():
            shutil.copy2(file, out / file.name)
        return
    logger.info("ONNX Runtime fusions: %s", {k: v for k, v in counts.items() if v})


_FUSING = threading.Lock()  # one fusion pass at a time: the int8 one swaps a step of onnxscript's pipeline


def _optimize_for_ort(fusions: Any, model: Any, keep_projections: bool) -> Tuple[Any, Dict[str, int]]:
    """onnxscript's ``optimize_for_ort``; ``keep_projections``: without its last attention step (merging the
    projections into one Attention kernel). Where a later onnxscript has no such step to leave out, the full pass."""
    core = sys.modules.get("onnxscript.rewriter.ort_fusions._core")
    with _FUSING:
        if not keep_projections or not hasattr(core, "fuse_attention"):
            return fusions.optimize_for_ort(model)
        merge = core.fuse_attention
        core.fuse_attention = lambda *args, **kwargs: 0
        try:
            return fusions.optimize_for_ort(model)
        finally:
            core.fuse_attention = merge


def _largest_difference(first: Path, second: Path) -> float:
    """The largest difference between two graphs' outputs on the exporter's padded example batch (real tokens only:
    what pads hold is never read)."""
    ort = require("onnxruntime", OnnxBackend.extra)
    outputs = []
    for folder in (first, second):
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        names = tuple(i.name for i in session.get_inputs())
        feeds = {k: v.numpy() for k, v in example_inputs(GraphSpec("", names, ""), 100).items()}
        outputs.append(session.run(None, feeds)[0])
    a, b = outputs
    if a.ndim == 3:  # per token: the real ones
        keep = feeds["attention_mask"].astype(bool)
        a, b = a[keep], b[keep]
    return float(np.abs(a - b).max())


def quantize(source: Path, out: Path) -> None:
    """int8: weights of MatMul/Gemm stored as int8 with a scale per output channel (all-MiniLM-L6-v2 on AIA-BDE
    held-out lost 0.007 nDCG@10 so, more with one scale per tensor: benchmarks/cpu_backends.py), activations
    quantized per batch at run time (no calibration data needed; ``onnxruntime.quantization.quantize_dynamic``)."""
    quantization = require("onnxruntime.quantization", OnnxBackend.extra)
    size = sum(f.stat().st_size for f in source.iterdir() if f.name.startswith("model.onnx"))
    # It advises pre-processing through logging.warning, which would install a root handler in the user's
    # process (basicConfig); its symbolic shape inference fails on dynamo-exported graphs, so the advice is moot.
    root, quiet = logging.getLogger(), logging.NullHandler()
    root.addHandler(quiet)
    try:
        quantization.quantize_dynamic(source / "model.onnx", out / "model.onnx", weight_type=quantization.QuantType.QInt8,
                                      per_channel=True, use_external_data_format=size > _EXTERNAL_DATA_ABOVE)
    finally:
        root.removeHandler(quiet)

"""ONNX Runtime on CPU: fp32 (the exported graph) or int8 (dynamic quantization of its weights)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional, Tuple, Type

import numpy as np

from ...utils import UsageError, require
from .base import Backend, GraphSpec, cpu_threads

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
        return None if graph == "fp32" else (cls, "fp32")

    @classmethod
    def convert(cls, source: Path, out: Path, graph: str) -> None:
        """int8: weights of MatMul/Gemm stored as int8, activations quantized per batch at run time (no
        calibration data needed; ``onnxruntime.quantization.quantize_dynamic``)."""
        quantization = require("onnxruntime.quantization", cls.extra)
        size = sum(f.stat().st_size for f in source.iterdir() if f.name.startswith("model.onnx"))
        # It advises pre-processing through logging.warning, which would install a root handler in the user's
        # process (basicConfig); its symbolic shape inference fails on dynamo-exported graphs, so the advice is moot.
        root, quiet = logging.getLogger(), logging.NullHandler()
        root.addHandler(quiet)
        try:
            quantization.quantize_dynamic(source / "model.onnx", out / "model.onnx", weight_type=quantization.QuantType.QInt8,
                                          use_external_data_format=size > _EXTERNAL_DATA_ABOVE)
        finally:
            root.removeHandler(quiet)

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

"""OpenVINO on CPU: fp32, bf16 (a runtime setting over the fp32 graph, where the CPU has bf16 instructions) or int8
(the ONNX Runtime fp32 or int8 graph converted; no NNCF)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, Optional, Tuple, Type

import numpy as np

from ...utils import UsageError, require
from .base import Backend, GraphSpec, cpu_threads
from .onnx import OnnxBackend


def _core():
    return require("openvino", "openvino").Core()


class OpenVINOBackend(Backend):
    name = "openvino"
    extra = "openvino"
    module = "openvino"
    precisions = ("fp32", "int8", "bf16")

    @classmethod
    def check(cls, precision: str) -> None:
        capabilities = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision == "bf16" and "BF16" not in capabilities:
            raise UsageError("backend_precision='bf16': this CPU has no bf16 instructions (OpenVINO would run "
                             "fp32 anyway); use fp32 or int8.")

    @classmethod
    def source(cls, graph: str) -> Optional[Tuple[Type[Backend], str]]:
        return OnnxBackend, graph

    @classmethod
    def convert(cls, source: Path, out: Path, graph: str) -> None:
        ov = require("openvino", cls.extra)
        # read through the ONNX frontend of the runtime (no model-conversion tool, so no telemetry);
        # compress_to_fp16=False: the default stores weights in fp16, which would change fp32 results
        ov.save_model(_core().read_model(str(source / "model.onnx")), str(out / "model.xml"), compress_to_fp16=False)

    def __init__(self, folder: Path, spec: GraphSpec, precision: str) -> None:
        super().__init__(folder, spec, precision)
        core = _core()
        # The hint is always set: on CPUs with bf16 instructions OpenVINO runs in bf16 unless told f32.
        # LATENCY: one stream, all threads on one batch; callers run one batch at a time (encode loops over
        # batches, the server merges requests into batches), where THROUGHPUT's parallel streams would sit idle.
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": cpu_threads()}
        self.compiled = core.compile_model(core.read_model(str(folder / "model.xml")), "CPU", config)
        self._local = threading.local()  # an infer request serves one call at a time: one per thread

    def run(self, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request.infer(feeds)[self.compiled.output(0)]

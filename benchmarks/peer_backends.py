"""The peers' CPU backends, served to ``cpu_backends.py --peers PYTHON`` from their own environment.

sentence-transformers' ONNX and OpenVINO backends need optimum / optimum-intel, which pin transformers < 5, and
fastembed brings its own stack: so they run in a second virtual environment, in this worker process, which
``cpu_backends.py`` drives over stdin/stdout (one JSON line each way). The two processes take turns, one encoding
while the other waits, so the timings compare as if in one process.

    python -m venv PEERS && PEERS/bin/pip install torch==2.13.0 'transformers<5' \\
        'sentence-transformers[onnx,openvino]' fastembed
    .venv/bin/python benchmarks/cpu_backends.py --peers PEERS/bin/python

Protocol: started as ``peer_backends.py MODEL_DIR TEXTS_JSON WORK_DIR`` (``TEXTS_JSON``: {"docs", "queries",
"held_out": [str]}); it prints {"ready": [names], "skipped": {name: why}, "versions": {...}}, then answers each
{"run": name, "texts": "docs" | "queries" | "held_out", "query": bool, "save": path or null} with {"seconds": s}
after encoding (and saving float32 embeddings to ``save`` as .npy when given). The model folder is copied into
WORK_DIR first: the exporters write their graphs beside the weights.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

BATCH, Q_LEN, D_LEN = 32, 64, 256


def cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def sentence_transformers_encoders(model_dir: Path, skipped: Dict[str, str]) -> Dict[str, Callable[..., np.ndarray]]:
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    def wrap(model: Any) -> Callable[..., np.ndarray]:
        def encode(texts: list, query: bool) -> np.ndarray:
            model.max_seq_length = Q_LEN if query else D_LEN
            return model.encode(texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True)
        return encode

    out: Dict[str, Callable[..., np.ndarray]] = {}
    onnx = SentenceTransformer(str(model_dir), backend="onnx", device="cpu")  # exported in memory
    if not (model_dir / "onnx" / "model.onnx").is_file():
        onnx.save_pretrained(str(model_dir))  # writes onnx/model.onnx, which the int8 export and fastembed read
    out["sentence-transformers onnx fp32"] = wrap(onnx)
    flags = cpu_flags()
    config = "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"
    try:
        export_dynamic_quantized_onnx_model(onnx, config, str(model_dir))
        out["sentence-transformers onnx int8"] = wrap(SentenceTransformer(
            str(model_dir), backend="onnx", device="cpu", model_kwargs={"file_name": f"onnx/model_qint8_{config}.onnx"}))
    except Exception as exc:  # reported, not fatal
        skipped["sentence-transformers onnx int8"] = f"{type(exc).__name__}: {exc}"[:300]
    for name, hint in (("openvino fp32", {"INFERENCE_PRECISION_HINT": "f32"}), ("openvino default", {})):
        try:
            out[f"sentence-transformers {name}"] = wrap(SentenceTransformer(
                str(model_dir), backend="openvino", device="cpu", model_kwargs={"ov_config": hint} if hint else {}))
        except Exception as exc:
            skipped[f"sentence-transformers {name}"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def fastembed_encoder(model_dir: Path, skipped: Dict[str, str]) -> Dict[str, Callable[..., np.ndarray]]:
    """fastembed on the same ONNX graph (the one sentence-transformers exported), mean pooling, normalised."""
    try:
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        TextEmbedding.add_custom_model(model="local/all-MiniLM-L6-v2", pooling=PoolingType.MEAN, normalization=True,
                                       sources=ModelSource(hf="local/all-MiniLM-L6-v2"), dim=384, model_file="onnx/model.onnx")
        models = {length: TextEmbedding(model_name="local/all-MiniLM-L6-v2", specific_model_path=str(model_dir), max_length=length)
                  for length in (Q_LEN, D_LEN)}
    except Exception as exc:
        skipped["fastembed"] = f"{type(exc).__name__}: {exc}"[:300]
        return {}

    def encode(texts: list, query: bool) -> np.ndarray:
        return np.stack(list(models[Q_LEN if query else D_LEN].embed(texts, batch_size=BATCH)))
    # fastembed 0.9 keeps its own cut (128 for this model) whatever max_length says: name the run by what it does
    tokenizer = getattr(getattr(models[D_LEN], "model", None), "tokenizer", None)
    cut = (tokenizer.truncation or {}).get("max_length") if tokenizer is not None else None
    return {"fastembed onnx fp32" + (f" (documents cut at {cut} tokens)" if cut and cut != D_LEN else ""): encode}


def main() -> int:
    model_src, texts_file, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    model_dir = work / "peer-model"
    if not model_dir.exists():
        shutil.copytree(model_src, model_dir)
    texts = json.loads(texts_file.read_text())
    skipped: Dict[str, str] = {}
    encoders = sentence_transformers_encoders(model_dir, skipped)
    encoders.update(fastembed_encoder(model_dir, skipped))
    versions = {}
    for name in ("sentence_transformers", "transformers", "optimum", "onnxruntime", "openvino", "fastembed", "torch"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            pass
    print(json.dumps({"ready": list(encoders), "skipped": skipped, "versions": versions}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        start = time.perf_counter()
        vectors = encoders[command["run"]](texts[command["texts"]], command["query"])
        seconds = time.perf_counter() - start
        if command.get("save"):
            np.save(command["save"], np.asarray(vectors, dtype=np.float32))
        print(json.dumps({"seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

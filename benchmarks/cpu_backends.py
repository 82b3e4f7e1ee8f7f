"""CPU inference backends side by side: encode speed and quality of each, one process, the runs taking turns.

    .venv/bin/python benchmarks/cpu_backends.py [--rounds 5] [--out benchmarks/results/cpu_backends.json]

all-MiniLM-L6-v2 (zero-shot, from PyPI) on AIA-BDE: passages are the 855 FAQ documents at 256 tokens, queries the
held-out and training paraphrases (the first 2,000) at 64, batch 32. Runs: sentence-transformers (torch fp32), ours
on torch fp32 and bf16, ONNX Runtime fp32 and int8 (dynamic quantization), OpenVINO fp32, bf16 (where the CPU has
it) and int8. Each is timed in rounds that take turns (best and median round); quality is nDCG@10 / MRR@10 on the
held-out queries retrieving from all FAQs, each run encoding both sides. Graph export is done before timing and
reported apart (``export_seconds``). Vector lengths are reported too (we normalise in float32 whatever the backend).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from retrievals import AutoModelForEmbedding, __version__  # noqa: E402
from retrievals.assets import fetch  # noqa: E402
from retrievals.data.aia_bde import parse_aia_bde, split_by_faq  # noqa: E402
from retrievals.evaluation.metrics import evaluate_run  # noqa: E402
from retrievals.index.exact import exact_search  # noqa: E402
from timing import take_turns  # noqa: E402

BATCH, Q_LEN, D_LEN, N_QUERIES = 32, 64, 256, 2000


def quality(split: Any, q: np.ndarray, d: np.ndarray) -> Dict[str, float]:
    doc_ids, query_ids = list(split.corpus), list(split.test_queries)
    scores, idx = exact_search(q, d, top_k=100)
    run = {qid: {doc_ids[j]: float(s) for s, j in zip(scores[i], idx[i])} for i, qid in enumerate(query_ids)}
    metrics = evaluate_run(run, split.test_qrels, (10,))
    return {"ndcg@10": round(metrics["ndcg@10"], 4), "mrr@10": round(metrics["mrr@10"], 4)}


def start_peers(python: str, model_path: str, texts: Dict[str, list], encoders: Dict[str, Callable[..., np.ndarray]]) -> dict:
    """Start peer_backends.py under ``python`` and add its encoders: each call asks the worker to encode one of the
    shared text lists (by name, so no texts cross the pipe while timed) and, for quality, to save the vectors."""
    import subprocess
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="peers-"))
    (work / "texts.json").write_text(json.dumps(texts))
    worker = subprocess.Popen([python, str(Path(__file__).resolve().parent / "peer_backends.py"), model_path,
                               str(work / "texts.json"), str(work)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    info = json.loads(worker.stdout.readline())
    names = {id(v): k for k, v in texts.items()}
    saving = [True]  # the quality pass saves the vectors; the timed rounds do not

    def peer(name: str) -> Callable[..., np.ndarray]:
        def encode(batch: list, query: bool = False) -> Any:
            save = str(work / "vectors.npy") if saving[0] else None
            worker.stdin.write(json.dumps({"run": name, "texts": names[id(batch)], "query": query, "save": save}) + "\n")
            worker.stdin.flush()
            json.loads(worker.stdout.readline())
            return np.load(save) if save else None
        return encode

    for name in info["ready"]:
        encoders[name] = peer(name)
    print("peers:", json.dumps(info), flush=True)
    info["stop_saving"] = lambda: saving.__setitem__(0, False)
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cpu_backends.json"))
    p.add_argument("--peers", default=None, help="Python of a second environment with sentence-transformers[onnx,openvino] "
                                                 "and fastembed (see peer_backends.py): their backends join the turns.")
    opts = p.parse_args()
    torch.manual_seed(0)
    model_path = str(fetch("all-MiniLM-L6-v2"))
    split = split_by_faq(parse_aia_bde(str(fetch("aia-bde"))), 0.3, 0)
    docs = list(split.corpus.values())
    queries = (list(split.test_queries.values()) + list(split.train_queries.values()))[:N_QUERIES]
    held_out = [split.test_queries[q] for q in split.test_queries]

    from sentence_transformers import SentenceTransformer

    theirs = SentenceTransformer(model_path, device="cpu")
    theirs.max_seq_length = D_LEN
    encoders: Dict[str, Callable[..., np.ndarray]] = {
        "sentence-transformers torch fp32": lambda texts, query=False: theirs.encode(
            texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True)}
    exports: Dict[str, float] = {}
    # "torch bf16": bf16 weights (dtype), not inference_precision="bf16" (float32 weights under autocast)
    variants = [("torch", "fp32", {}), ("torch", "bf16", {"dtype": torch.bfloat16}), ("onnx", "fp32", {}),
                ("onnx", "int8", {}), ("openvino", "fp32", {}), ("openvino", "bf16", {}), ("openvino", "int8", {})]
    skipped: Dict[str, str] = {}
    for backend, precision, extra in variants:
        name = f"retrievals {backend} {precision}"
        start = time.perf_counter()
        try:
            kwargs = dict(extra) if backend == "torch" else {"backend": backend, "backend_precision": precision}
            model = AutoModelForEmbedding.from_pretrained(model_path, query_max_length=Q_LEN, document_max_length=D_LEN,
                                                          **kwargs)
        except Exception as exc:  # a precision this CPU lacks (bf16) is reported, not fatal
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        exports[name] = round(time.perf_counter() - start, 1)
        encoders[name] = (lambda m: lambda texts, query=False: m.encode(texts, batch_size=BATCH, is_query=query))(model)

    peer_info: Dict[str, Any] = {}
    if opts.peers:
        peer_info = start_peers(opts.peers, model_path, {"docs": docs, "queries": queries, "held_out": held_out}, encoders)
        skipped.update(peer_info.get("skipped", {}))

    results: Dict[str, Any] = {}
    for name, encode in encoders.items():  # quality first (also warms every run up)
        q = np.asarray(encode(held_out, query=True), dtype=np.float32)
        d = np.asarray(encode(docs), dtype=np.float32)
        norms = np.linalg.norm(d, axis=1)
        results[name] = {**quality(split, q, d), "norm_min": round(float(norms.min()), 5),
                         "norm_max": round(float(norms.max()), 5)}
        print(name, json.dumps(results[name]), flush=True)

    if peer_info:
        peer_info.pop("stop_saving")()

    def timed(encode: Callable[..., Any], texts: list, query: bool) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            encode(texts, query=query)
            return len(texts) / (time.perf_counter() - start)
        return run

    passages = take_turns({n: timed(e, docs, False) for n, e in encoders.items()}, opts.rounds)
    query_rates = take_turns({n: timed(e, queries, True) for n, e in encoders.items()}, opts.rounds)
    for name in encoders:
        results[name].update(passages_per_s=passages[name], passages_per_s_median=passages["median"][name],
                             queries_per_s=query_rates[name], queries_per_s_median=query_rates["median"][name],
                             export_or_load_seconds=exports.get(name))
        print(f"{name:<36} passages/s {passages[name]:>7.1f}  queries/s {query_rates[name]:>7.1f}  "
              f"nDCG@10 {results[name]['ndcg@10']:.4f}", flush=True)

    import onnxruntime
    import openvino
    import sentence_transformers
    import transformers

    out = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "versions": {"retrievals": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                        "sentence_transformers": sentence_transformers.__version__,
                        "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__},
           "settings": {"model": "all-MiniLM-L6-v2", "batch": BATCH, "query_max_length": Q_LEN,
                        "document_max_length": D_LEN, "passages": len(docs), "queries": len(queries),
                        "rounds": opts.rounds},
           "results": results, "skipped": skipped, "peer_versions": peer_info.get("versions")}
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality per byte and per millisecond: BM25, dense, sparse (SPLADE), hybrid, Matryoshka and int8/binary indexes,
on AIA-BDE held-out FAQs and Vaswani.

    python benchmarks/compact_sparse.py --work outputs/compact            # trains what is missing, then measures
    python benchmarks/compact_sparse.py --work outputs/compact --train_only
    python benchmarks/compact_sparse.py --work outputs/compact --models plain sparse --update   # some rows again

Training (skipped for a model already in ``--work``) runs the library's own CLI, and the commands are recorded in the
results: the AIA-BDE training split of the demo (FAQs split 70/30 with seed 0, 4 hard negatives per query mined by
zero-shot all-MiniLM-L6-v2 among training FAQs), one epoch, batch 32, queries 64 / documents 128 tokens:

* ``plain``: all-MiniLM-L6-v2, InfoNCE (temperature 0.05, lr 5e-5): the demo's recipe.
* ``matryoshka``: the same plus ``--matryoshka_dims 384 256 128 64``; ``matryoshka_small``: also
  ``--matryoshka_weights 1 1 2 4`` (the small sizes weigh more); ``matryoshka_3ep``: three epochs instead of one;
  ``matryoshka_lr2e-4_3ep``: three epochs at learning rate 2e-4; ``matryoshka_distill_3ep``: three epochs with
  ``--matryoshka_distill 1``; ``matryoshka_pca_distill_3ep``: the same starting from ``--pca_rotation`` (a Dense
  layer set to the principal axes of the training texts' embeddings); ``matryoshka_pca_distill_vg_3ep``: that recipe
  with ``train_vg.jsonl`` (the back-translated questions of the training FAQs as 852 more queries);
  ``matryoshka_teacher_distill_3ep``: ``matryoshka_distill_3ep`` plus ``--teacher_model`` the results table's fine-tuned
  multilingual-e5-small (``outputs/table/embed_e5``, from ``benchmarks/results_table.py --run embed_e5``) at
  ``--teacher_temperature 0.02``; ``matryoshka_distill_hn64_3ep``: ``matryoshka_distill_3ep``'s recipe on
  ``train_hn64.jsonl``, whose negatives ``matryoshka_distill_3ep`` itself mined at 64 dimensions
  (``retrievals.pipelines.build_hn --truncate_dim 64``, see ``MINED``); ``only64_3ep``: the loss at 64 dimensions only, three epochs (a bound on the first
  64 dimensions with this data, not a model that serves 384; see ``MATRYOSHKA``); ``e5_matryoshka_distill``: another
  backbone, multilingual-e5-small at the results table's e5 settings (lr 2e-5, temperature 0.02) with
  ``--matryoshka_distill 1``, one epoch, compared with the results table's plain e5 fine-tune (``E5_PLAIN``).
* ``plain_pca``: no training; ``plain`` with ``AutoModelForEmbedding.fit_pca`` over ``train.jsonl``'s queries and
  documents (a rotation: its 384-d scores unchanged), for the truncations of a model trained without Matryoshka.
* ``sparse``: the tiny SPLADE (``retrievals.assets`` ``splade-tiny``, provenance unknown), ``--model_type sparse``.

Measured for each dataset: nDCG@10 / recall@100, bytes per document in memory and on disk (the saved index's data
over the number of documents; a memory-mapped int8 rescoring file counts on disk only) and
query latency (the search only, the queries already encoded, one query at a time, median over the queries; encoding
costs are reported apart as queries/s). Writes ``benchmarks/results/compact_sparse.json`` and a PNG of nDCG@10
against bytes per vector. Vaswani has no training split: the AIA-BDE fine-tunes are evaluated there as they are
(a domain and language shift), beside zero-shot models. Every model reads queries at 64 tokens and documents at 128,
as in training and the demo.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from retrievals import AutoModelForEmbedding, __version__  # noqa: E402
from retrievals.assets import fetch  # noqa: E402
from retrievals.data.aia_bde import BACK_TRANSLATION_TAGS, QUERY_TAGS, parse_aia_bde, split_by_faq  # noqa: E402
from retrievals.evaluation.metrics import evaluate_run  # noqa: E402
from retrievals.index import BM25Index, SparseIndex, build_dense_index  # noqa: E402
from retrievals.index.hybrid import reciprocal_rank_fusion, weighted_score_fusion  # noqa: E402
from retrievals.pipelines import demo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIMS = (384, 256, 128, 64)
COMMON = ["--num_train_epochs", "1", "--per_device_train_batch_size", "32", "--train_group_size", "2",
          "--query_max_length", "64", "--document_max_length", "128", "--warmup_steps", "0.1", "--logging_steps", "10",
          "--save_steps", "20", "--save_total_limit", "1", "--seed", "42", "--report_to", "none"]


MATRYOSHKA = {  # run name: (label in the results, its colour in the PNG, flags beyond the plain recipe's)
    "matryoshka": ("MiniLM Matryoshka", "tab:green", []),
    "matryoshka_small": ("MiniLM Matryoshka 1:1:2:4", "tab:olive", ["--matryoshka_weights", "1", "1", "2", "4"]),
    "matryoshka_3ep": ("MiniLM Matryoshka 3 epochs", "tab:purple", ["--num_train_epochs", "3"]),
    "matryoshka_lr2e-4_3ep": ("MiniLM Matryoshka lr 2e-4, 3 epochs", "tab:orange",
                              ["--learning_rate", "2e-4", "--num_train_epochs", "3"]),
    "matryoshka_distill_3ep": ("MiniLM Matryoshka + self-distillation, 3 epochs", "tab:red",
                               ["--matryoshka_distill", "1", "--num_train_epochs", "3"]),
    "matryoshka_pca_distill_3ep": ("MiniLM PCA rotation + Matryoshka + self-distillation, 3 epochs", "tab:cyan",
                                   ["--pca_rotation", "true", "--matryoshka_distill", "1", "--num_train_epochs", "3"]),
    # the same with the back-translated questions of the training FAQs as extra training queries (train_vg.jsonl)
    "matryoshka_pca_distill_vg_3ep": ("MiniLM PCA rotation + Matryoshka + self-distillation + back-translations, 3 epochs",
                                      "tab:pink", ["--pca_rotation", "true", "--matryoshka_distill", "1",
                                                   "--num_train_epochs", "3", "--train_data", "{work}/train_vg.jsonl"]),
    # self-distillation plus a teacher: the fine-tuned multilingual-e5-small of the results table (TEACHER), its
    # ranking of each batch's documents learnt at every size (--teacher_model; its training temperature, 0.02)
    "matryoshka_teacher_distill_3ep": ("MiniLM Matryoshka + self-distillation + e5 teacher, 3 epochs", "navy",
                                       ["--matryoshka_distill", "1", "--num_train_epochs", "3", "--teacher_model",
                                        "{teacher}", "--teacher_temperature", "0.02"]),
    # matryoshka_distill_3ep's recipe on negatives that its own first 64 dimensions confuse (train_hn64.jsonl, MINED):
    # the small size's errors as the training signal, the 384 trained on them too
    "matryoshka_distill_hn64_3ep": ("MiniLM Matryoshka + self-distillation, negatives mined at 64, 3 epochs", "gold",
                                    ["--matryoshka_distill", "1", "--num_train_epochs", "3",
                                     "--train_data", "{work}/train_hn64.jsonl"]),
    # the loss at 64 dimensions only: how far the first 64 can go with this data (its 384 is not trained)
    "only64_3ep": ("MiniLM trained at 64 only, 3 epochs", "tab:gray", ["--matryoshka_dims", "64", "--num_train_epochs", "3"]),
    # another backbone: multilingual-e5-small (384 dimensions too; this corpus is Portuguese, MiniLM an English
    # model) with the results table's e5 settings (lr 2e-5, temperature 0.02) and self-distillation, one epoch; its
    # plain fine-tune is the results table's (E5_PLAIN)
    "e5_matryoshka_distill": ("e5 Matryoshka + self-distillation", "darkgreen",
                              ["--model_name_or_path", "{e5}", "--learning_rate", "2e-5", "--temperature", "0.02",
                               "--matryoshka_distill", "1"]),
}
# training files mined by a model trained here (the library's build_hn): file: (the miner, build_hn flags). The miner
# at 64 dimensions ranks train.jsonl's documents; 4 negatives are drawn from each query's ranks 2 to 7 (0-based),
# close to train.jsonl's (ranks 3 to 6 of zero-shot MiniLM); only one scoring above the weakest positive is dropped,
# and a query left with none is left out (1 of 2,168 in the 2026-12-02 run)
MINED = {"train_hn64.jsonl": ("matryoshka_distill_3ep", ["--truncate_dim", "64", "--range_for_sampling", "2-8",
                                                         "--negative_number", "4", "--false_negative_ratio", "1.0",
                                                         "--min_negatives", "1"])}
TEACHER = ROOT / "outputs" / "table" / "embed_e5"  # made by: benchmarks/results_table.py --run embed_e5
# the plain fine-tune a Matryoshka recipe's 64 dimensions are compared with (truncated to 64), by backbone: the
# MiniLM one is trained here; e5's is the results table's (the same recipe and split, its negatives mined by e5)
E5_PLAIN = ("e5 fine-tuned", TEACHER)


def plain_of(label: str) -> str:
    return E5_PLAIN[0] if label.startswith("e5 ") else "MiniLM fine-tuned"


SERVES_384 = [label for label, _, flags in MATRYOSHKA.values() if "--matryoshka_dims" not in flags]
# no training: the plain fine-tune with AutoModelForEmbedding.fit_pca over its training file's texts (a rotation that
# leaves its 384-d scores as they were; what a user can do to a model trained without Matryoshka)
POSTHOC_PCA = ("plain_pca", "MiniLM fine-tuned + fit_pca afterwards", "tab:brown")


def training_commands(work: Path) -> Dict[str, List[str]]:
    minilm, splade, train = str(fetch("all-MiniLM-L6-v2")), str(fetch("splade-tiny")), str(work / "train.jsonl")
    embed = [sys.executable, "-m", "retrievals.pipelines.embed", "--do_train", "--train_data", train]
    plain = ["--model_name_or_path", minilm, "--learning_rate", "5e-5", "--temperature", "0.05", *COMMON]
    commands = {"plain": embed + ["--output_dir", str(work / "plain"), *plain]}
    places = {"{work}": lambda: str(work), "{teacher}": lambda: str(TEACHER),  # resolved only where a flag names one
              "{e5}": lambda: str(fetch("multilingual-e5-small"))}             # (not once for every flag of every run)

    def filled(flag: str) -> str:
        for key, value in places.items():
            if key in flag:
                flag = flag.replace(key, value())
        return flag

    for name, (_, _, flags) in MATRYOSHKA.items():  # later flags win (argparse), so a run's own lr / epochs apply
        flags = [filled(flag) for flag in flags]
        commands[name] = embed + ["--output_dir", str(work / name), *plain, "--matryoshka_dims", *map(str, DIMS), *flags]
    commands["sparse"] = embed + ["--model_name_or_path", splade, "--model_type", "sparse", "--output_dir", str(work / "sparse"),
                                  "--learning_rate", "1e-4", *COMMON]
    return commands


def prepare(work: Path) -> None:
    """The demo's training file (same split, same mined negatives), and ``train_vg.jsonl``: the same with the
    back-translations (VG1/VG2) of the training FAQs' questions as more queries (the held-out FAQs untouched: the
    split does not depend on the queries)."""
    for name, tags in (("train.jsonl", QUERY_TAGS), ("train_vg.jsonl", QUERY_TAGS + BACK_TRANSLATION_TAGS)):
        if (work / name).is_file():
            continue
        split = split_by_faq(parse_aia_bde(str(fetch("aia-bde")), tags), 0.3, 0)
        base = AutoModelForEmbedding.from_pretrained(str(fetch("all-MiniLM-L6-v2")), query_max_length=64, document_max_length=128)
        negatives = demo.mine_hard_negatives(base, split, 4, start_rank=3, depth=30)
        tmp = work / f"{name}.tmp"
        demo.write_training_file(split, negatives, tmp)
        os.replace(tmp, work / name)


def fit_pca_afterwards(work: Path) -> Dict[str, Any]:
    """``POSTHOC_PCA``: the plain fine-tune rotated to the principal axes of train.jsonl's queries and documents."""
    name = POSTHOC_PCA[0]
    from retrievals.data import load_records
    from retrievals.pipelines.embed import add_pca_rotation

    if not (work / name / "retrievals_config.json").is_file():
        model = AutoModelForEmbedding.from_pretrained(str(work / "plain"))
        add_pca_rotation(model, load_records(str(work / "train.jsonl")), seed=42)  # what --pca_rotation does
        model.save_pretrained(work / name)
    return {"command": "retrievals.pipelines.embed.add_pca_rotation(AutoModelForEmbedding.from_pretrained(plain), "
                       "load_records(train.jsonl), seed=42)", "train_seconds": None}


def mine_for(work: Path, cmd: List[str]) -> List[str]:
    """The build_hn commands that made the ``MINED`` files ``cmd`` trains on (run now where a file is missing; its
    miner must have been trained: a --models run lists it first)."""
    made = []
    for file, (miner, flags) in MINED.items():
        if str(work / file) not in cmd:
            continue
        mining = [sys.executable, "-m", "retrievals.pipelines.build_hn", "--model_name_or_path", str(work / miner),
                  "--input_file", str(work / "train.jsonl"), "--output_file", str(work / file), *flags]
        if not (work / file).is_file():
            if not (work / miner / "retrievals_config.json").is_file():
                raise SystemExit(f"{file} is mined by {miner}, not trained in {work}: add it to --models before this run")
            print(f"[mine] {file}: {' '.join(mining)}", flush=True)
            subprocess.run(mining, check=True, cwd=ROOT)
        made.append(" ".join(Path(c).name if c == sys.executable else c for c in mining))
    return made


def train(work: Path, names: List[str]) -> Dict[str, Dict[str, Any]]:
    out = {}
    for name, cmd in training_commands(work).items():
        if name not in names:
            continue
        mined = mine_for(work, cmd)
        if (work / name / "retrievals_config.json").is_file():
            print(f"[train] {name}: already in {work / name}", flush=True)
        else:
            print(f"[train] {name}: {' '.join(cmd)}", flush=True)
            start = time.time()
            subprocess.run(cmd, check=True, cwd=ROOT)
            (work / f"{name}.seconds").write_text(f"{time.time() - start:.1f}\n")
        seconds = (work / f"{name}.seconds").read_text().strip() if (work / f"{name}.seconds").is_file() else None
        out[name] = {"command": " ".join(Path(c).name if c == sys.executable else c for c in cmd),
                     "train_seconds": float(seconds) if seconds else None, **({"mined_by": mined} if mined else {})}
    if POSTHOC_PCA[0] in names:
        out[POSTHOC_PCA[0]] = fit_pca_afterwards(work)
    return out



def folder_bytes(index: Any, work: Path) -> Dict[str, int]:
    """Bytes of an index's saved data (its ids and metadata left out: every backend stores the same ones): on disk,
    and in memory once loaded (a memory-mapped rescoring file stays on disk)."""
    import shutil

    from retrievals.index.quantized import RESCORE_FILE

    folder = work / "index-size"
    if folder.exists():
        shutil.rmtree(folder)
    index.save(folder)
    files = [f for f in folder.rglob("*") if f.is_file() and f.name not in {"ids.json", "index_meta.json", "retrievals_files.json"}]
    disk = sum(f.stat().st_size for f in files)
    mapped = sum(f.stat().st_size for f in files if f.name == RESCORE_FILE)
    shutil.rmtree(folder)
    return {"disk": disk, "memory": disk - mapped}


def latency_ms(index: Any, queries: List[Any], top_k: int = 100) -> float:
    """Median milliseconds of one search of one query (queries already encoded)."""
    times = []
    for query in queries[:200]:
        start = time.perf_counter()
        index.search([query] if isinstance(query, (str, dict)) else query[None, :], top_k)
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def truncated(x: np.ndarray, dim: int) -> np.ndarray:
    head = np.ascontiguousarray(x[:, :dim], dtype=np.float32)
    return head / np.linalg.norm(head, axis=1, keepdims=True).clip(min=1e-12)


def encoded(model: Any, name: str, data: Any, cache: Path) -> Dict[str, Any]:
    """Documents and queries of ``data`` encoded by ``model`` (cached under ``cache``), with queries/s."""
    from dataclasses import asdict

    from retrievals.utils import state_digest

    doc_ids, query_ids = list(data.corpus), list(data.queries)
    sparse = hasattr(model, "encode_sparse")
    key = hashlib.sha256(json.dumps([state_digest(model), asdict(model.retrieval_config), data.hash]).encode()).hexdigest()[:16]
    file = cache / f"{name}-{key}.json" if sparse else cache / f"{name}-{key}.npz"  # never another model's vectors
    if file.is_file():
        if sparse:
            saved = json.loads(file.read_text())
            return {"docs": [{int(k): v for k, v in d.items()} for d in saved["docs"]],
                    "queries": [{int(k): v for k, v in q.items()} for q in saved["queries"]], "qps": saved["qps"]}
        saved = np.load(file)
        return {"docs": saved["docs"], "queries": saved["queries"], "qps": float(saved["qps"])}
    encode = model.encode_sparse if sparse else model.encode
    docs = encode([data.corpus[d] for d in doc_ids], batch_size=64)
    start = time.perf_counter()
    queries = encode([data.queries[q] for q in query_ids], is_query=True, batch_size=64)
    qps = round(len(query_ids) / (time.perf_counter() - start), 1)
    cache.mkdir(parents=True, exist_ok=True)
    if sparse:
        file.write_text(json.dumps({"docs": docs, "queries": queries, "qps": qps}))
    else:
        np.savez(file, docs=docs, queries=queries, qps=qps)
    return {"docs": docs, "queries": queries, "qps": qps}


def merged(previous: Dict[str, Any], result: Dict[str, Any]) -> Dict[str, Any]:
    """``--update``: the rows measured now replace the same rows of ``previous`` (dataset and name), which keeps its
    other rows in their places, each with the date it was measured (``measured``); rows new to the file come after.

    >>> old = {"date": "2026-11-30", "training": {"a": 1}, "rows": [{"dataset": "d", "name": "x", "ndcg@10": 0.1},
    ...                                                             {"dataset": "d", "name": "y", "ndcg@10": 0.2}]}
    >>> new = {"date": "2026-12-01", "training": {"b": 2}, "rows": [{"dataset": "d", "name": "y", "ndcg@10": 0.3}]}
    >>> [(r["name"], r["ndcg@10"], r["measured"]) for r in merged(old, new)["rows"]]
    [('x', 0.1, '2026-11-30'), ('y', 0.3, '2026-12-01')]
    >>> sorted(merged(old, new)["training"])
    ['a', 'b']
    """
    fresh = {(r["dataset"], r["name"]): {**r, "measured": result["date"]} for r in result["rows"]}
    rows = [fresh.pop((r["dataset"], r["name"]), None) or {**r, "measured": r.get("measured", previous["date"])}
            for r in previous["rows"]]
    return {**result, "training": {**previous.get("training", {}), **result["training"]}, "rows": rows + list(fresh.values())}


def measure(work: Path, trained: Dict[str, Dict[str, Any]], out: Path, vaswani: str, update: bool = False) -> int:
    from retrievals.evaluation.datasets import load_eval_dataset
    from retrievals.models.sparse import SparseEmbedder

    if not update and not {"plain", "sparse"} <= set(trained):  # the whole table: its hybrids need both
        raise SystemExit("a measure without --update is the whole table: --models must include plain and sparse")
    models = {"MiniLM zero-shot": str(fetch("all-MiniLM-L6-v2")),
              **({"MiniLM fine-tuned": str(work / "plain")} if "plain" in trained else {}),
              **{label: str(work / name) for name, (label, _, _) in MATRYOSHKA.items() if name in trained},
              **({POSTHOC_PCA[1]: str(work / POSTHOC_PCA[0])} if POSTHOC_PCA[0] in trained else {}),
              **({E5_PLAIN[0]: str(E5_PLAIN[1])} if any(plain_of(MATRYOSHKA[n][0]) == E5_PLAIN[0]
                                                        for n in trained if n in MATRYOSHKA) else {}),
              "SPLADE-tiny zero-shot": str(fetch("splade-tiny")),
              **({"SPLADE-tiny fine-tuned": str(work / "sparse")} if "sparse" in trained else {})}
    rows: List[Dict[str, Any]] = []
    for dname, data in (("aia-bde", load_eval_dataset("aia-bde")), ("vaswani", load_eval_dataset(vaswani))):
        doc_ids, query_ids = list(data.corpus), list(data.queries)
        print(f"[{dname}] {len(doc_ids)} documents, {len(query_ids)} queries", flush=True)

        def add(name: str, index: Any, queries: Any, run: Any = None, **info: Any) -> Dict[str, Any]:
            run = run if run is not None else index.search_run(query_ids, queries, 100)
            metrics = evaluate_run(run, data.qrels, (10, 100))
            row = {"dataset": dname, "name": name, "ndcg@10": round(metrics["ndcg@10"], 4),
                   "recall@100": round(metrics["recall@100"], 4), **info}
            if index is not None:
                size = folder_bytes(index, work)
                row.update(bytes_per_vector=round(size["memory"] / len(doc_ids), 1),
                           disk_bytes_per_vector=round(size["disk"] / len(doc_ids), 1),
                           index_mb=round(size["disk"] / 2**20, 2), latency_ms=latency_ms(index, list(queries)))
            rows.append(row)
            print("  " + json.dumps(row), flush=True)
            return run

        texts = [data.queries[q] for q in query_ids]
        runs = {"BM25": add("BM25", BM25Index([data.corpus[d] for d in doc_ids], doc_ids), texts, kind="bm25")}
        for name, path in models.items():
            cls = SparseEmbedder if name.startswith("SPLADE") else AutoModelForEmbedding  # the asset is a plain MLM folder
            model = cls.from_pretrained(path, query_max_length=64, document_max_length=128)  # as trained (and the demo)
            vectors = encoded(model, name.replace(" ", "_"), data, work / "cache" / dname)
            if isinstance(model, SparseEmbedder):
                runs[name] = add(name, SparseIndex(vectors["docs"], doc_ids), vectors["queries"], kind="sparse",
                                 queries_per_s=vectors["qps"])
                continue
            docs, queries = vectors["docs"], vectors["queries"]
            for dim in (DIMS if name != "MiniLM zero-shot" else DIMS[:1]):
                run = add(f"{name} float {dim}", build_dense_index(truncated(docs, dim), doc_ids, "flat"),
                          truncated(queries, dim), kind="dense", model=name, dim=dim, encoding="float32",
                          queries_per_s=vectors["qps"])
                runs.setdefault(name, run)
            if name == "MiniLM zero-shot":
                continue
            for index_type, rescore, rescore_with in (("int8", 0, "codes"), ("binary", 0, "codes"), ("binary", 4, "codes"),
                                                      ("binary", 4, "int8"), ("binary_hnsw", 0, "codes"),
                                                      ("binary_hnsw", 4, "int8")):
                label = {0: "", 4: " rescored x4"}[rescore] + (" (int8 on disk)" if rescore_with == "int8" else "")
                add(f"{name} {index_type}{label}",
                    build_dense_index(docs, doc_ids, index_type, rescore_multiplier=rescore, rescore_with=rescore_with),
                    queries, kind="dense", model=name, dim=int(docs.shape[1]), encoding=index_type,
                    rescore_multiplier=rescore, rescore_with=rescore_with)
        for first, second in (("SPLADE-tiny fine-tuned", "MiniLM fine-tuned"), ("BM25", "MiniLM fine-tuned")):
            if first not in runs or second not in runs:  # an --update without plain or sparse keeps these rows
                continue
            add(f"hybrid {first} + {second} (rrf)", None, None, kind="hybrid",
                run=reciprocal_rank_fusion([runs[first], runs[second]], top_k=100))
            add(f"hybrid {first} + {second} (weighted 1:1)", None, None, kind="hybrid",
                run=weighted_score_fusion([runs[first], runs[second]], top_k=100))
    result = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
              "versions": versions(), "training": trained, "rows": rows}
    if update and out.is_file():
        result = merged(json.loads(out.read_text()), result)
    result["targets"] = targets(result["rows"])
    rows = result["rows"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps(result["targets"], indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def versions() -> Dict[str, str]:
    import faiss
    import torch
    import transformers

    return {"retrievals": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "faiss": faiss.__version__, "python": platform.python_version()}


def targets(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The issue's targets, per dataset: measured values and whether each is met."""
    out: Dict[str, Any] = {}
    for dname in sorted({r["dataset"] for r in rows}):
        score = {r["name"]: r["ndcg@10"] for r in rows if r["dataset"] == dname}
        checks = {
            "fine-tuned sparse above its zero-shot": (score["SPLADE-tiny fine-tuned"], score["SPLADE-tiny zero-shot"]),
            "hybrid (fine-tuned dense + sparse) above fine-tuned dense":
                (max(score["hybrid SPLADE-tiny fine-tuned + MiniLM fine-tuned (rrf)"],
                     score["hybrid SPLADE-tiny fine-tuned + MiniLM fine-tuned (weighted 1:1)"]),
                 score["MiniLM fine-tuned float 384"]),
        }
        matryoshka = [label for label in SERVES_384 if f"{label} float 64" in score]
        for model in matryoshka:
            m384, m64 = score[f"{model} float 384"], score[f"{model} float 64"]
            checks[f"{model}: 64 within 2% of its 384"] = (m64, round(0.98 * m384, 4))
            checks[f"{model}: 64 above the plain fine-tune truncated to 64"] = (m64, score[f"{plain_of(model)} float 64"])
        for model in ["MiniLM fine-tuned", *matryoshka]:
            for variant in ("binary rescored x4", "binary rescored x4 (int8 on disk)"):
                checks[f"{model}: {variant} within 1% of float (48 of 1536 bytes in memory)"] = (
                    score[f"{model} {variant}"], round(0.99 * score[f"{model} float 384"], 4))
        out[dname] = {name: {"measured": a, "bar": b, "met": a >= b if "above" not in name else a > b}
                      for name, (a, b) in checks.items()}
    return out


def markdown(result: Dict[str, Any]) -> str:
    """The rows as one table per dataset, and the targets (written beside the JSON; README copies it)."""
    dates = sorted({r.get("measured", result["date"]) for r in result["rows"]})
    lines = [f"Measured {' and '.join(dates)} on {result['machine']} (torch {result['versions']['torch']}, faiss "
             f"{result['versions']['faiss']}); `python benchmarks/compact_sparse.py`"
             + (" (each row's date in the last column; rows of another date: `--update`)." if len(dates) > 1 else "."), ""]
    for dname in sorted({r["dataset"] for r in result["rows"]}):
        lines += [f"**{dname}**", "", "| run | nDCG@10 | recall@100 | bytes/doc in memory | on disk | search ms/query |"
                  + (" measured |" if len(dates) > 1 else ""), "|---|---|---|---|---|---|" + ("---|" if len(dates) > 1 else "")]
        for r in (r for r in result["rows"] if r["dataset"] == dname):
            cells = [r["name"], f"{r['ndcg@10']:.4f}", f"{r['recall@100']:.4f}", str(r.get("bytes_per_vector", "")),
                     str(r.get("disk_bytes_per_vector", "")), str(r.get("latency_ms", ""))]
            cells += [r.get("measured", result["date"])] if len(dates) > 1 else []
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "| target | measured | bar | met |", "|---|---|---|---|"]
        for name, t in result["targets"][dname].items():
            lines.append(f"| {name} | {t['measured']} | {t['bar']} | {'yes' if t['met'] else '**no**'} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: List[Dict[str, Any]], path: Path) -> None:
    """nDCG@10 against bytes per document: colour = model (legend), marker = encoding; BM25 and sparse named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colours = {"MiniLM zero-shot": "darkgoldenrod", "MiniLM fine-tuned": "tab:blue", POSTHOC_PCA[1]: POSTHOC_PCA[2],
               E5_PLAIN[0]: "lime",
               **{label: c for label, c, _ in MATRYOSHKA.values()}}
    markers = {"float32": ("o", "float (384 to 64 dims)"), "int8": ("D", "int8"), "binary": ("v", "binary"),
               "binary rescored": ("*", "binary, rescored x4"), "binary_hnsw": ("1", "binary HNSW (+ rescored)")}

    def marker(r: Dict[str, Any]) -> str:
        encoding = r.get("encoding", "")
        if encoding == "binary" and r.get("rescore_multiplier"):
            return markers["binary rescored"][0]
        return markers.get(encoding, ("o", ""))[0]

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 7.5))
    for ax, dname in zip(np.atleast_1d(axes), datasets):
        for r in (r for r in rows if r["dataset"] == dname and "bytes_per_vector" in r):
            if r["kind"] != "dense":
                ax.scatter(r["bytes_per_vector"], r["ndcg@10"], marker="s" if r["kind"] == "bm25" else "^",
                           color="black" if r["kind"] == "bm25" else "tab:red")
                ax.annotate(r["name"], (r["bytes_per_vector"], r["ndcg@10"]), fontsize=7, xytext=(4, 2),
                            textcoords="offset points")
                continue
            ax.scatter(r["bytes_per_vector"], r["ndcg@10"], marker=marker(r), s=36, color=colours.get(r["model"], "black"),
                       alpha=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("index bytes in memory per document (log)")
        ax.set_ylabel("nDCG@10")
        ax.set_title(f"{dname}: quality per byte")
        ax.grid(alpha=0.3)
    present = {r.get("model") for r in rows}
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=m) for m, c in colours.items() if m in present]
    handles += [Line2D([], [], marker=m, linestyle="", color="black", label=label) for m, label in markers.values()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(path, dpi=130)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="outputs/compact")
    p.add_argument("--train_only", action="store_true")
    p.add_argument("--models", nargs="+", default=["plain", *MATRYOSHKA, POSTHOC_PCA[0], "sparse"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compact_sparse.json"))
    p.add_argument("--vaswani", default=str(ROOT.parent / "shared" / "data" / "vaswani"))
    p.add_argument("--update", action="store_true",
                   help="Replace only the rows measured now (the --models given, the zero-shot models, BM25 and, "
                        "where plain and sparse are among --models, the hybrids) in --out, keeping its other rows, "
                        "each with the date it was measured.")
    opts = p.parse_args()
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    prepare(work)
    trained = train(work, opts.models)
    if opts.train_only:
        return 0
    return measure(work, trained, Path(opts.out), opts.vaswani, opts.update)


if __name__ == "__main__":
    sys.exit(main())

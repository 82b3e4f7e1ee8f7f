"""Evaluate models on a dataset and write a report: ``python -m retrievals.pipelines.evaluate --help``.

    python -m retrievals.pipelines.evaluate --dataset aia-bde --output_dir reports/aia \\
        --models base=path/to/base tuned=outputs/demo/model \\
        [--rerankers ce=path/to/reranker --first_stage base --rerank_top_k 20] \\
        [--hybrids both=tuned+sparse --fusion rrf|weighted --fusion_weights 1 1]

Embedders retrieve from the whole corpus (exact search; a sparse embedder through an inverted index); a hybrid
fuses two of those runs (``--models`` names or ``bm25``); rerankers reorder the top ``--rerank_top_k``
of ``--first_stage`` (one of the ``--models`` names, or ``bm25``). The report (JSON, Markdown, PNG)
holds every setting that affects scores, library versions and a hash of the dataset.
"""

from __future__ import annotations

import sys
from pathlib import Path
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..evaluation.datasets import check_qrels_cover, dataset_files, load_eval_dataset
from ..evaluation.metrics import evaluate_run
from ..evaluation.report import REPORT_FILES, REPORTED, model_settings, write_report
from ..evaluation.retrieval import check_first_stage_weight, rerank_run, retrieve
from ..index import BM25Index, check_fusion, fuse
from ..files import check_new_output
from ..models.base import check_model_path
from ..utils import UsageError, at_least, logger
from .cli import run_cli


@dataclass
class EvaluateArguments:
    dataset: str = field(metadata={"help": "aia-bde, a Vaswani folder or a BEIR folder."})
    output_dir: str = field(metadata={"help": "Where report.json / report.md / report.png go."})
    models: List[str] = field(default_factory=list, metadata={"help": "Embedders as NAME=PATH."})
    rerankers: List[str] = field(default_factory=list, metadata={"help": "Rerankers as NAME=PATH."})
    first_stage: Optional[str] = field(default=None, metadata={"help": "A --models NAME, or bm25 (default: the first model)."})
    hybrids: List[str] = field(default_factory=list, metadata={"help": "Fused runs as NAME=A+B (--models names or bm25)."})
    fusion: str = field(default="rrf", metadata={"help": "hybrids: rrf (reciprocal ranks) | weighted (min-max scores)."})
    fusion_weights: List[float] = field(default_factory=list, metadata={"help": "hybrids: the weights of A and B (default 1 1)."})
    rerank_top_k: int = 20
    rerank_first_stage_weight: float = field(default=0.0, metadata={
        "help": "w in [0, 1]: rerank by (1 - w) x reranker + w x first-stage score (each min-max normalised per "
                "query); 0: the reranker's scores alone."})
    top_k: int = field(default=100, metadata={"help": "How deep each first stage retrieves: at least 100 (recall@100 "
                                                      "is reported), and at least --rerank_top_k."})
    batch_size: int = 64
    title: Optional[str] = None
    overwrite: bool = field(default=False, metadata={"help": "Replace report files already in --output_dir."})

    def __post_init__(self) -> None:
        for flag in ("rerank_top_k", "batch_size"):
            at_least(f"--{flag}", getattr(self, flag), 1)
        at_least("--top_k", self.top_k, 100)  # a shallower run would report recall@100 of fewer documents
        check_fusion(self.fusion, self.fusion_weights)
        check_first_stage_weight(self.rerank_first_stage_weight, "--rerank_first_stage_weight")


def named(specs: List[str]) -> List[Tuple[str, str]]:
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{spec!r}: expected NAME=PATH")
        out.append((name, path))
    return out


def check_unique_names(names: List[Tuple[str, str]]) -> None:
    """Each report row's name once: a hybrid named like a model replaced that model's run (and a reranker over it
    reranked the hybrid), and the report showed two rows of that name. ``bm25`` names the BM25 row."""
    seen: Dict[str, str] = {"bm25": "the BM25 first stage"}
    for flag, name in names:
        if name in seen:
            raise UsageError(f"{flag} {name!r}: that name is taken by {seen[name]}; every model, hybrid and reranker "
                             "needs its own name.")
        seen[name] = f"{flag} {name!r}"


def bm25_run(data: Any, top_k: int) -> Dict[str, Dict[str, float]]:
    ids, query_ids = list(data.corpus), list(data.queries)
    return BM25Index([data.corpus[d] for d in ids], ids).search_run(query_ids, [data.queries[q] for q in query_ids], top_k)


def hybrid_parts(spec: str) -> Tuple[str, str, str]:
    name, sep, parts = spec.partition("=")
    first, plus, second = parts.partition("+")
    if not (sep and plus and name and first and second):
        raise UsageError(f"--hybrids {spec!r}: expected NAME=A+B")
    return name, first, second


def evaluate(a: EvaluateArguments) -> Dict[str, Dict]:
    from ..models.embedding import AutoModelForEmbedding
    from ..models.rankers import AutoModelForRanking

    models, rerankers = named(a.models), named(a.rerankers)
    # the dataset's files and the models' folders are never written into, even with --overwrite
    inputs = {**{f"--dataset {role} file": path for role, path in dataset_files(a.dataset).items()},
              **{f"--models {name}": path for name, path in models if Path(path).exists()},
              **{f"--rerankers {name}": path for name, path in rerankers if Path(path).exists()}}
    for name in REPORT_FILES:  # before any work; other files in the folder are never touched
        check_new_output(Path(a.output_dir) / name, a.overwrite, inputs=inputs)
    hybrids = [hybrid_parts(spec) for spec in a.hybrids]
    check_unique_names([*(("--models", n) for n, _ in models), *(("--hybrids", n) for n, _, _ in hybrids),
                        *(("--rerankers", n) for n, _ in rerankers)])
    known = {name for name, _ in models} | {"bm25"}
    for name, first, second in hybrids:
        if {first, second} - known:
            raise UsageError(f"--hybrids {name}: {sorted({first, second} - known)} are neither bm25 nor --models names")
    if not models and not rerankers:
        raise UsageError("nothing to evaluate: pass --models and/or --rerankers")
    first = a.first_stage or (models[0][0] if models else "bm25")
    if rerankers and first not in known:  # checked before any model runs
        raise UsageError(f"--first_stage {first!r} is neither bm25 nor one of --models {sorted(known - {'bm25'})}")
    for flag, specs in (("--models", models), ("--rerankers", rerankers)):
        for name, path in specs:  # each is loaded in turn: a wrong last path must not cost the first ones' runs
            check_model_path(path, f"{flag} {name} model")
    data = load_eval_dataset(a.dataset)
    check_qrels_cover(data.qrels, data.queries, data.corpus, a.dataset)
    # a judged query that is never asked is left out of the metrics, as the warning says and retrieve does (it was
    # scored 0, scaling every metric down)
    qrels = {q: docs for q, docs in data.qrels.items() if q in data.queries}
    for flag, value, needs in (("--first_stage", a.first_stage, rerankers), ("--fusion_weights", a.fusion_weights, hybrids),
                               ("--rerank_top_k", a.rerank_top_k != 20, rerankers),
                               ("--rerank_first_stage_weight", a.rerank_first_stage_weight, rerankers),
                               ("--fusion", a.fusion != "rrf", hybrids)):
        if value and not needs:  # a setting that changes nothing must not look as if it were in the report
            logger.warning("%s is set but there are no %s: it changes nothing.", flag,
                           "--hybrids" if flag.startswith("--fusion") else "--rerankers")
    k_values = (10, 100)
    # how deep the first stages retrieve: at least 100 (recall@100), and every document a reranker is told to take
    depth = max(a.top_k, a.rerank_top_k if rerankers else 0)
    rows, runs = [], {}
    for name, path in models:
        model = AutoModelForEmbedding.from_pretrained(path)
        start = time.perf_counter()
        runs[name] = retrieve(model, data.corpus, data.queries, top_k=depth, batch_size=a.batch_size)
        metrics = evaluate_run(runs[name], qrels, k_values)
        rows.append({"name": name, "kind": "embedder", "path": path, "seconds": round(time.perf_counter() - start, 1),
                     "metrics": {m: round(metrics[m], 4) for m in REPORTED},
                     "settings": {**model_settings(model), "run_depth": depth}})

    def ensure_bm25() -> None:  # computed once, and reported beside what it feeds
        if "bm25" in runs:
            return
        start = time.perf_counter()
        runs["bm25"] = bm25_run(data, depth)
        metrics = evaluate_run(runs["bm25"], qrels, k_values)
        rows.append({"name": "bm25", "kind": "bm25", "path": "", "seconds": round(time.perf_counter() - start, 1),
                     "metrics": {m: round(metrics[m], 4) for m in REPORTED}, "settings": {"implementation": "bm25s", "run_depth": depth}})

    for name, first, second in hybrids:
        for part in (first, second):
            if part == "bm25":
                ensure_bm25()
        weights = a.fusion_weights or None
        runs[name] = fuse(a.fusion, [runs[first], runs[second]], weights, top_k=depth)
        metrics = evaluate_run(runs[name], qrels, k_values)
        rows.append({"name": name, "kind": f"hybrid {first} + {second} ({a.fusion})", "path": "",
                     "seconds": 0.0, "metrics": {m: round(metrics[m], 4) for m in REPORTED},
                     "settings": {"fusion": a.fusion, "weights": list(weights or [1.0, 1.0]), "run_depth": depth}})
    if rerankers:
        if first == "bm25":
            ensure_bm25()
        for name, path in rerankers:
            model = AutoModelForRanking.from_pretrained(path)
            start = time.perf_counter()
            # the first stage's documents past --rerank_top_k follow the reranked ones, so MAP and recall@100 measure
            # as deep a list as the first stage's row (without them MAP fell under it and recall@100 was recall@20)
            run = rerank_run(model, data.corpus, data.queries, runs[first], top_k=a.rerank_top_k, batch_size=a.batch_size,
                             first_stage_weight=a.rerank_first_stage_weight, keep_rest=True)
            metrics = evaluate_run(run, qrels, k_values)
            rows.append({"name": name, "kind": f"reranker over {first} top {a.rerank_top_k}"
                         + (f" (first stage weight {a.rerank_first_stage_weight})" if a.rerank_first_stage_weight else ""), "path": path,
                         "seconds": round(time.perf_counter() - start, 1),
                         "metrics": {m: round(metrics[m], 4) for m in REPORTED},
                         "settings": {**model_settings(model), "run_depth": depth}})
    dataset = {"name": data.name, "hash": data.hash, "queries": len(data.queries), "documents": len(data.corpus)}
    paths = write_report(a.output_dir, dataset, rows, a.title or f"Evaluation on {data.name}")
    for row in rows:
        print(f"{row['name']:>20} {row['kind']:<28} " + " ".join(f"{m} {row['metrics'][m]:.4f}" for m in REPORTED))
    print("report:", ", ".join(str(p) for p in paths.values()))
    return {"rows": rows, "paths": paths}


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli([EvaluateArguments], evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Retrieve with an index and write a TREC run: ``python -m retrievals.pipelines.retrieve --help``.

    python -m retrievals.pipelines.retrieve --dataset aia-bde --model_name_or_path MODEL \\
        --index_type flat --top_k 100 --output run.trec [--reranker_name_or_path RERANKER --rerank_top_k 20]

Backends: ``exact`` | ``flat`` | ``ivf`` | ``hnsw`` (dense, faiss for the last three), ``int8`` | ``binary`` |
``binary_hnsw`` (quantized, rescored with the float query), ``bm25``, ``sparse`` (a sparse embedder over an
inverted index) and ``hybrid``: the dense index fused with BM25, or with a sparse embedder
(``--sparse_name_or_path``), by reciprocal-rank fusion or by weighted min-max-normalised scores (``--fusion``). Corpus embeddings are encoded in
resumable shards (``--cache_dir``), split across processes under torchrun. With qrels (``--dataset``
or ``--qrels``) the metrics are printed and written next to the run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..data.readers import DataError
from ..evaluation.datasets import check_qrels_cover, dataset_files, load_eval_dataset
from ..data.io import check_trec_id, dataset_hash, rank, read_jsonl_texts, read_qrels, write_trec_run
from ..evaluation.metrics import evaluate_run
from ..evaluation.retrieval import check_first_stage_weight, rerank_run
from ..index import (
    FAISS_TYPES,
    QUANTIZED_TYPES,
    BM25Index,
    Index,
    build_dense_index,
    check_fusion,
    fuse,
)
from ..files import atomic_write_json, check_new_output
from ..index.sharded import encode_sharded
from ..utils import UsageError, at_least, logger, state_digest
from ..distributed import init_distributed, shutdown_distributed, world
from .cli import run_cli
from .model_flags import EmbedderFlags, RerankerFlags

DENSE = ("exact", *FAISS_TYPES, *QUANTIZED_TYPES)
INDEX_TYPES = (*DENSE, "bm25", "sparse", "hybrid")


@dataclass(kw_only=True)
class RetrieveArguments(EmbedderFlags, RerankerFlags):
    output: str = field(metadata={"help": "TREC run file to write."})
    dataset: Optional[str] = field(default=None, metadata={"help": "aia-bde, a Vaswani folder or a BEIR folder."})
    corpus: Optional[str] = field(default=None, metadata={"help": "JSONL with _id/id and text (when no --dataset)."})
    queries: Optional[str] = field(default=None, metadata={"help": "JSONL with _id/id and text (when no --dataset)."})
    qrels: Optional[str] = field(default=None, metadata={"help": "TREC or BEIR qrels: print metrics."})
    index_type: str = field(default="flat", metadata={"help": f"One of {list(INDEX_TYPES)}."})
    index_dir: Optional[str] = field(default=None, metadata={"help": "Load the index from here, or build and save it here."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Dense corpus embedding shards (resumable)."})
    shard_size: int = 10000
    batch_size: int = 64
    top_k: int = 100
    hybrid_k: int = field(default=60, metadata={"help": "Reciprocal-rank fusion constant."})
    sparse_name_or_path: Optional[str] = field(default=None, metadata={
        "help": "hybrid: a sparse embedder fused with the dense index (default: BM25)."})
    fusion: str = field(default="rrf", metadata={"help": "hybrid: rrf (reciprocal ranks) | weighted (min-max scores)."})
    fusion_weights: List[float] = field(default_factory=list, metadata={
        "help": "hybrid: weights of the lexical/sparse run and the dense run (default 1 1)."})
    rescore_multiplier: int = field(default=4, metadata={"help": "int8/binary indexes: rescore the best "
                                                                 "multiplier x top_k with the float query (0: none)."})
    rescore_with: str = field(default="codes", metadata={"help": "binary indexes: rescore against the codes, or "
                                                                 "int8 (a memory-mapped file beside the index)."})
    rerank_top_k: int = field(default=20, metadata={"help": "Documents of each query the reranker rescores."})
    rerank_first_stage_weight: float = field(default=0.0, metadata={
        "help": "w in [0, 1]: rerank by (1 - w) x reranker + w x first-stage score (each min-max normalised per "
                "query); 0: the reranker's scores alone."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --output run file (and its metrics)."})

    def __post_init__(self) -> None:
        for flag in ("shard_size", "batch_size", "top_k", "hybrid_k", "rerank_top_k", "max_length"):
            at_least(f"--{flag}", getattr(self, flag), 1)
        at_least("--rescore_multiplier", self.rescore_multiplier, 0)
        if self.rescore_multiplier != 4 and self.index_type not in QUANTIZED_TYPES:  # as silently ignored
            raise UsageError(f"--rescore_multiplier rescores an int8 or binary index ({', '.join(QUANTIZED_TYPES)}); "
                             f"--index_type {self.index_type} has nothing to rescore: drop it.")
        if self.rescore_with not in ("codes", "int8") or (self.rescore_with == "int8" and "binary" not in self.index_type):
            raise UsageError(f"--rescore_with {self.rescore_with!r}: codes, or int8 with a binary index type.")
        check_fusion(self.fusion, self.fusion_weights)
        check_first_stage_weight(self.rerank_first_stage_weight, "--rerank_first_stage_weight")
        if (self.sparse_name_or_path or self.fusion_weights or self.fusion != "rrf") and self.index_type != "hybrid":
            raise UsageError("--sparse_name_or_path, --fusion and --fusion_weights are for --index_type hybrid.")
        if self.hybrid_k != 60 and not (self.index_type == "hybrid" and self.fusion == "rrf"):  # as silently ignored
            raise UsageError("--hybrid_k is the reciprocal-rank fusion constant of --index_type hybrid (--fusion rrf).")
        if (self.rerank_top_k != 20 or self.rerank_first_stage_weight) and not self.reranker_name_or_path:
            raise UsageError("--rerank_top_k and --rerank_first_stage_weight set how --reranker_name_or_path reranks: "
                             "pass a reranker, or drop them.")
        if self.cache_dir and self.index_type in ("sparse", "bm25"):  # it would be ignored: no vectors it could hold
            raise UsageError(f"--cache_dir keeps dense corpus embeddings, which --index_type {self.index_type} has none "
                             f"of: drop it (--index_dir saves the {self.index_type} index for the next run).")
        if self.model_name_or_path and self.index_type == "bm25":  # it would be ignored as silently
            raise UsageError("--index_type bm25 uses no embedder: drop --model_name_or_path, or choose a dense, sparse "
                             "or hybrid --index_type.")
        if self.dataset and (self.corpus or self.queries or self.qrels):  # --dataset's files were used, these dropped
            given = [f for f in ("--corpus", "--queries", "--qrels") if getattr(self, f[2:])]
            raise UsageError(f"--dataset brings its own corpus, queries and qrels: drop {', '.join(given)}, or --dataset.")
        for flag in ("index_dir", "cache_dir"):  # checked now: found a file only when saving, after the encoding
            folder = getattr(self, flag)
            if folder is not None and (folder == "" or (Path(folder).exists() and not Path(folder).is_dir())):
                raise UsageError(f"--{flag} {folder!r}: {'is a file; ' if folder else ''}expected a folder path.")


def load_inputs(a: RetrieveArguments):
    if a.dataset:
        data = load_eval_dataset(a.dataset)
        corpus, queries, qrels = data.corpus, data.queries, data.qrels
    elif not (a.corpus and a.queries):
        raise DataError("pass --dataset, or --corpus and --queries")
    else:
        corpus, queries, qrels = read_jsonl_texts(a.corpus), read_jsonl_texts(a.queries), read_qrels(a.qrels) if a.qrels else None
    for texts, name in ((corpus, a.corpus or f"{a.dataset}'s corpus"), (queries, a.queries or f"{a.dataset}'s queries")):
        if not texts:  # an empty run (or a traceback from the shard cache) said nothing of why
            raise DataError(f"{name}: holds no records; nothing to {'search' if texts is corpus else 'ask'}.")
    return corpus, queries, qrels


def dense_run(a: RetrieveArguments, corpus: Dict[str, str], queries: Dict[str, str], index_type: str):
    model = a.load_embedder(required_for=f"--index_type {a.index_type}")
    folder = Path(a.index_dir) / "dense" if a.index_dir else None
    source = {"model_weights": state_digest(model), "model": asdict(model.retrieval_config), "corpus": dataset_hash(corpus, {}, {}),
              "index_type": index_type, **({"rescore_with": a.rescore_with} if a.rescore_with != "codes" else {})}

    def build() -> Index:
        doc_ids = list(corpus)
        texts = [corpus[d] for d in doc_ids]
        if a.cache_dir:
            vectors = encode_sharded(model, texts, a.cache_dir, a.shard_size, a.batch_size)
        else:
            vectors = model.encode_corpus(texts, batch_size=a.batch_size, show_progress_bar=True)
        built = build_dense_index(vectors, doc_ids, index_type, rescore_multiplier=a.rescore_multiplier,
                                  rescore_with=a.rescore_with)  # the rescoring settings matter to quantized types only
        if hasattr(built, "bytes_per_vector"):
            logger.warning("%s index: %d bytes per vector (float32: %d)", index_type, built.bytes_per_vector,
                           4 * int(built.dim))
        return built

    index = load_or_build(folder, source, build)
    if hasattr(index, "rescore_multiplier"):  # a search setting, not the index's content: this run's flag applies
        index.rescore_multiplier = a.rescore_multiplier
    query_ids = list(queries)
    q = model.encode_queries([queries[i] for i in query_ids], batch_size=a.batch_size)
    return index.search_run(query_ids, q, a.top_k)


def bm25_run(a: RetrieveArguments, corpus: Dict[str, str], queries: Dict[str, str]):
    folder = Path(a.index_dir) / "bm25" if a.index_dir else None
    source = {"corpus": dataset_hash(corpus, {}, {})}
    index = load_or_build(folder, source, lambda: BM25Index(list(corpus.values()), list(corpus)))
    query_ids = list(queries)
    return index.search_run(query_ids, [queries[i] for i in query_ids], a.top_k)


def sparse_run(a: RetrieveArguments, corpus: Dict[str, str], queries: Dict[str, str], path: str, flag: str):
    """A sparse embedder (``path``, saved with ``--model_type sparse``) over an inverted index."""
    from ..models.sparse import SparseEmbedder

    flags = a if path == a.model_name_or_path else dataclasses.replace(  # the dense model's settings are not its own
        a, model_name_or_path=path, pooling_method=None, query_instruction=None, document_instruction=None,
        backend="torch", backend_precision="fp32",  # a sparse embedder has no CPU backend: --backend is the dense one's
        truncate_dim=None)  # the dense vectors' size (a Matryoshka model at 64 beside SPLADE); sparse ones keep top_k
    model = flags.load_embedder(required_for=flag)
    if not isinstance(model, SparseEmbedder):
        raise UsageError(f"{flag} needs a sparse embedder; {path} is a dense one.")
    # saved and reloaded like the dense index, keyed the same way: another sparse model (weights or settings) or
    # corpus is refused, never served these postings
    folder = Path(a.index_dir) / "sparse" if a.index_dir else None
    if a.cache_dir and (folder is None or not (folder / "index_meta.json").is_file()):  # hybrid: the dense half's
        logger.warning("--cache_dir keeps the dense model's corpus embeddings only; the sparse embedder %s encodes "
                       "the corpus again%s.", path, "" if folder else " (--index_dir would save its index)")
    source = {"model_weights": state_digest(model), "model": asdict(model.retrieval_config),
              "corpus": dataset_hash(corpus, {}, {}), "index_type": "sparse"}
    index = load_or_build(folder, source, lambda: model.build_index(list(corpus.values()), ids=list(corpus), batch_size=a.batch_size))
    return model.search_run(index, queries, a.top_k, batch_size=a.batch_size)


SOURCE_NAMES = {"model_weights": "model (weights or tokenizer)", "model": "model settings", "corpus": "corpus",
                "index_type": "--index_type", "rescore_with": "--rescore_with"}  # what an index's source records


def load_or_build(folder: Optional[Path], source: Dict, build: Callable[[], Index]) -> Index:
    """The index saved in ``folder`` when it matches ``source`` (see :func:`load_matching_index`), else ``build()``,
    recorded with ``source`` and saved there (by rank 0 under torchrun)."""
    if folder is not None and (folder / "index_meta.json").is_file():
        return load_matching_index(folder, source)
    index = build()
    index.source = source
    if folder is not None and world()[0] == 0:
        index.save(folder)
    return index


def load_matching_index(folder: Path, source: Dict) -> Index:
    """A saved index, only when it was built from this model (weights and settings) and corpus: never another's vectors."""
    index = Index.load(folder)
    wanted, saved = json.loads(json.dumps(source, default=str)), index.source or {}
    differ = sorted(key for key in set(wanted) | set(saved) if wanted.get(key) != saved.get(key))
    if differ:
        names = [SOURCE_NAMES.get(key, key) for key in differ]
        raise UsageError(f"{folder}: this index was built with another {', '.join(names)} than this run's; pass another "
                         "--index_dir, or delete that folder to rebuild it.")
    logger.warning("Loaded the %s index from %s", index.backend, folder)
    return index


def first_stage(a: RetrieveArguments, corpus: Dict[str, str], queries: Dict[str, str]) -> Dict[str, Dict[str, float]]:
    """The run of ``--index_type``: the best ``a.top_k`` documents of each query."""
    if a.index_type == "bm25":
        return bm25_run(a, corpus, queries)
    if a.index_type == "sparse":
        return sparse_run(a, corpus, queries, a.model_name_or_path, "--index_type sparse")
    if a.index_type == "hybrid":
        lexical = sparse_run(a, corpus, queries, a.sparse_name_or_path, "--sparse_name_or_path") \
            if a.sparse_name_or_path else bm25_run(a, corpus, queries)
        return fuse(a.fusion, [lexical, dense_run(a, corpus, queries, "flat")], a.fusion_weights or None, a.top_k,
                    k=a.hybrid_k)
    return dense_run(a, corpus, queries, a.index_type)


def local(path: Optional[str]) -> Optional[str]:
    """``path`` when it names something on disk (a model folder), else None (an asset name, or nothing)."""
    return path if path and Path(path).exists() else None


def run_retrieval(a: RetrieveArguments) -> Dict[str, Dict[str, float]]:
    inputs = {"--corpus": a.corpus, "--queries": a.queries, "--qrels": a.qrels,
              # a --dataset folder's own files are inputs too: --output FOLDER/qrels/test.tsv must not replace its qrels
              **{f"--dataset {role} file": path for role, path in (dataset_files(a.dataset) if a.dataset else {}).items()},
              # and the folders the run loads or saves: a run written into the index folder replaced its ids.json
              "--index_dir": a.index_dir, "--cache_dir": a.cache_dir, "--model_name_or_path": local(a.model_name_or_path),
              "--sparse_name_or_path": local(a.sparse_name_or_path), "--reranker_name_or_path": local(a.reranker_name_or_path)}
    check_new_output(a.output, a.overwrite, inputs=inputs)  # before any work: a refused output must not cost an encoding run
    check_new_output(a.output + ".metrics.json", a.overwrite, inputs=inputs)
    if a.index_type not in INDEX_TYPES:
        raise UsageError(f"Unknown --index_type {a.index_type!r}; choose one of {list(INDEX_TYPES)}.")
    if not a.model_name_or_path and a.index_type != "bm25":  # a hybrid found out after building its BM25 or sparse half
        raise UsageError(f"--index_type {a.index_type} needs --model_name_or_path (an embedder"
                         f"{', the dense half' if a.index_type == 'hybrid' else ''}).")
    reranker = a.load_reranker()  # before the retrieval: a wrong reranker path must not cost an encoding run
    corpus, queries, qrels = load_inputs(a)
    # the run file could not hold them: said now, not after the encoding, naming the file they come from
    for field, ids, source in (("query id", queries, a.queries), ("document id", corpus, a.corpus)):
        for key in ids:
            check_trec_id(key, field, source or f"--dataset {a.dataset}")
    if a.qrels and not qrels:  # no metrics were written, and the run exited 0 as if they had been
        raise DataError(f"{a.qrels}: holds no judgments; pass a qrels file with some, or drop --qrels.")
    if qrels:
        check_qrels_cover(qrels, queries, corpus, a.qrels or a.dataset)
        qrels = {q: docs for q, docs in qrels.items() if q in queries}  # a query not asked is not a query missed
    # a reranker rescores the first stage's best --rerank_top_k: retrieve that many even when --top_k asks fewer
    depth = dataclasses.replace(a, top_k=max(a.top_k, a.rerank_top_k)) if reranker is not None else a
    run = first_stage(depth, corpus, queries)
    if reranker is not None:  # the documents past --rerank_top_k follow the reranked ones: the run keeps --top_k
        run = rerank_run(reranker, corpus, queries, run, top_k=a.rerank_top_k, show_progress_bar=True,
                         first_stage_weight=a.rerank_first_stage_weight, keep_rest=True)
        run = {q: {d: scores[d] for d in rank(scores)[:a.top_k]} for q, scores in run.items()}
    if world()[0] == 0:
        # first: a run killed between the two writes must not leave the new run beside the old run's metrics
        Path(a.output + ".metrics.json").unlink(missing_ok=True)
        write_trec_run(run, a.output, tag=f"retrievals-{a.index_type}")
        if qrels:
            # a cut-off past the run's depth would name a shallower measure (recall@100 of a top 10): left out, and
            # MAP is over the run's --top_k, which the metrics file records
            cuts = {f"{m}@{k}" for m, k in (("mrr", 10), ("ndcg", 10), ("recall", 10), ("recall", 100), ("hit", 1))
                    if k <= a.top_k}
            metrics = {k: round(v, 4) for k, v in evaluate_run(run, qrels, (1, 10, 100)).items() if k in cuts | {"map"}}
            metrics["run_depth"] = a.top_k
            atomic_write_json(a.output + ".metrics.json", metrics)
            print(json.dumps(metrics))
    return run


def _retrieve_main(args: RetrieveArguments) -> None:
    init_distributed()
    run_retrieval(args)
    shutdown_distributed()


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli([RetrieveArguments], _retrieve_main, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Mine hard negatives for training data: ``python -m retrievals.pipelines.build_hn --help``.

    python -m retrievals.pipelines.build_hn --model_name_or_path MODEL --input_file train.jsonl \\
        --output_file train_hn.jsonl --range_for_sampling 2-200 --negative_number 15

For each query the pool (``--candidate_pool``, or every positive and negative of the input) is ranked
by the embedder; candidates ranked within ``--range_for_sampling`` that are not positives are kept
unless they score above ``--false_negative_ratio`` x the weakest positive's score (likely unlabelled
positives). ``--reranker_name_or_path`` (or ``--reranker_model``) applies the same filter with a reranker's normalised scores.
Pool embeddings are cached in resumable shards (``--cache_dir``). Queries that end up with fewer
negatives than asked get a warning, never a crash.
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..files import atomic_write_text, check_new_output
from ..data.readers import DataError, Record, iter_lines, iter_raw, load_records
from ..index.exact import exact_search
from ..index.sharded import encode_sharded
from ..inputs import document_text
from ..utils import UsageError, at_least, logger
from .cli import run_cli
from .model_flags import EmbedderFlags, RerankerFlags


@dataclass(kw_only=True)
class HardNegativeArguments(EmbedderFlags, RerankerFlags):
    """--model_name_or_path: the embedder that ranks the pool; --reranker_name_or_path: an optional reranker that
    filters false negatives again."""

    input_file: str = field(metadata={"help": "Training JSONL: query, positive, (negative)."})
    output_file: str = field(metadata={"help": "Where to write the records with mined negatives."})
    candidate_pool: Optional[str] = field(default=None, metadata={"help": "JSONL with 'text' (or a .txt, one per line)."})
    range_for_sampling: str = field(default="2-200", metadata={"help": "Rank window START-END (0-based) to sample from."})
    negative_number: int = 15
    false_negative_ratio: float = field(default=0.95, metadata={
        "help": "Drop candidates scoring above ratio x the weakest positive's score (below 0: above it minus (1 - ratio) "
                "x its size)."})
    keep_original_negatives: bool = False
    min_negatives: int = field(default=0, metadata={
        "help": "Leave out queries that end up with fewer negatives (e.g. --train_group_size - 1 of the training "
                "run, which refuses such records); counted in the output."})
    query_key: str = "query"
    positive_key: str = "positive"
    negative_key: str = "negative"
    batch_size: int = 64
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Resumable pool embedding shards."})
    shard_size: int = 10000
    seed: int = 42
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --output_file."})

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise UsageError("--model_name_or_path is required: the embedder that ranks the candidate pool.")
        for flag in ("negative_number", "batch_size", "shard_size", "max_length"):
            at_least(f"--{flag}", getattr(self, flag), 1)
        at_least("--min_negatives", self.min_negatives, 0)
        if not math.isfinite(self.false_negative_ratio):  # nan would compare false everywhere: a silent setting
            raise UsageError(f"--false_negative_ratio must be a finite number, got {self.false_negative_ratio}.")
        parse_range(self.range_for_sampling)
        if self.min_negatives > self.negative_number and not self.keep_original_negatives:  # no record could pass
            raise UsageError(f"--min_negatives {self.min_negatives} is more than --negative_number "
                             f"{self.negative_number} mines per query: every query would be left out.")


def parse_range(text: str) -> Tuple[int, int]:
    try:
        start, end = (int(x) for x in text.split("-"))
    except ValueError:
        raise UsageError(f"--range_for_sampling {text!r}: expected START-END, such as 2-200") from None
    if not 0 <= start < end:
        raise UsageError(f"--range_for_sampling {text!r}: need 0 <= START < END")
    return start, end


def read_pool(path: str) -> List[str]:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file.")
    if file.suffix == ".txt":
        return list(dict.fromkeys(line.strip() for _, line in iter_lines(file) if line.strip()))
    texts = []
    for where, obj in iter_raw(str(file)):
        if isinstance(obj, str):
            texts.append(obj)
        elif isinstance(obj, dict) and isinstance(obj.get("text"), str):
            try:  # "title text", as every corpus is read here: the documents the model retrieves (the title was dropped)
                texts.append(document_text(obj, where))
            except TypeError as exc:
                raise DataError(str(exc)) from None
        else:
            raise DataError(f"{where}: field 'text' must be a string.")
    return list(dict.fromkeys(texts))  # a text listed twice would be mined twice for one query (kept: its first place)


def false_negative_threshold(positive_score: float, ratio: float) -> float:
    """The score a candidate must not exceed: ``ratio`` x the positive's score, measured as a fraction of its size
    below it, so a positive scoring below 0 (cosine scores can) still keeps candidates that score above it out.

    >>> false_negative_threshold(0.8, 0.95), false_negative_threshold(-0.4, 0.5)
    (0.76, -0.6000000000000001)
    """
    return positive_score - (1.0 - ratio) * abs(positive_score)


def mine(a: HardNegativeArguments, records: List[Record], pool: List[str], model,
         reranker: Any = None) -> Tuple[List[List[str]], Dict[str, int]]:
    start, end = parse_range(a.range_for_sampling)
    if a.cache_dir:
        pool_emb = encode_sharded(model, pool, a.cache_dir, a.shard_size, a.batch_size)
    else:
        pool_emb = model.encode_corpus(pool, batch_size=a.batch_size, show_progress_bar=True)
    q_emb = model.encode_queries([r.query for r in records], batch_size=a.batch_size, show_progress_bar=True)
    positives = [p for r in records for p in r.positives]
    p_emb = model.encode_corpus(positives, batch_size=a.batch_size)
    _, ranked = exact_search(q_emb, pool_emb, top_k=min(end, len(pool)))
    stats = {"short": 0, "empty": 0, "dropped_as_false_negative": 0}
    out, offset = [], 0
    # pair data gives a query's positives one record each: none is its negative; nor is the query's own text (pair
    # data's pool holds other records' queries). Compared stripped: a .txt pool's lines are.
    positives_of: Dict[str, set] = {}
    for record in records:
        positives_of.setdefault(record.query, {record.query.strip()}).update(p.strip() for p in record.positives)
    for i, record in enumerate(records):
        n_pos = len(record.positives)
        pos_scores = np.asarray(q_emb[i]) @ np.asarray(p_emb[offset : offset + n_pos]).T
        offset += n_pos
        threshold = false_negative_threshold(float(np.min(pos_scores)), a.false_negative_ratio)
        own = positives_of[record.query]
        window = [int(j) for j in ranked[i][start:end] if pool[int(j)].strip() not in own]
        scores = np.asarray(pool_emb[window]) @ np.asarray(q_emb[i]) if window else np.zeros(0)
        keep = [j for j, s in zip(window, scores) if s <= threshold]
        if reranker is not None and keep:
            rr = reranker.compute_score([(record.query, pool[j]) for j in keep] + [(record.query, p) for p in record.positives],
                                        normalize=True)
            limit = false_negative_threshold(min(rr[len(keep):]), a.false_negative_ratio)
            keep = [j for j, s in zip(keep, rr[: len(keep)]) if s <= limit]
        stats["dropped_as_false_negative"] += len(window) - len(keep)
        rng = random.Random(f"{a.seed}-{i}")
        chosen = rng.sample(keep, a.negative_number) if len(keep) > a.negative_number else keep
        negatives = [pool[j] for j in chosen]
        if a.keep_original_negatives:  # screened like the mined ones: another record's positive of this query is none
            original = [n for n in record.negatives if n.strip() not in own]
            negatives = original + [n for n in negatives if n not in original]
        if len(negatives) < a.negative_number:
            stats["short"] += 1
            stats["empty"] += not negatives
        out.append(negatives)
    return out, stats


def run(a: HardNegativeArguments) -> Dict[str, int]:
    output = check_new_output(a.output_file, a.overwrite, inputs={"--input_file": a.input_file, "--candidate_pool": a.candidate_pool})
    parse_range(a.range_for_sampling)
    records = load_records(a.input_file, a.query_key, a.positive_key, a.negative_key, keep_fields=True)
    if a.candidate_pool:
        pool = read_pool(a.candidate_pool)
    else:
        pool = list(dict.fromkeys(t for r in records for t in (*r.positives, *r.negatives)))
    if not pool:
        raise DataError("the candidate pool is empty")
    start, _ = parse_range(a.range_for_sampling)
    if start >= len(pool):  # every query would get no negative: say so before the encoding
        raise UsageError(f"--range_for_sampling {a.range_for_sampling} starts at rank {start}, past the candidate pool's "
                         f"{len(pool)} texts: start lower, or add a larger --candidate_pool.")
    reranker = a.load_reranker()  # before the encoding: a wrong path must not cost an encoding of the whole pool
    model = a.load_embedder(required_for="build_hn")
    negatives, stats = mine(a, records, pool, model, reranker)
    if stats["short"]:
        logger.warning("%d of %d queries got fewer than %d negatives (%d got none): widen --range_for_sampling, "
                       "raise --false_negative_ratio or add a --candidate_pool.", stats["short"], len(records),
                       a.negative_number, stats["empty"])
    kept = [(record, negs) for record, negs in zip(records, negatives) if len(negs) >= a.min_negatives]
    if not kept:
        raise DataError(f"no query got --min_negatives {a.min_negatives} negatives, so {output} would be empty: widen "
                        "--range_for_sampling, raise --false_negative_ratio or add a --candidate_pool.")
    if not any(negs for _, negs in kept):  # a training file with every negative list empty: worse than the input
        raise DataError(f"no query got a negative, so {output} would hold none: widen --range_for_sampling, raise "
                        "--false_negative_ratio or add a --candidate_pool.")
    stale = sorted({name for record, _ in kept for name in record.extra if name.lower().startswith("neg")})
    if stale:  # fields about the old negatives (neg_scores: another tool's teacher scores) would pair with new ones
        logger.warning("fields %s describe the input's negatives, which mining replaced: left out of %s.", stale, output)
        for record, _ in kept:
            record.extra = {k: v for k, v in record.extra.items() if k not in stale}
    atomic_write_text(output, "".join(  # the record's other fields (id, prompt, ...) go with it, unchanged
        json.dumps({**record.extra, a.query_key: record.query, a.positive_key: record.positives, a.negative_key: negs},
                   ensure_ascii=False) + "\n"
        for record, negs in kept))
    stats["queries"] = len(records)
    stats["left_out"] = len(records) - len(kept)
    if stats["left_out"]:
        logger.warning("%d queries with fewer than %d negatives (--min_negatives) were left out of %s.",
                       stats["left_out"], a.min_negatives, output)
    print(json.dumps(stats))
    return stats


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli([HardNegativeArguments], run, argv)


if __name__ == "__main__":
    sys.exit(main())

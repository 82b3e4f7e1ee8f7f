"""Reranker benchmark on this CPU: cross-encoder throughput vs sentence-transformers' CrossEncoder, side by side in
one run.

    .venv/bin/python benchmarks/rerank_cpu.py [--out benchmarks/results/rerank_cpu.json]

* Throughput (same model: all-MiniLM-L6-v2 with a fresh 1-logit head; same pairs; 32 pairs a batch;
  256 tokens max; fp32): training pairs/s over optimizer steps 2 to ``--steps`` (ours: 8 queries x group 4,
  listwise CE; theirs: CrossEncoderTrainer, 32 labelled pairs, BCE; best of 2 runs each, taking turns) and scoring pairs/s (``compute_score``
  vs ``CrossEncoder.predict``; ours with ``score_windows=False``, i.e. truncating long documents as
  sentence-transformers does; best and median of 5 rounds taken in turns), whose scores must agree. Scoring with windows is timed too,
  and our CPU backends take their turns in the same rounds (ONNX Runtime fp32/int8, OpenVINO fp32/int8/bf16; each one's
  largest score difference from torch fp32 is reported; the graphs are exported before timing).
Quality of the three reranker kinds (trained with their recipes, over two first stages) is measured by
``benchmarks/rerank_recipes.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from retrievals import AutoModelForEmbedding, AutoModelForRanking, __version__  # noqa: E402
from retrievals.assets import fetch  # noqa: E402
from retrievals.data.aia_bde import parse_aia_bde, split_by_faq  # noqa: E402
from retrievals.pipelines import demo, rerank  # noqa: E402
from timing import StepTimer, side_by_side, take_turns, timing_our_training  # noqa: E402  (benchmarks/timing.py, beside this script)

PAIR_BATCH, GROUP, MAX_LEN = 32, 4, 256
SCORE_ROUNDS, TRAIN_ROUNDS = 5, 2


def train(kind, model_path, data, out, lr, batch, max_len, extra, max_steps=None):
    cli = ["--model_name_or_path", model_path, "--model_type", kind, "--train_data", str(data), "--output_dir", str(out),
           "--do_train", "--per_device_train_batch_size", str(batch), "--learning_rate", str(lr), "--train_group_size", str(GROUP),
           "--max_len", str(max_len), "--warmup_steps", "0.1", "--logging_steps", "10", "--save_strategy", "no",
           "--report_to", "none", "--disable_tqdm", "true", "--seed", "42", "--dataloader_drop_last", "true", *extra]
    cli += ["--max_steps", str(max_steps)] if max_steps else ["--num_train_epochs", "1"]
    from transformers import HfArgumentParser

    from retrievals.training.arguments import DataArguments

    m, d, a = HfArgumentParser((rerank.RerankModelArguments, DataArguments, rerank.RerankTrainingArguments)).parse_args_into_dataclasses(args=cli)
    start = time.perf_counter()
    rerank.train(m, d, a)
    return time.perf_counter() - start


def write_groups(split, negatives, qids, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for qid in qids:
            pos = [split.corpus[d] for d in split.train_qrels[qid]]
            f.write(json.dumps({"query": split.train_queries[qid], "positive": pos,
                                "negative": [split.corpus[d] for d in negatives[qid]]}, ensure_ascii=False) + "\n")


def throughput(minilm, split, negatives, work, steps):
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    qids = list(split.train_queries)[: steps * PAIR_BATCH // GROUP]
    write_groups(split, negatives, qids, work / "speed.jsonl")
    rows = {"query": [], "document": [], "label": []}
    for qid in qids:
        docs = [split.corpus[next(iter(split.train_qrels[qid]))]] + [split.corpus[d] for d in negatives[qid]]
        for i, doc in enumerate(docs):
            rows["query"].append(split.train_queries[qid])
            rows["document"].append(doc)
            rows["label"].append(float(i == 0))

    def ours_rate() -> float:
        with timing_our_training(StepTimer(1)) as timer:
            train("cross-encoder", minilm, work / "speed.jsonl", work / "ours_speed", 5e-5, PAIR_BATCH // GROUP, MAX_LEN,
                  ["--overwrite_output_dir", "true"], steps)
        return timer.rate(PAIR_BATCH)

    def theirs_rate() -> float:
        theirs = CrossEncoder(minilm, num_labels=1, max_length=MAX_LEN, device="cpu")
        args = CrossEncoderTrainingArguments(output_dir=str(work / "st"), per_device_train_batch_size=PAIR_BATCH, learning_rate=5e-5,
                                             warmup_steps=0.1, max_steps=steps, logging_steps=10, save_strategy="no", report_to="none",
                                             disable_tqdm=True, seed=42, dataloader_drop_last=True)
        trainer = CrossEncoderTrainer(model=theirs, args=args, train_dataset=Dataset.from_dict(rows), loss=BinaryCrossEntropyLoss(theirs))
        timer = StepTimer(1)
        trainer.add_callback(timer)
        trainer.train()
        return timer.rate(PAIR_BATCH)

    train_rate = take_turns({"retrievals": ours_rate, "sentence_transformers": theirs_rate}, TRAIN_ROUNDS)
    print("train pairs/s", train_rate, flush=True)

    # scoring: the same trained weights in both libraries
    ours = AutoModelForRanking.from_pretrained(str(work / "ours_speed"), score_windows=False)  # truncate, as ST does
    theirs = CrossEncoder(str(work / "ours_speed"), max_length=MAX_LEN, device="cpu")
    rng = random.Random(0)
    test_q, docs = list(split.test_queries.values()), list(split.corpus.values())
    pairs = [(rng.choice(test_q), rng.choice(docs)) for _ in range(800)]
    runs = {"retrievals": lambda: ours.compute_score(pairs, batch_size=PAIR_BATCH, normalize=True),
            "sentence_transformers": lambda: theirs.predict(pairs, batch_size=PAIR_BATCH)}
    for name, model in backend_models(str(work / "ours_speed")).items():  # exported before the timing starts
        runs[f"retrievals {name}"] = lambda model=model: model.compute_score(pairs, batch_size=PAIR_BATCH, normalize=True)
    timings, outputs = side_by_side(runs, len(pairs), SCORE_ROUNDS)
    reference = np.asarray(outputs["retrievals"], dtype=np.float32)
    difference = reference - np.asarray(outputs["sentence_transformers"], dtype=np.float32)
    timings["max_abs_score_difference"] = float(np.abs(difference).max())
    timings["max_abs_difference_from_torch_fp32"] = {  # sigmoid scores in [0, 1]
        name: float(np.abs(np.asarray(out, dtype=np.float32) - reference).max()) for name, out in outputs.items()
        if name.startswith("retrievals ")}
    ours.retrieval_config.score_windows = True
    t = time.perf_counter()
    ours.compute_score(pairs, batch_size=PAIR_BATCH)
    timings["retrievals_with_windows"] = round(len(pairs) / (time.perf_counter() - t), 1)
    print("score pairs/s", timings, flush=True)
    return train_rate, timings


def backend_models(path: str) -> dict:
    """Our cross-encoder on each CPU backend this machine runs (``onnx`` fp32 / int8, ``openvino`` fp32 / int8 and
    bf16 where the CPU has it), truncating as sentence-transformers does; a backend whose package is missing is left out."""
    from retrievals.utils import UsageError

    out = {}
    for backend, precision in (("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8"),
                               ("openvino", "bf16")):
        try:
            out[f"{backend} {precision}"] = AutoModelForRanking.from_pretrained(path, score_windows=False, backend=backend,
                                                                              backend_precision=precision)
        except (ImportError, UsageError) as error:
            print(f"[backends] {backend} {precision}: left out ({str(error).splitlines()[0]})", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/rerank_cpu.json")
    opts = p.parse_args()
    torch.manual_seed(0)
    import sentence_transformers
    import transformers

    minilm = str(fetch("all-MiniLM-L6-v2"))
    split = split_by_faq(parse_aia_bde(fetch("aia-bde")), 0.3, 0)
    base = AutoModelForEmbedding.from_pretrained(minilm, query_max_length=64, document_max_length=MAX_LEN)
    negatives = demo.mine_hard_negatives(base, split, n=GROUP - 1, start_rank=3, depth=30)
    results = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "date": datetime.date.today().isoformat(),
        "versions": {"retrievals": __version__, "sentence_transformers": sentence_transformers.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "settings": {"pair_batch": PAIR_BATCH, "group": GROUP, "max_length": MAX_LEN, "precision": "fp32", "train_steps": opts.steps},
    }
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    try:
        results["cross_encoder_train_pairs_per_s"], results["cross_encoder_score_pairs_per_s"] = throughput(
            minilm, split, negatives, work, opts.steps)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

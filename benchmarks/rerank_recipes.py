"""Rerankers a user would deploy: each recipe (a reranker kind and its flags) trained, then reranking the top 20 and
top 50 of two first stages (zero-shot and fine-tuned all-MiniLM-L6-v2, or ``--zero_shot`` / ``--first_stage``
named ``--name``) on AIA-BDE held-out FAQs, beside
each first stage alone, and the two-stage pipeline (fine-tuned embedder + best fine-tuned reranker).

    .venv/bin/python benchmarks/rerank_recipes.py --kinds cross-encoder colbert [--seeds 42 0 1] \
        [--first_stage outputs/demo] [--work outputs/rerank_recipes] [--eval_queries 300] \
        [--more_first_stages "zero-shot e5=multilingual-e5-small" "fine-tuned e5=outputs/table/embed_e5"]

Every step is the library's command line (recorded in the results): the fine-tuned first stage is the
README's main job (``retrievals.pipelines.demo``; pass ``--first_stage`` to reuse one), negatives are mined
by ``retrievals.pipelines.build_hn`` with that first stage from the training FAQs only (the candidate
distribution the reranker will see), and each reranker trains with ``retrievals.pipelines.rerank`` with
``--eval_data`` (100 held-out queries, disjoint from the ones measured) so its run folder has the
held-out curve (``training_curve.png``). A finished run in ``--work`` is reused, not retrained.
Scores are cached per (query, FAQ) in ``--work``, so each pair is scored once per model.
Results: ``benchmarks/results/rerank_recipes.json`` (saved after each recipe); rerankers built on another
first stage's encoder, with negatives it mined, go to their own work folder and results file::

    .venv/bin/python benchmarks/rerank_recipes.py --kinds cross-encoder-distilled --first_stage outputs/table/embed_e5 \
        --zero_shot multilingual-e5-small --name e5 --score_backend openvino    # rerank_recipes_e5.json
 The distilled recipes learn from
``--teacher`` too (``--teacher_model``: an embedder's softmax over each training group). A recipe sized for this
CPU (``llm-cpu``) measures less (``LIMITS``: fewer training-curve queries, the MiniLM first stages' top 20 only);
so does the whole LLM recipe (``llm``) on a machine without a GPU (``LIMITS_WITHOUT_GPU``; ``--measure_all`` lifts
that, at hours of scoring); it trains under
``--bf16`` (bf16 autocast on a GPU, or on a CPU with bf16 hardware) and saves a checkpoint every 100 steps, so a
killed run resumes when this script is run again with the same command (its recorded training time sums the
invocations, see ``run_logged``). ``--score_precision bf16`` scores with torch's bf16 autocast and records its
agreement with float32 on a sample.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from retrievals import AutoModelForEmbedding, AutoModelForRanking, __version__  # noqa: E402
from retrievals.assets import fetch  # noqa: E402
from retrievals.data.aia_bde import parse_aia_bde, split_by_faq  # noqa: E402
from retrievals.data.io import rank  # noqa: E402
from retrievals.evaluation import evaluate_run, rerank_run, retrieve  # noqa: E402
from retrievals.training.output_dir import last_complete_checkpoint  # noqa: E402

MAX_LEN, DEPTH = 256, 50
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # --rerank_first_stage_weight values tried on the curve queries
# recipe: (model_type, base ("first_stage": the fine-tuned embedder's encoder; or an asset name), flags of
# retrievals.pipelines.rerank; "TEACHER" stands for --teacher, the embedder a distilled recipe learns from)
LLM = ["--causal_lm", "true", "--use_lora", "true", "--lora_r", "16", "--lora_alpha", "32", "--learning_rate", "2e-4",
       "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--warmup_steps", "0.1", "--max_len", str(MAX_LEN)]
CROSS_ENCODER = ["--train_group_size", "8", "--per_device_train_batch_size", "4", "--num_train_epochs", "1",
                 "--warmup_steps", "0.1", "--max_len", str(MAX_LEN)]
RECIPES: Dict[str, tuple] = {
    "cross-encoder": ("cross-encoder", "first_stage", [*CROSS_ENCODER, "--learning_rate", "3e-5"]),
    # the fresh 1-logit head barely separates a group's documents at first: at 3e-5 the loss sits at ln 8 for ~80 steps
    # and reaches 1.2 at step 130, at 1e-4 by step 80 (a 120-step pilot); the teacher's softmax over each group is a
    # denser signal than the positive alone
    "cross-encoder-lr1e-4": ("cross-encoder", "first_stage", [*CROSS_ENCODER, "--learning_rate", "1e-4"]),  # the teacher's share
    "cross-encoder-distilled": ("cross-encoder", "first_stage", [*CROSS_ENCODER, "--learning_rate", "1e-4",
                                                                 "--teacher_model", "TEACHER"]),
    # the distilled recipe at half the learning rate: built on e5's fine-tuned encoder its three seeds spread 0.928-0.941
    # over the fine-tuned e5's top 20 and seed 0's curve fell to 0.584 at step 100 (lr 1e-4 reached at step 54): a
    # gentler step keeps more of the encoder the first stage was fine-tuned into
    "cross-encoder-distilled-lr5e-5": ("cross-encoder", "first_stage", [*CROSS_ENCODER, "--learning_rate", "5e-5",
                                                                        "--teacher_model", "TEACHER"]),
    "colbert": ("colbert", "first_stage", ["--train_group_size", "8", "--learning_rate", "3e-5", "--per_device_train_batch_size", "8",
                                           "--num_train_epochs", "1", "--warmup_steps", "0.1", "--max_len", str(MAX_LEN),
                                           "--query_max_length", "64", "--use_inbatch_neg", "true"]),
    # the whole recipe: an epoch at group 8 with the teacher, under bf16 autocast (2.5x float32 on a CPU with bf16
    # hardware, like this one; mixed precision on a GPU), checkpoints every 100 steps (a killed run resumes)
    "llm": ("llm", "SmolLM2-135M-Instruct", [*LLM, "--train_group_size", "8", "--num_train_epochs", "1",
                                             "--teacher_model", "TEACHER", "--bf16", "true", "--save_strategy", "steps",
                                             "--save_steps", "100", "--save_total_limit", "1"]),
    # sized for this CPU (1.16 s per training sequence here, the llm-cpu run's record: the recipe above takes hours):
    # 150 steps of 4 queries (600 of the 2,168), groups of 4, the teacher's denser signal
    "llm-cpu": ("llm", "SmolLM2-135M-Instruct", [*LLM, "--train_group_size", "4", "--max_steps", "150", "--eval_steps", "50",
                                                 "--teacher_model", "TEACHER"]),
}
# what a recipe's runs measure when the whole set costs too much on this CPU: the training curve's queries and
# negatives (each curve query's top negatives), the first stages reranked and their top k (default: all)
# (llm-cpu: the fine-tuned MiniLM's top 20 of the 400 held-out queries, 8,000 pairs, and the original model's 6,000)
LIMITS: Dict[str, dict] = {"llm-cpu": {"curve": (25, 7), "stages": ("fine-tuned MiniLM",), "top_k": (20,)}}
# the whole LLM recipe measures as much as llm-cpu when no GPU is there (its training alone is hours of this CPU)
LIMITS_WITHOUT_GPU: Dict[str, dict] = {"llm": LIMITS["llm-cpu"]}
COMMON = ["--do_train", "--logging_steps", "10", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
          "--dataloader_drop_last", "true", "--eval_strategy", "steps", "--eval_steps", "100"]


def common_for(flags: List[str]) -> List[str]:
    """COMMON without the flags a recipe sets itself (its checkpoints: ``--save_strategy``)."""
    if "--save_strategy" not in flags:
        return COMMON
    at = COMMON.index("--save_strategy")
    return COMMON[:at] + COMMON[at + 2:]


FIRST_SEED = 42  # the seed of a single run (COMMON's before --seeds): its folders and caches keep the plain names


def aggregate(runs: List[dict]) -> dict:
    """One recipe's row from its seeds' results: each metric's mean (and sample standard deviation, ``spread``, over
    two or more seeds), the fused rows' weights per seed; the first seed's curve, and every seed's figures under
    ``per_seed`` (what a later run may reuse, see ``recorded_seeds``)."""
    def mean_of(rows: List[Dict[str, float]]) -> Dict[str, float]:
        return {m: round(statistics.mean(r[m] for r in rows), 4) for m in ("map", "mrr@10", "ndcg@10")}

    keys = runs[0]["reranked"]
    row = {"reranked": {k: mean_of([r["reranked"][k] for r in runs]) for k in keys},
           "first_stage_weight": {k: {**mean_of([r["first_stage_weight"][k] for r in runs]),
                                      "weight": runs[0]["first_stage_weight"][k]["weight"] if len(runs) == 1
                                      else [r["first_stage_weight"][k]["weight"] for r in runs],
                                      **({"curve_ndcg@10_by_weight": runs[0]["first_stage_weight"][k]["curve_ndcg@10_by_weight"]}
                                         if len(runs) == 1 else {})}
                                  for k in runs[0]["first_stage_weight"]},
           "curve": runs[0]["curve"]}
    minutes = [r["train_minutes"] for r in runs if r["train_minutes"] is not None]
    if minutes:
        row["train_minutes"] = round(statistics.mean(minutes), 1)
    if len(runs) > 1:
        def spread_of(rows: List[Dict[str, float]]) -> Dict[str, float]:
            return {m: round(statistics.stdev(r[m] for r in rows), 4) for m in ("map", "mrr@10", "ndcg@10")}

        row["spread"] = {k: spread_of([r["reranked"][k] for r in runs]) for k in keys}
        for k, fused in row["first_stage_weight"].items():
            fused["spread"] = spread_of([r["first_stage_weight"][k] for r in runs])
    row["per_seed"] = runs
    return row


def normalised(command: str) -> str:
    """A recorded command with its seed and output folder as placeholders (one command for every seed's run)."""
    return re.sub(r"--output_dir \S+", "--output_dir OUT", re.sub(r"--seed \S+", "--seed SEED", command))


def same_run(a: str, b: str) -> bool:
    """Whether two recorded commands train alike: the same flags with the same values, in any order."""
    def flags(command: str) -> List[str]:
        return sorted(re.split(r" (?=--)", normalised(command)))
    return flags(a) == flags(b)


def recorded_seeds(row: dict, command: str, first_stages: Dict[str, dict], wanted: List[str]) -> Dict[int, dict]:
    """The seeds of ``row`` (a recipe's results from an earlier run of this script) that this run may reuse instead of
    retraining: recorded with the same rerank command (seed aside) over first stages with the same figures on the
    same queries, and measured over every row this run asks for (``wanted``: "STAGE top K" names; a seed measured
    over the top 20 only is no answer to --top_k 20 50). Training on this CPU is deterministic for a seed (the main job and the e5 row retrain to the same
    figures), so such a seed retrained would give the same model. A row written before seeds were recorded is its
    command's one seed, over the results' first stages of that time (``legacy_first_stages``)."""
    if not row or not same_run(row.get("command", ""), command):
        return {}
    if "per_seed" in row and isinstance(row["per_seed"], list) and all("seed" in r for r in row["per_seed"]):
        runs = row["per_seed"]
    else:  # one seed, recorded before per-seed records: its seed from the command, its first stages the results'
        seed = re.search(r"--seed (\d+)", row.get("command", ""))
        if not seed or "legacy_first_stages" not in row:
            return {}
        runs = [{**{k: row[k] for k in ("train_minutes", "curve", "reranked", "first_stage_weight") if k in row},
                 "seed": int(seed.group(1)), "first_stages": row["legacy_first_stages"], "scored_with": "torch"}]
    return {r["seed"]: r for r in runs if r.get("first_stages") == first_stages and set(wanted) <= set(r.get("reranked", {}))}


def best_two_stage(rerankers: Dict[str, dict]) -> dict:
    """The two-stage row: the best nDCG@10 of a fine-tuned first stage + a reranker (alone or fused), among the
    recipes measured over the most seeds, so a single seed's luck never displaces a mean over three (a recipe
    with fewer seeds waits for the rest of them)."""
    most = max((len(r.get("seeds", [FIRST_SEED])) for r in rerankers.values()), default=0)
    best = max(((kind, key, m) for kind, r in rerankers.items() if len(r.get("seeds", [FIRST_SEED])) == most
                for key, m in [*r["reranked"].items(), *((f"{k}, first stage weight " + (
                    "/".join(map(str, v["weight"])) + " (per seed)" if isinstance(v["weight"], list) else str(v["weight"])), v)
                                                          for k, v in r.get("first_stage_weight", {}).items())]
                if key.startswith("fine-tuned")), key=lambda t: t[2]["ndcg@10"], default=None)
    if not best:
        return {}
    return {"reranker": best[0], "candidates": best[1], "first_stage": best[1].split(" top ")[0],
            "seeds": rerankers[best[0]].get("seeds", [FIRST_SEED]),
            **{m: best[2][m] for m in ("map", "mrr@10", "ndcg@10", "spread") if m in best[2]}}


def relative(path: Path) -> str:
    """``path`` as recorded: relative to the repository when inside it (results name no machine's folders)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def cli(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", f"retrievals.pipelines.{module}", *args]


def seconds_record(log: Path) -> Path:
    """Where ``run_logged`` keeps the seconds of each invocation of the run logged to ``log``."""
    return log.with_suffix(".seconds.json")


def recorded_seconds(log: Path) -> Optional[float]:
    """The wall seconds of a finished run summed over its invocations (None if it was not run by ``run_logged``)."""
    record = seconds_record(log)
    return sum(json.loads(record.read_text())) if record.is_file() else None


def run_logged(command: List[str], log: Path, folder: Optional[Path] = None) -> float:
    """Runs ``command`` (its output appended to ``log``); returns the wall seconds of this run, summed over the
    invocations a killed run was resumed over: each invocation's seconds are kept in ``<log>.seconds.json``, updated
    every minute while it runs, and count when the next invocation resumes from a checkpoint in ``folder`` (a run
    that starts over counts from zero; without ``folder``, as mining, every invocation starts over)."""
    record = seconds_record(log)
    resumed = folder is not None and record.is_file() and last_complete_checkpoint(folder)
    earlier = json.loads(record.read_text()) if resumed else []
    start = time.perf_counter()

    def write(now: float) -> None:
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps([*earlier, round(now - start, 1)]))
        os.replace(tmp, record)

    with log.open("a") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        while process.poll() is None:
            write(time.perf_counter())
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
    write(time.perf_counter())
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return recorded_seconds(log)


def finished(folder: Path) -> bool:
    manifest = folder / "retrievals_run.json"
    return manifest.is_file() and json.loads(manifest.read_text()).get("status") == "finished"


def write_jsonl(path: Path, rows) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def metrics(run, qrels) -> Dict[str, float]:
    res = evaluate_run(run, qrels, k_values=(10,))
    return {k: round(res[k], 4) for k in ("map", "mrr@10", "ndcg@10")}


def top(scores: Dict[str, float], k: int) -> List[str]:
    return rank(scores)[:k]  # the order rerank_run takes its candidates in


def ranks(values: List[float]) -> List[int]:
    """Each value's rank (for Spearman's correlation, as Pearson's over ranks; ties here are measure-zero floats)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0] * len(values)
    for position, index in enumerate(order):
        out[index] = position
    return out


class CachedRanker:
    """``compute_score`` from scores computed once per (query, FAQ), so rerank_run's variants cost no model calls."""

    def __init__(self, scores: Dict[tuple, float], split, queries: Dict[str, str]) -> None:
        self.by_text = {(queries[q], split.corpus[d]): s for (q, d), s in scores.items() if q in queries}

    def compute_score(self, pairs, batch_size: int = 32, show_progress_bar: bool = False) -> List[float]:
        return [self.by_text[pair] for pair in pairs]


def cached_scores(model, name: str, pairs, split, queries, work: Path, chunk: int = 1024) -> Dict[tuple, float]:
    """Scores of (qid, doc_id) pairs by ``model``, cached in ``work/scores-<name>.json``, written after every ``chunk``
    pairs (a killed run keeps what it scored)."""
    path = work / f"scores-{name}.json"
    cache = {tuple(k.split("\t")): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}
    todo = sorted(set(pairs) - set(cache))
    for start in range(0, len(todo), chunk):
        part = todo[start: start + chunk]
        values = model.compute_score([(queries[q], split.corpus[d]) for q, d in part], batch_size=32, show_progress_bar=True)
        cache.update({pair: float(v) for pair, v in zip(part, values)})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"\t".join(k): v for k, v in cache.items()}))
        os.replace(tmp, path)
        print(f"scores-{name}: {min(start + chunk, len(todo))}/{len(todo)} pairs scored", flush=True)
    return cache


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=["cross-encoder", "colbert"], choices=sorted(RECIPES), help="Recipes to run.")
    p.add_argument("--teacher", default="multilingual-e5-small",
                   help="The teacher embedder of the distilled recipes (a folder or an asset name). Default: zero-shot "
                        "multilingual-e5-small, whose softmax over the training groups is soft (the positive's share 0.732 at "
                        "temperature 0.02, as training logs it); the fine-tuned e5 was trained on these queries: 0.985.")
    p.add_argument("--first_stage", default=None, help="A fine-tuned embedder (default: run the main job into WORK/embedder).")
    p.add_argument("--zero_shot", default="all-MiniLM-L6-v2",
                   help="The zero-shot first stage (a folder or an asset name): the model --first_stage was fine-tuned from.")
    p.add_argument("--name", default="MiniLM", help="How the two first stages are named (zero-shot NAME, fine-tuned NAME).")
    p.add_argument("--more_first_stages", nargs="*", default=[], metavar="NAME=PATH",
                   help="Further first stages to rerank (PATH a folder or an asset name), e.g. 'fine-tuned e5=outputs/table/"
                        "embed_e5'; a NAME starting with 'fine-tuned' competes for the two-stage row.")
    p.add_argument("--work", default=None,
                   help="Where models, mined negatives and score caches go (default: outputs/rerank_recipes, or "
                        "outputs/rerank_recipes_NAME for another --name); one work folder serves one first stage.")
    p.add_argument("--eval_queries", type=int, default=300)
    p.add_argument("--curve_queries", type=int, default=100)
    p.add_argument("--top_k", type=int, nargs="+", default=[20, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[FIRST_SEED],
                   help="Train each recipe once per seed; rows give the mean and spread (seed 42's run is reused).")
    p.add_argument("--max_steps", type=int, default=None, help="Cap training (smoke runs).")
    p.add_argument("--score_backend", choices=("torch", "openvino"), default="torch",
                   help="What scores the held-out pairs for cross-encoders: torch, or OpenVINO's float32 graph (the "
                        "library's backend: the same scores within 1e-5 here, about twice as fast on this CPU; ColBERT and "
                        "LLM rerankers always score with torch).")
    p.add_argument("--score_precision", choices=("fp32", "bf16"), default="fp32",
                   help="Precision of the torch scoring (inference_precision): bf16 autocast is faster on CPUs with bf16 "
                        "instructions; its agreement with float32 on a sample is recorded (Spearman, max diff).")
    p.add_argument("--measure_all", action="store_true",
                   help="Without a GPU, measure a recipe that LIMITS_WITHOUT_GPU limits (llm) over every first stage and "
                        "--top_k as a GPU run would: for llm tens of thousands more pairs at about 4 minutes per 1,024 "
                        "here; its scores are cached every 1,024 pairs, so a killed run goes on where it stopped.")
    p.add_argument("--out", default=None, help="The results file (default: benchmarks/results/rerank_recipes.json, or "
                                              "rerank_recipes_NAME.json for another --name).")
    opts = p.parse_args()
    suffix_of_name = "" if opts.name == "MiniLM" else f"_{opts.name}"
    work = Path(opts.work or f"outputs/rerank_recipes{suffix_of_name}").resolve()
    out = Path(opts.out or f"benchmarks/results/rerank_recipes{suffix_of_name}.json")
    work.mkdir(parents=True, exist_ok=True)
    import transformers

    results = json.loads(out.read_text()) if out.is_file() else {}
    for row in results.get("rerankers", {}).values():  # rows without per-seed records: the first stages they were measured over
        if "per_seed" not in row and "first_stages" in results:
            row.setdefault("legacy_first_stages", results["first_stages"])
    results.update({"machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
                    + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
                    "date": datetime.date.today().isoformat(),
                    "versions": {"retrievals": __version__, "transformers": transformers.__version__, "torch": torch.__version__,
                                 "python": platform.python_version()}})
    results.setdefault("rerankers", {})
    commands = results.setdefault("commands", {})

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, out)

    split = split_by_faq(parse_aia_bde(fetch("aia-bde")), 0.3, 0)
    zero_shot = str(Path(opts.zero_shot).resolve()) if Path(opts.zero_shot).exists() else str(fetch(opts.zero_shot))
    fine_name = f"fine-tuned {opts.name}"
    first_stage = Path(opts.first_stage).resolve() if opts.first_stage else work / "embedder"
    # the work folder's negatives, curve and score caches belong to the first stage that mined them: never reuse
    # another's (a rerun with another --first_stage and the same --work would otherwise train on them)
    owner, shown_stage = work / "first_stage.txt", relative(first_stage)
    if owner.is_file() and owner.read_text().strip() != shown_stage:
        raise SystemExit(f"{owner}: this work folder belongs to first stage {owner.read_text().strip()!r}, not "
                         f"{shown_stage!r}; pass another --work.")
    owner.write_text(shown_stage + "\n")
    if not opts.first_stage and not finished(first_stage):
        command = cli("demo", "--output_dir", str(first_stage), "--overwrite_output_dir")
        run_logged(command, work / "embedder.log")
    commands["first_stage"] = "python -m retrievals.pipelines.demo --output_dir OUT" if not opts.first_stage else f"given: {shown_stage}"
    commands["more_first_stages"] = opts.more_first_stages

    # held-out queries: a fixed random sample measured, a disjoint one for the training curve
    test_ids = sorted(split.test_queries)
    random.Random(0).shuffle(test_ids)
    measured = {q: split.test_queries[q] for q in test_ids[: opts.eval_queries]}
    curve = test_ids[opts.eval_queries: opts.eval_queries + opts.curve_queries]
    qrels = {q: split.test_qrels[q] for q in measured}
    stages = {f"zero-shot {opts.name}": zero_shot, fine_name: str(first_stage)}
    for item in opts.more_first_stages:
        name, _, path = item.partition("=")
        if not name or not path or name in stages:
            raise SystemExit(f"--more_first_stages {item!r}: expected a new NAME=PATH")
        stages[name] = str(fetch(path)) if not Path(path).exists() else str(Path(path).resolve())
    runs = {}
    for name, path in stages.items():
        embedder = AutoModelForEmbedding.from_pretrained(path, query_max_length=64, document_max_length=MAX_LEN)
        runs[name] = retrieve(embedder, split.corpus, {**measured, **{q: split.test_queries[q] for q in curve}}, top_k=DEPTH)
    results["first_stages"] = {name: metrics({q: run[q] for q in measured}, qrels) for name, run in runs.items()}
    earlier_k = results.get("eval", {}).get("top_k", [])  # rows of earlier runs keep theirs (each row records its own)
    results["eval"] = {"dataset": "AIA-BDE v2.0 held-out FAQs (split_by_faq 0.3, seed 0)", "measured_queries": len(measured),
                       "first_stage": fine_name, "zero_shot": opts.zero_shot,
                       "curve_queries": len(curve), "documents": len(split.corpus),
                       "top_k": sorted(set(opts.top_k) | set(earlier_k))}
    print("first stages", results["first_stages"], flush=True)
    save()

    # training data: negatives mined by the fine-tuned first stage from the training FAQs only
    train_fids = sorted(split.train_faq_ids)
    write_jsonl(work / "pool.jsonl", ({"text": split.corpus[f]} for f in train_fids))
    write_jsonl(work / "train_pairs.jsonl", ({"query": split.train_queries[q], "positive": [split.corpus[d] for d in split.train_qrels[q]]}
                                            for q in sorted(split.train_queries)))
    mined = work / "train_hn.jsonl"
    mine = cli("build_hn", "--model_name_or_path", str(first_stage), "--input_file", str(work / "train_pairs.jsonl"),
               "--candidate_pool", str(work / "pool.jsonl"), "--output_file", str(mined), "--range_for_sampling", "0-30",
               "--negative_number", "7", "--min_negatives", "7", "--overwrite")
    if not mined.is_file():
        run_logged(mine, work / "build_hn.log")
    commands["build_hn"] = (" ".join(["python", "-m", "retrievals.pipelines.build_hn", *mine[3:]])  # no machine's folders
                            .replace(str(work), "WORK").replace(str(first_stage), "FIRST_STAGE"))
    fine_run = runs[fine_name]
    write_jsonl(work / "curve.jsonl", ({"query": split.test_queries[q], "positive": [split.corpus[d] for d in split.test_qrels[q]],
                                       "negative": [d_text for d_text in (split.corpus[d] for d in top(fine_run[q], 20)
                                                                          if d not in split.test_qrels[q])]} for q in curve))

    held_out = {q: split.test_queries[q] for q in [*measured, *curve]}
    autocast = "" if opts.score_precision == "fp32" else f"-{opts.score_precision}"  # torch's scores: one cache per precision
    curve_queries = {q: split.test_queries[q] for q in curve}

    def reranked(ranker, stage: str, k: int, queries, weight: float = 0.0):  # the library's rerank_run, cached scores
        return metrics(rerank_run(ranker, split.corpus, queries, {q: runs[stage][q] for q in queries}, top_k=k,
                                  first_stage_weight=weight), {q: split.test_qrels[q] for q in queries})

    for kind in opts.kinds:
        model_type, base, flags = RECIPES[kind]
        limits = LIMITS.get(kind) or ({} if torch.cuda.is_available() else LIMITS_WITHOUT_GPU.get(kind, {}))
        lifted = bool(opts.measure_all and kind not in LIMITS and set(limits) - {"curve"})
        if lifted:  # measured as on a GPU; its training (the curve it saw) unchanged
            limits = {k: v for k, v in limits.items() if k == "curve"}
        ks = [k for k in opts.top_k if k in limits.get("top_k", opts.top_k)]
        if not ks or set(limits.get("stages", ())) - set(runs):
            raise SystemExit(f"{kind}: its limits {limits} name first stages or top k this run lacks ({sorted(runs)}, {opts.top_k})")
        stages_of = {s: runs[s] for s in limits.get("stages", runs)}  # the first stages this recipe reranks
        curve_file = work / "curve.jsonl"
        if "curve" in limits:  # the training curve on fewer held-out queries and candidates
            n_queries, n_negatives = limits["curve"]
            curve_file = work / f"curve-{n_queries}x{n_negatives}.jsonl"
            write_jsonl(curve_file, ({**row, "negative": row["negative"][:n_negatives]} for row in
                                     (json.loads(line) for line in (work / "curve.jsonl").read_text(encoding="utf-8").splitlines()[:n_queries])))
        base_path = str(first_stage) if base == "first_stage" else str(fetch(base))
        teacher = None
        if "TEACHER" in flags:  # resolved (or fetched) only for the recipes that learn from it
            teacher = str(Path(opts.teacher).resolve()) if Path(opts.teacher).exists() else str(fetch(opts.teacher))
            flags = [teacher if f == "TEACHER" else f for f in flags]
        previous = results["rerankers"].get(kind, {})
        seeds = {}

        def shown(command: List[str]) -> str:  # the command as recorded: paths of this machine replaced by names
            text = " ".join(["python", "-m", "retrievals.pipelines.rerank", *command[3:]]).replace(str(work), "WORK")
            return (text.replace(base_path, "FIRST_STAGE" if base == "first_stage" else base)
                    .replace(teacher or "TEACHER", "TEACHER"))

        for seed in opts.seeds:
            name = kind if seed == FIRST_SEED else f"{kind}-seed{seed}"  # the first seed keeps the unseeded names
            folder = work / name
            command = cli("rerank", "--model_name_or_path", base_path, "--model_type", model_type, "--train_data", str(mined),
                          "--eval_data", str(curve_file), "--output_dir", str(folder), "--overwrite_output_dir",
                          *common_for(flags), "--seed", str(seed), *flags)
            if base == "first_stage":
                command += ["--backbone_only", "true"]  # the embedder's encoder, a fresh reranker head
            if opts.max_steps:
                command += ["--max_steps", str(opts.max_steps)]
            reusable = recorded_seeds(previous, shown(command), results["first_stages"],
                                      [f"{stage} top {k}" for stage in stages_of for k in ks])
            if not finished(folder) and seed in reusable:
                print(f"{kind} seed {seed}: reusing its recorded results (same command, same first stages)", flush=True)
                seeds[seed] = reusable[seed]
                continue
            log = work / f"{name}.log"
            seconds = run_logged(command, log, folder) if not finished(folder) else recorded_seconds(log)
            one = {"seed": seed, "first_stages": results["first_stages"]}
            history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
            runtime = [h["train_runtime"] for h in history if "train_runtime" in h]
            minutes = seconds / 60 if seconds is not None else (runtime[-1] / 60 if runtime else None)  # a reused run: its record
            one["train_minutes"] = round(minutes, 1) if minutes is not None else None
            one["curve"] = [{"step": h["step"], "ndcg@10": h["eval_ndcg@10"]} for h in history if "eval_ndcg@10" in h]
            if (folder / "training_curve.png").is_file():  # the held-out curve, beside the results
                shutil.copyfile(folder / "training_curve.png", out.parent / f"{out.stem}_{name}_curve.png")
            backend = opts.score_backend if model_type == "cross-encoder" else "torch"  # the CPU backends' kinds
            precision = {"inference_precision": opts.score_precision} if backend == "torch" else {}
            after = AutoModelForRanking.from_pretrained(str(folder), backend=backend, **precision)
            suffix = autocast if backend == "torch" else ""
            one["scored_with"] = backend + (f" {opts.score_precision} autocast" if suffix else "")
            pairs = {(q, d) for run in stages_of.values() for q in held_out for d in top(run[q], max(ks))}
            if one["scored_with"] != "torch":  # its scores against torch float32's on a sample
                sample = [(held_out[q], split.corpus[d]) for q, d in sorted(pairs)[:64]]
                got, exact = after.compute_score(sample), AutoModelForRanking.from_pretrained(str(folder)).compute_score(sample)
                diff = max(abs(a - b) for a, b in zip(got, exact))
                if backend != "torch":  # another float32 graph: a figure, and a bound
                    one["score_backend_max_diff"] = diff
                    if diff > 1e-4:
                        raise SystemExit(f"{backend} scores differ from torch's by {diff:.2e}")
                else:  # autocast: recorded, not bounded
                    one["score_precision_vs_fp32"] = {"pairs": len(sample), "max_diff": round(diff, 4),
                                                      "spearman": round(statistics.correlation(ranks(got), ranks(exact)), 4)}
                    print(kind, seed, "scores vs float32", one["score_precision_vs_fp32"], flush=True)
            fine = CachedRanker(cached_scores(after, f"{name}-finetuned{suffix}", pairs, split, held_out, work), split, held_out)
            del after
            one["reranked"] = {f"{stage} top {k}": reranked(fine, stage, k, measured) for stage in stages_of for k in ks}
            # --rerank_first_stage_weight: chosen on the curve queries (held out, disjoint from the measured ones)
            one["first_stage_weight"] = {}
            for stage in stages_of:
                for k in ks:
                    by_weight = {w: reranked(fine, stage, k, curve_queries, w)["ndcg@10"] for w in WEIGHTS}
                    w = max(WEIGHTS, key=lambda x: (by_weight[x], -x))
                    one["first_stage_weight"][f"{stage} top {k}"] = {
                        "weight": w, "curve_ndcg@10_by_weight": by_weight, **reranked(fine, stage, k, measured, w)}
            print(kind, seed, json.dumps(one["reranked"]), flush=True)
            seeds[seed] = one
        row = {"base": base, "model_type": model_type, "seeds": list(opts.seeds), "command": normalised(shown(command)),
               "top_k": ks, **({"measure_all": True} if lifted else {})}
        if "--teacher_model" in flags:
            row["teacher"] = opts.teacher
        if autocast:  # how its torch scores were made (each seed's agreement with float32 in per_seed)
            row["score_precision"] = opts.score_precision
        row.update(aggregate(list(seeds.values())))
        if "train_minutes" not in row and previous.get("train_minutes"):
            row["train_minutes"] = previous["train_minutes"]  # measured when the run was made, before runs recorded it
        before = AutoModelForRanking.from_pretrained(base_path, model_type=model_type, max_length=MAX_LEN, backbone_only=True,
                                                     inference_precision=opts.score_precision)  # torch scores the original
        k_min = min(ks)
        base_pairs = {(q, d) for q in measured for d in top(fine_run[q], k_min)}
        original = f"{model_type}-original" if base == "first_stage" else f"{model_type}-{base}-original"  # per base model
        original += autocast
        row[f"original_on_fine-tuned top {k_min}"] = reranked(
            CachedRanker(cached_scores(before, original, base_pairs, split, measured, work), split, measured), fine_name,
            k_min, measured)
        del before
        print(kind, json.dumps(row["reranked"]), json.dumps(row["first_stage_weight"]), flush=True)
        results["rerankers"][kind] = row
        save()

    two_stage = best_two_stage(results["rerankers"])
    if two_stage:
        results["two_stage"] = two_stage
    save()
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

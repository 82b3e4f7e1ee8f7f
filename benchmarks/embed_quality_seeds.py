"""Fine-tuning quality, retrievals vs sentence-transformers, over several seeds (the single-seed
comparison of ``embed_cpu.py --quality`` is within seed noise).

    python benchmarks/embed_quality_seeds.py --seeds 0 1 2 3 4 [--out benchmarks/results/embed_quality_seeds.json]

Same setting as ``embed_cpu.py --quality``: all-MiniLM-L6-v2, AIA-BDE training split (1 hard negative mined
by the zero-shot model), batch 32, lr 5e-5, one epoch, fp32; ours InfoNCE at temperature 0.05, theirs
MultipleNegativesRankingLoss at scale 20. Each seed sets both libraries' seed (data order, dropout).
Reports held-out nDCG@10 / MAP / MRR@10 per seed, their means and standard deviations, and the paired
difference. One epoch takes about 18 minutes a library on a 2-core CPU, seconds on a GPU.
The model is loaded in float32; a copy whose weights were rounded to fp16 (to carry it to a GPU machine
within the transfer limit) is recorded as such, and both libraries start from the same weights.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from embed_cpu import D_LEN, Q_LEN, metrics_from_embeddings, train_ours, train_theirs, triplets  # noqa: E402

from retrievals import AutoModelForEmbedding, __version__  # noqa: E402
from retrievals.assets import fetch  # noqa: E402
from retrievals.data.aia_bde import parse_aia_bde, split_by_faq  # noqa: E402
from retrievals.pipelines import demo  # noqa: E402


ROUNDED: list = []


def restore_fp32(model_dir: Path, work: Path) -> str:
    """A copy of the model folder whose weights are float32 again (after an fp16 round trip)."""
    from safetensors.torch import load_file, save_file

    out = work / "model_fp32"
    shutil.copytree(model_dir, out)
    weights = load_file(str(out / "model.safetensors"))
    ROUNDED.append(any(v.dtype == torch.float16 for v in weights.values()))
    save_file({k: v.to(torch.float32) for k, v in weights.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return str(out)


def summarize(per_seed: dict) -> dict:
    """Means, standard deviations and the paired difference (ours - theirs) of each metric over the seeds."""
    summary = {}
    for metric in ("ndcg@10", "map", "mrr@10"):
        a = [r["retrievals"][metric] for r in per_seed.values()]
        b = [r["sentence_transformers"][metric] for r in per_seed.values()]
        diff = [x - y for x, y in zip(a, b)]

        def sd(v: list) -> float:
            return round(statistics.stdev(v), 4) if len(v) > 1 else 0.0

        summary[metric] = {"retrievals_mean": round(statistics.mean(a), 4), "retrievals_std": sd(a),
                           "sentence_transformers_mean": round(statistics.mean(b), 4), "sentence_transformers_std": sd(b),
                           "mean_difference": round(statistics.mean(diff), 4), "difference_std": sd(diff),
                           "seeds_retrievals_at_least_as_good": sum(d >= 0 for d in diff),
                           "ratio_of_means": round(statistics.mean(a) / statistics.mean(b), 4)}
    return summary


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--limit", type=int, default=None, help="train on the first N queries only (script check)")
    p.add_argument("--out", default="benchmarks/results/embed_quality_seeds.json")
    opts = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seeds-"))
    model_path = restore_fp32(fetch("all-MiniLM-L6-v2"), work)
    split = split_by_faq(parse_aia_bde(fetch("aia-bde")), 0.3, 0)
    base = AutoModelForEmbedding.from_pretrained(model_path, query_max_length=Q_LEN, document_max_length=D_LEN)
    rows = triplets(split, demo.mine_hard_negatives(base, split, n=1, start_rank=3, depth=30))[: opts.limit]
    queries, docs = list(split.test_queries.values()), list(split.corpus.values())
    zero = metrics_from_embeddings(split, base.encode_queries(queries), base.encode_corpus(docs))
    import sentence_transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({platform.machine()})",
               "date": datetime.date.today().isoformat(),
               "versions": {"retrievals": __version__, "sentence_transformers": sentence_transformers.__version__,
                            "torch": torch.__version__},
               "settings": {"model": "all-MiniLM-L6-v2" + (" (weights rounded to fp16, trained in fp32)" if ROUNDED[0] else ""),
                            "train_queries": len(rows), "test_queries": len(queries), "epochs": 1, "batch": 32,
                            "precision": "fp32", "seeds": opts.seeds},
               "zero_shot": zero, "per_seed": {}}
    for seed in opts.seeds:
        _, ours_dir = train_ours(model_path, rows, work / f"ours{seed}", extra=["--seed", str(seed)])
        tuned = AutoModelForEmbedding.from_pretrained(ours_dir)
        ours = metrics_from_embeddings(split, tuned.encode_queries(queries), tuned.encode_corpus(docs))
        _, st = train_theirs(model_path, rows, work / f"st{seed}", seed=seed, device=device)
        st.max_seq_length = D_LEN
        theirs = metrics_from_embeddings(split, st.encode(queries), st.encode(docs))
        results["per_seed"][str(seed)] = {"retrievals": ours, "sentence_transformers": theirs}
        print(f"seed {seed}: retrievals {ours}  sentence-transformers {theirs}", flush=True)
        del tuned, st
        results["summary"] = summarize(results["per_seed"])
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.out).write_text(json.dumps(results, indent=2) + "\n")  # after every seed: a cut-off run keeps its seeds
    print(json.dumps(results["summary"], indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

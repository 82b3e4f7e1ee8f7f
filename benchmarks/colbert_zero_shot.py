"""The seed's "rerank colbert (zero shot)" rows, on Vaswani and AIA-BDE held-out FAQs: ColBERT late
interaction reranking the top 20 of BM25 and of zero-shot all-MiniLM-L6-v2, beside each first stage alone.

    .venv/bin/python benchmarks/colbert_zero_shot.py [--trained outputs/rerank_recipes/colbert] [--work outputs/colbert_zero_shot]

Two ColBERT models, neither trained on the data it is measured on:
* ``minilm-colbert``: all-MiniLM-L6-v2's token vectors as they are (full size, the projection starts as the
  identity), no training at all;
* ``aia-colbert`` (with ``--trained``): the ColBERT fine-tuned on AIA-BDE's training FAQs by
  ``benchmarks/rerank_recipes.py``: zero-shot on Vaswani (another language and domain); on AIA-BDE it is
  measured on held-out FAQs only.
Every figure comes from ``python -m retrievals.pipelines.evaluate`` (the commands are recorded);
results: ``benchmarks/results/colbert_zero_shot.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from retrievals import AutoModelForRanking, __version__  # noqa: E402
from retrievals.assets import fetch  # noqa: E402

DATASETS = {"vaswani": str(ROOT.parent / "shared" / "data" / "vaswani"), "aia-bde": "aia-bde"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trained", default=None, help="A ColBERT trained elsewhere (zero-shot on Vaswani).")
    p.add_argument("--work", default="outputs/colbert_zero_shot")
    p.add_argument("--top_k", type=int, default=20)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--out", default="benchmarks/results/colbert_zero_shot.json")
    opts = p.parse_args()
    work = Path(opts.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    minilm = str(fetch("all-MiniLM-L6-v2"))
    colbert = work / "minilm-colbert"
    config = colbert / "retrievals_config.json"
    # colbert_dim=-1: the encoder's own token vectors (the default, 128, starts from a random projection: no
    # zero-shot model at all); a folder saved otherwise (by this script before 2026-12-02) is made again
    if not config.is_file() or json.loads(config.read_text())["colbert_dim"] != 384:
        AutoModelForRanking.from_pretrained(minilm, model_type="colbert", max_length=256,
                                            colbert_dim=-1).save_pretrained(colbert)
    rerankers = [f"minilm-colbert={colbert}"] + ([f"aia-colbert={Path(opts.trained).resolve()}"] if opts.trained else [])
    import torch
    import transformers

    results = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} CPUs, no GPU"
               if not torch.cuda.is_available() else torch.cuda.get_device_name(),
               "versions": {"retrievals": __version__, "transformers": transformers.__version__, "torch": torch.__version__},
               "top_k": opts.top_k, "runs": {}}
    if Path(opts.out).is_file():  # keep the datasets this run does not measure
        earlier = json.loads(Path(opts.out).read_text())
        if earlier.get("top_k") == opts.top_k:
            results["runs"] = {k: v for k, v in earlier["runs"].items() if k.split(" / ")[0] not in opts.datasets}
    for dataset in opts.datasets:
        source = DATASETS[dataset]
        for first in ("bm25", "minilm"):
            out = work / f"{dataset}-{first}"
            command = [sys.executable, "-m", "retrievals.pipelines.evaluate", "--dataset", source, "--output_dir", str(out),
                       *(["--models", f"minilm={minilm}"] if first == "minilm" else []), "--rerankers", *rerankers,
                       "--first_stage", first, "--rerank_top_k", str(opts.top_k), "--overwrite"]
            subprocess.run(command, check=True, cwd=ROOT)
            report = json.loads((out / "report.json").read_text())
            results["runs"][f"{dataset} / {first} top {opts.top_k}"] = {
                "dataset": report["dataset"], "command": " ".join(["python", *command[1:]]).replace(str(ROOT.parent), ".."),
                "rows": {r["name"]: {"kind": r["kind"], **r["metrics"]} for r in report["results"]}}
            Path(opts.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""The results table: one row per experiment of the seed's table, original vs fine-tuned, on AIA-BDE.

    .venv/bin/python benchmarks/results_table.py --run embed embed_no_hn embed_llm embed_e5   # the embedder rows (about 90 min here)
    .venv/bin/python benchmarks/rerank_recipes.py --kinds cross-encoder colbert       # the reranker rows (about 90 min here)
    .venv/bin/python benchmarks/results_table.py --run embed_e5 --seeds 42 0 1          # a row over 3 seeds (mean ± sd)
    .venv/bin/python benchmarks/results_table.py                                       # table from the saved results

Embedder rows run the main job (``retrievals.pipelines.demo``) and keep its ``results.json`` in
``benchmarks/results/table/``; reranker rows come from ``benchmarks/results/rerank_recipes*.json``. The
table is written to ``benchmarks/results/results_table.md`` (and ``.json``); ``--readme`` copies it, and the
zero-shot ColBERT table (``colbert_zero_shot.json``), into README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RESULTS = ROOT / "benchmarks" / "results"
EMBED_ROWS = {  # name: (experiment, model, demo flags)
    "embed": ("embed pairwise finetune, mined hard negatives", "all-MiniLM-L6-v2", []),
    "embed_no_hn": ("embed pairwise finetune, in-batch negatives only", "all-MiniLM-L6-v2", ["--hard_negatives", "0"]),
    # the main job plus the fine-tuned multilingual-e5-small row's model as a teacher (run --run embed_e5 first; it
    # saw the same training FAQs only), at its training temperature
    "embed_teacher": ("embed pairwise finetune, mined hard negatives, e5 teacher (`--teacher_model`)", "all-MiniLM-L6-v2",
                      ["--teacher_model", str(ROOT / "outputs" / "table" / "embed_e5"), "--teacher_temperature", "0.02"]),
    "embed_llm": ("embed llm finetune (LoRA), mean pooling, in-batch negatives", "SmolLM2-135M-Instruct",
                  ["--use_lora", "--pooling_method", "mean", "--learning_rate", "2e-4", "--per_device_train_batch_size", "16",
                   "--hard_negatives", "0"]),
    # the same recipe for half an epoch: 3.7x SmolLM2's parameters, about a minute a step on this CPU
    "embed_llm_qwen": ("embed llm finetune (LoRA), mean pooling, in-batch negatives, half an epoch", "Qwen2.5-Coder-0.5B-Instruct",
                       ["--use_lora", "--pooling_method", "mean", "--learning_rate", "2e-4", "--per_device_train_batch_size", "16",
                        "--hard_negatives", "0", "--num_train_epochs", "0.5"]),
    "embed_e5": ("embed pairwise finetune, mined hard negatives", "multilingual-e5-small",
                 ["--learning_rate", "2e-5", "--temperature", "0.02"]),
}


DEFAULT_SEED = 42  # the main job's; its run is ``table/NAME.json``, another seed's ``table/NAME-seedS.json``


def run_embed_row(name: str, seed: int = DEFAULT_SEED) -> None:
    from retrievals.assets import fetch
    from retrievals.pipelines import demo

    _, model, flags = EMBED_ROWS[name]
    tag = name if seed == DEFAULT_SEED else f"{name}-seed{seed}"
    out = ROOT / "outputs" / "table" / tag
    argv = ["--output_dir", str(out), "--overwrite_output_dir", "--seed", str(seed), *flags]
    if model != "all-MiniLM-L6-v2":
        argv += ["--model_name_or_path", str(fetch(model))]
    demo.main(argv)
    (RESULTS / "table").mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "results.json", RESULTS / "table" / f"{tag}.json")


def seed_runs(name: str) -> list:
    """The saved runs of an embedder row: the default seed's first, then the others' by seed."""
    table = RESULTS / "table"
    files = [table / f"{name}.json"] if (table / f"{name}.json").is_file() else []
    files += sorted(table.glob(f"{name}-seed*.json"), key=lambda f: int(f.stem.rsplit("seed", 1)[1]))
    return [json.loads(f.read_text()) for f in files]


def build_table() -> str:
    rows = []
    for name, (experiment, model, flags) in EMBED_ROWS.items():
        runs = seed_runs(name)
        if not runs:
            continue
        after = {m: [r["after"][m] for r in runs] for m in runs[0]["after"]}
        rows.append({"experiment": experiment, "model": model, "task": "retrieval from all 855 FAQs",
                     "original": runs[0]["before"], "finetuned": {m: statistics.mean(v) for m, v in after.items()},
                     "spread": {m: statistics.stdev(v) for m, v in after.items()} if len(runs) > 1 else None,
                     "seeds": [r["settings"]["seed"] for r in runs],
                     "minutes": round(statistics.mean(r["train_seconds"] for r in runs) / 60, 1),
                     "command": f"benchmarks/results_table.py --run {name}"
                                + (f" --seeds {' '.join(str(r['settings']['seed']) for r in runs)}" if len(runs) > 1 else "")})
    files = reranker_results()
    label = {"cross-encoder": "rerank cross encoder", "cross-encoder-lr1e-4": "rerank cross encoder, lr 1e-4",
             "cross-encoder-distilled": "rerank cross encoder, lr 1e-4, distilled "
             "from a teacher embedder (`--teacher_model`)",
             "cross-encoder-distilled-lr5e-5": "rerank cross encoder, lr 5e-5, distilled from a teacher embedder "
             "(`--teacher_model`)", "colbert": "rerank colbert", "llm": "rerank llm finetune (LoRA), "
             "one epoch, groups of 8, distilled from a teacher embedder, bf16 autocast",
             "llm-cpu": "rerank llm finetune (LoRA), sized for this CPU: 600 training queries, groups of 4, distilled from a "
             "teacher embedder"}
    for q in files:
        for kind, experiment in label.items():
            r = q.get("rerankers", {}).get(kind)
            if not r:
                continue
            ks = r.get("top_k", q["eval"]["top_k"])  # the row's own (rows written before rows recorded it: the file's)
            k = min(ks)
            stage = q["eval"].get("first_stage", "fine-tuned MiniLM")
            encoder = q["eval"].get("zero_shot", "all-MiniLM-L6-v2")
            base = f"{encoder} (encoder of the fine-tuned embedder)" if r["base"] == "first_stage" else r["base"]
            if r.get("teacher"):
                base += f"; teacher {r['teacher']}"
            rows.append({"experiment": experiment, "model": base,
                         "task": f"rerank top {k} of the {stage} embedder ({q['eval']['measured_queries']} queries; first stage "
                                 f"alone: nDCG@10 {q['first_stages'][stage]['ndcg@10']:.3f}, MAP {q['first_stages'][stage]['map']:.3f})",
                         "original": r[f"original_on_fine-tuned top {k}"], "finetuned": r["reranked"][f"{stage} top {k}"],
                         "spread": r["spread"][f"{stage} top {k}"] if r.get("spread") else None, "seeds": r.get("seeds", [42]),
                         "minutes": r.get("train_minutes", ""),
                         "command": f"benchmarks/rerank_recipes.py --kinds {kind}" + first_stage_flags(q)
                                    + (f" --top_k {' '.join(map(str, ks))}" if ks != [20, 50] else "")
                                    + (" --measure_all" if r.get("measure_all") else "")
                                    + (f" --seeds {' '.join(map(str, r['seeds']))}" if r.get("seeds", [42]) != [42] else "")
                                    + (f" --score_precision {r['score_precision']}" if r.get("score_precision") else "")})
    lines = ["| experiment | model | task (AIA-BDE held-out FAQs) | nDCG@10 original → fine-tuned | MAP | MRR@10 | train min | command |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['original'][m]:.3f} → **{r['finetuned'][m]:.3f}**"
                 + (f" ± {r['spread'][m]:.3f} ({len(r['seeds'])} seeds)" if r.get("spread")
                    else f" (seed {r['seeds'][0]})" if r.get("seeds", [42]) != [42] else "")  # one run, not the usual seed
                 for m in ("ndcg@10", "map", "mrr@10")]
        lines.append(f"| {r['experiment']} | {r['model']} | {r['task']} | " + " | ".join(cells) + f" | {r['minutes']} | `{r['command']}` |")
    table = "\n".join(lines) + "\n" + first_stage_table(files)
    (RESULTS / "results_table.md").write_text(table)
    (RESULTS / "results_table.json").write_text(json.dumps(rows, indent=2) + "\n")
    return table


def reranker_results() -> list:
    """Every ``rerank_recipes*.json``: the MiniLM-based rerankers' file first, then those built on other first stages
    (``rerank_recipes_NAME.json``, ``benchmarks/rerank_recipes.py --name NAME``)."""
    files = [RESULTS / "rerank_recipes.json", *sorted(RESULTS.glob("rerank_recipes_*.json"))]
    return [json.loads(f.read_text()) for f in files if f.is_file()]


def family(q: dict) -> str:
    """The first stage a results file's rerankers were built on: its ``--name`` (MiniLM for the default file)."""
    return q["eval"].get("first_stage", "fine-tuned MiniLM").removeprefix("fine-tuned ")


def first_stage_flags(q: dict) -> str:
    """The ``benchmarks/rerank_recipes.py`` flags that pick a results file's first stages (none for the default)."""
    more = q.get("commands", {}).get("more_first_stages") or []  # the further first stages its rows were measured over
    more = " --more_first_stages " + " ".join(f'"{item}"' for item in more) if more else ""
    if family(q) == "MiniLM":
        return more
    given = q["commands"]["first_stage"].removeprefix("given: ")
    path = Path(given)
    if path.is_absolute() and path.is_relative_to(ROOT):  # runs that recorded this machine's folder
        given = str(path.relative_to(ROOT))
    return f" --first_stage {given} --zero_shot {q['eval']['zero_shot']} --name {family(q)}" + more


def first_stage_table(files: list) -> str:
    """Each fine-tuned reranker over each first stage's top k, alone and fused with the first stage's scores
    (``--rerank_first_stage_weight w``, w chosen on separate held-out queries), beside that first stage (nDCG@10).
    Rerankers of every results file share the table; a first stage measured by two files must agree (same queries,
    same model)."""
    files = [q for q in files if q.get("rerankers")]
    if not files:
        return ""
    alone: dict = {}
    for q in files:
        for stage, m in q["first_stages"].items():
            if stage in alone and abs(alone[stage]["ndcg@10"] - m["ndcg@10"]) > 1e-9:
                raise SystemExit(f"first stage {stage!r}: nDCG@10 {alone[stage]['ndcg@10']} in one results file, "
                                 f"{m['ndcg@10']} in another: rerun one of them")
            alone.setdefault(stage, m)
    columns = [(q, kind, k) for q in files for kind in q["rerankers"] for k in q["eval"]["top_k"]
               # a reranker's top k measured over no first stage: no column
               if any(f"{stage} top {k}" in q["rerankers"][kind]["reranked"] for stage in q["first_stages"])]
    q0 = files[0]
    lines = ["", f"Rerankers over first stages ({q0['eval']['measured_queries']} held-out queries, nDCG@10; reranker alone / "
                 f"fused with the first stage, weight w chosen on {q0['eval']['curve_queries']} other held-out queries; "
                 "`benchmarks/rerank_recipes.py`" + ("; a reranker built on another first stage's encoder is marked with "
                                                     "its name" if any(family(q) != "MiniLM" for q, _, _ in columns) else "")
                 + "):", "",
             "| first stage | alone | " + " | ".join(f"{kind}{'' if family(q) == 'MiniLM' else f' ({family(q)})'} top {k}"
                                                     for q, kind, k in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for stage, first in alone.items():
        cells = []
        for q, kind, k in columns:
            r = q["rerankers"][kind]
            fused = r.get("first_stage_weight", {}).get(f"{stage} top {k}")
            if f"{stage} top {k}" not in r["reranked"]:  # a first stage added after this reranker's run, or not in its file
                cells.append("not run")
                continue
            spread = r.get("spread", {}).get(f"{stage} top {k}")
            cell = f"{r['reranked'][f'{stage} top {k}']['ndcg@10']:.3f}" + (f" ± {spread['ndcg@10']:.3f}" if spread else "")
            if fused:
                weight = fused["weight"] if not isinstance(fused["weight"], list) else "/".join(map(str, fused["weight"]))
                cell += (f" / {fused['ndcg@10']:.3f}" + (f" ± {fused['spread']['ndcg@10']:.3f}" if "spread" in fused else "")
                         + f" (w {weight})")
            cells.append(cell)
        lines.append(f"| {stage} | {first['ndcg@10']:.3f} | " + " | ".join(cells) + " |")
    best = max((q for q in files if q.get("two_stage")), key=lambda q: q["two_stage"]["ndcg@10"], default=None)
    if best:
        t = best["two_stage"]
        seeds = (f" ± {t['spread']['ndcg@10']:.3f} over {len(t['seeds'])} seeds ({', '.join(map(str, t['seeds']))}; "
                 "the mean of each seed's run at its own weight)" if t.get("spread") else "")
        built = "" if family(best) == "MiniLM" else f" (built on {family(best)})"
        lines += ["", f"Two stages, best: {t.get('first_stage', 'fine-tuned MiniLM')} + fine-tuned {t['reranker']}{built} "
                      f"({t['candidates']}): nDCG@10 **{t['ndcg@10']:.3f}**{seeds} (MAP {t['map']:.3f}, MRR@10 {t['mrr@10']:.3f})."]
    return "\n".join(lines) + "\n"


def colbert_zero_shot_table() -> str:
    """The seed's "rerank colbert (zero shot)" rows from ``colbert_zero_shot.json`` (nDCG@10 / MAP)."""
    file = RESULTS / "colbert_zero_shot.json"
    if not file.is_file():
        return ""
    q = json.loads(file.read_text())
    lines = ["| dataset | first stage | first stage alone (nDCG@10 / MAP) | + zero-shot ColBERT, top "
             f"{q['top_k']} (nDCG@10 / MAP) |", "|---|---|---|---|"]
    for key, run in q["runs"].items():
        dataset, first = key.split(" / ")[0], key.split(" / ")[1].split(" top ")[0]
        rows = run["rows"]
        alone = rows["bm25"] if first == "bm25" else rows["minilm"]
        reranked = rows["minilm-colbert"]
        lines.append(f"| {dataset} ({run['dataset']['queries']} queries, {run['dataset']['documents']} docs) | "
                     f"{'BM25' if first == 'bm25' else 'all-MiniLM-L6-v2'} | {alone['ndcg@10']:.3f} / {alone['map']:.3f} | "
                     f"**{reranked['ndcg@10']:.3f}** / {reranked['map']:.3f} |")
    return "\n".join(lines) + "\n"


def copy_into(readme: Path, marker: str, text: str) -> None:
    """Replace what stands between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``readme``."""
    body = readme.read_text()
    start, end = f"<!-- {marker} -->\n", f"<!-- /{marker} -->"
    i, j = body.index(start) + len(start), body.index(end)
    readme.write_text(body[:i] + text + body[j:])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", nargs="*", default=[], choices=sorted(EMBED_ROWS), help="embedder rows to (re)run")
    p.add_argument("--seeds", nargs="*", type=int, default=[DEFAULT_SEED],
                   help="--run once per seed; the table shows the mean and standard deviation of a row's seeds")
    p.add_argument("--readme", action="store_true", help="copy the tables into README.md (between their markers)")
    opts = p.parse_args()
    for name in opts.run:
        for seed in opts.seeds:
            run_embed_row(name, seed)
    table, colbert = build_table(), colbert_zero_shot_table()
    (RESULTS / "colbert_zero_shot.md").write_text(colbert)
    if opts.readme:
        copy_into(ROOT / "README.md", "results-table", table)
        copy_into(ROOT / "README.md", "colbert-zero-shot", colbert)
    print(table + "\n" + colbert)


if __name__ == "__main__":
    main()

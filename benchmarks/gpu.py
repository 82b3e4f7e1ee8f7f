"""GPU benchmark (issues 1/4 and 2/4 reference shapes): retrievals vs sentence-transformers in one run.

    python benchmarks/gpu.py --assets ASSETS --out benchmarks/results/gpu.json [--only embed ce colbert llm embed_compile ce_compile profile]

``ASSETS`` holds the tokenizers only (``minilm/``: all-MiniLM-L6-v2's, ``smollm2/``: SmolLM2's; see
``prepare_assets``); every model is randomly initialised at the reference shape, so no weights travel.

* embed: bert-base shape, 32 queries of 32 tokens, 1 positive + 1 hard negative of 200 tokens, bf16.
  Training triplets/s and peak memory: sentence-transformers (MultipleNegativesRankingLoss) and ours
  (InfoNCE, in-batch negatives), each through its own Trainer; ours with its default data-loader workers
  (4 on a GPU machine) and without. Encoding 200-token passages, batch 128: each library's default (ours: float32
  weights under bf16 autocast on a GPU, the forward compiled with CUDA graphs; theirs: float32), ours eager
  (``inference_compile="off"``), and both with fp16 weights, best of 3 rounds in turns; the first (warm-up) call of
  each is timed apart (``first_call_s``: our compile time).
* embed_compile, ce_compile (after embed and ce, whose sentence-transformers figures are the reference;
  late because compiling takes a while): ours with ``--torch_compile true``, and with CUDA graphs too
  (``--torch_compile_mode reduce-overhead --pad_to_multiple_of 8``: the data have two lengths, 32 and 200).
* profile: torch.profiler over 5 training steps of our embedder (after ``embed``): wall vs GPU kernel
  time a step, tables in ``profile_embed.txt`` beside ``--out``.
* ce: cross-encoder, bert-base shape, query 32 + passage 200 tokens, bf16 training of 64 pairs a step
  (ours: 16 queries x group 4, listwise CE; theirs: CrossEncoderTrainer, 64 labelled pairs, BCE);
  scoring 4,096 pairs, batch 128, defaults and fp16 as for encoding (ours without windows, i.e. truncating as theirs does).
* colbert: ours, bert-base shape, 16 queries x 8 documents of 200 tokens a step, bf16: queries/s.
* llm: ours, Qwen2-1.5B shape with LoRA (r 8), group 4, 256 tokens, bf16 weights: queries/s and peak
  memory at 4 queries a step, and at 8 and 16 with gradient checkpointing.

Throughput is measured between the end of step ``--warmup`` and the last step (CUDA synchronised at those
two steps only: a sync every step would stall the CPU as training itself does not), so model loading,
compilation and the first steps are excluded. ``--tiny`` runs 2-layer models on CPU to
check the script itself. Results are written after every section.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers import TrainerCallback  # noqa: E402

from retrievals import AutoModelForEmbedding, AutoModelForRanking, __version__  # noqa: E402
from timing import StepTimer, timing_our_training  # noqa: E402  (benchmarks/timing.py, beside this script)

GPU = torch.cuda.is_available()
# Open-Retrievals 0.0.14 on one H100 (issue 2/4), for the kinds sentence-transformers has no counterpart of
OPEN_RETRIEVALS_H100 = {"colbert_queries_per_s": 24.8, "colbert_peak_gib": 15.4, "llm_queries_per_s": 5.2, "llm_peak_gib": 13.5}

EMBED_CLI = ["--train_group_size", "2", "--query_max_length", "64", "--document_max_length", "512", "--temperature", "0.05",
             "--pooling_method", "mean"]
# ours with the default data-loader workers (4 on a GPU machine) and without
EAGER = {"retrievals": [], "retrievals_no_workers": ["--dataloader_num_workers", "0"]}
# compiled variants (sections *_compile, last: compiling takes a while); "graphs" adds CUDA graphs, recorded once per
# padded shape
COMPILED = {"retrievals_graphs": ["--torch_compile", "true", "--torch_compile_mode", "reduce-overhead", "--pad_to_multiple_of", "8"],
            "retrievals_compile": ["--torch_compile", "true"]}
CE_GROUP, CE_QUERIES = 4, 16  # a cross-encoder step: 16 queries x (1 positive + 3 negatives)
CE_CLI = ["--model_type", "cross-encoder", "--train_group_size", str(CE_GROUP), "--max_len", "256"]


def fresh_memory() -> None:
    gc.collect()
    if GPU:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if GPU else 0.0


def words_of(tokenizer) -> list:
    """Vocabulary entries that are single tokens on their own (so n words ~ n tokens)."""
    vocab = tokenizer.get_vocab()
    out = []
    for w in vocab:
        plain = w.lstrip("Ġ")
        if plain.isalpha() and len(plain) > 2 and len(tokenizer(" " + plain, add_special_tokens=False)["input_ids"]) == 1:
            out.append(plain)
        if len(out) >= 2000:
            break
    return out


def text(words: list, n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(words) for _ in range(n))


def save_bert(folder: Path, tokenizer_dir: Path, tiny: bool, **head) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if tiny else {}
    config = BertConfig(vocab_size=tok.vocab_size, **shape, **head)
    (BertForSequenceClassification if head else BertModel)(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def pipeline_args(module, cli: list):
    from transformers import HfArgumentParser

    from retrievals.training.arguments import DataArguments

    if module.__name__.endswith("embed"):
        from retrievals.training import RetrievalTrainingArguments

        types = (module.EmbedModelArguments, DataArguments, RetrievalTrainingArguments)
    else:
        types = (module.RerankModelArguments, DataArguments, module.RerankTrainingArguments)
    return HfArgumentParser(types).parse_args_into_dataclasses(args=cli)


def common_flags(out: Path, data: Path, batch: int, steps: int, lr: float) -> list:
    flags = ["--train_data", str(data), "--output_dir", str(out), "--do_train", "--per_device_train_batch_size", str(batch),
             "--learning_rate", str(lr), "--max_steps", str(steps), "--logging_steps", "1000", "--save_strategy", "no",
             "--report_to", "none", "--disable_tqdm", "true", "--seed", "42", "--dataloader_drop_last", "true"]
    return flags + (["--bf16", "true"] if GPU else [])


CUDAGRAPH_SKIPS: list = []


def watch_cudagraph_skips() -> None:
    """Record the reasons inductor gives when it skips CUDA graphs (``reduce-overhead`` then runs without them)."""
    import torch._inductor.compile_fx  # noqa: F401  (the modules that log skips, imported before patching)
    import torch._inductor.cudagraph_utils as utils
    import torch._inductor.output_code  # noqa: F401

    original = utils.log_cudagraph_skip_and_bump_counter

    def record(msg: str) -> None:
        CUDAGRAPH_SKIPS.append(msg[:300])
        original(msg)

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("torch._inductor") and \
                getattr(mod, "log_cudagraph_skip_and_bump_counter", None) is original:
            mod.log_cudagraph_skip_and_bump_counter = record


def timed_ours(module, cli: list, warmup: int, per_step: int) -> dict:
    """Train through our pipeline; items a second (``per_step`` items a step), peak memory and, for a
    compiled run, the compiled graphs, graph breaks and CUDA-graph skips it caused."""
    from torch._dynamo.utils import counters

    fresh_memory()
    before = (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()), len(CUDAGRAPH_SKIPS))
    with timing_our_training(StepTimer(warmup)) as timer:
        model = module.train(*pipeline_args(module, cli))
    result = {"per_s": round(timer.rate(per_step), 1), "peak_gib": peak_gib()}
    if "--torch_compile" in cli or "--torch_compile_mode" in cli:
        result.update(graphs=counters["stats"]["unique_graphs"] - before[0],
                      graph_breaks=sum(counters["graph_break"].values()) - before[1],
                      cudagraph_skips=CUDAGRAPH_SKIPS[before[2]:])
    del model
    fresh_memory()
    return result


def timed_st_trainer(trainer, warmup: int, per_step: int) -> dict:
    timer = StepTimer(warmup)
    trainer.add_callback(timer)
    trainer.train()
    return {"per_s": round(timer.rate(per_step), 1), "peak_gib": peak_gib()}


def timed_call(fn) -> float:
    """Seconds of one call, the GPU synchronised before and after (the work it queued included)."""
    if GPU:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if GPU:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def inference_rates(calls: dict, n: int, rounds: int = 3) -> dict:
    """Items/s of each call, best of ``rounds`` rounds taken in turns (after a warm-up call each, timed apart as
    ``first_call_s``: ours compiles its forward there on a GPU), with the ratios of our default to theirs and of
    fp16 to fp16."""
    # warm-up: allocator, kernels, tokenizer caches, compiling
    first = {name: round(timed_call(fn), 2) for name, fn in calls.items()}
    best: dict = {name: 0.0 for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            best[name] = max(best[name], round(n / timed_call(fn), 1))
    best["ratio_default"] = round(best["retrievals_default"] / best["sentence_transformers_default"], 2)
    best["ratio_fp16"] = round(best["retrievals_fp16"] / best["sentence_transformers_fp16"], 2)
    if "retrievals_eager" in best:  # the default's compiled forward (inference_compile auto) against eager torch
        best["ratio_eager"] = round(best["retrievals_eager"] / best["sentence_transformers_default"], 2)
    best["first_call_s"] = first
    return best


def our_inference_variants(half: torch.dtype) -> list:
    """Our encoding / scoring runs: the default (on a GPU: bf16 autocast and the compiled forward with CUDA graphs),
    the same eager (``inference_compile="off"``), and fp16 weights (compiled too, by default)."""
    return [("default", None, {}), ("eager", None, {"inference_compile": "off"}), ("fp16", half, {})]


# --------------------------------------------------------------------------------------------- sections
def bench_embed(work: Path, assets: Path, opts) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    model = save_bert(work / "bert", assets / "minilm", opts.tiny)
    from transformers import AutoTokenizer

    words = words_of(AutoTokenizer.from_pretrained(model))
    rng = random.Random(0)
    steps, batch = opts.steps, 32
    rows = [(text(words, 30, rng), text(words, 198, rng), text(words, 198, rng)) for _ in range(batch * steps)]
    data = work / "embed.jsonl"
    data.write_text("".join(json.dumps({"query": q, "positive": [p], "negative": [n]}) + "\n" for q, p, n in rows))
    out = {}

    fresh_memory()
    st = SentenceTransformer(model, device="cuda" if GPU else "cpu")
    st.max_seq_length = 256
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st"), per_device_train_batch_size=batch, learning_rate=5e-5, max_steps=steps, logging_steps=1000,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=42, dataloader_drop_last=True, bf16=GPU)
    ds = Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows], "negative": [r[2] for r in rows]})
    trainer = SentenceTransformerTrainer(model=st, args=args, train_dataset=ds, loss=MultipleNegativesRankingLoss(st, scale=20.0))
    out["sentence_transformers"] = timed_st_trainer(trainer, opts.warmup, batch)
    del st, trainer
    print("embed train, sentence-transformers", out["sentence_transformers"], flush=True)

    from retrievals.pipelines import embed

    out.update(ours_variants(embed, ["--model_name_or_path", model, *EMBED_CLI], data, work, opts, EAGER,
                             out["sentence_transformers"]["per_s"], batch, batch))

    # encode: 200-token passages, batch 128; each library's default (ours: float32 weights, bf16 autocast and the
    # compiled forward on a GPU; theirs: float32), ours eager, and both with fp16 weights
    passages = [r[1] for r in rows][: 4096 if GPU else 128]
    half = torch.float16 if GPU else torch.float32
    ours = {name: AutoModelForEmbedding.from_pretrained(model, pooling_method="mean", document_max_length=256, dtype=dtype, **kw)
            for name, dtype, kw in our_inference_variants(half)}
    theirs = {name: SentenceTransformer(model, device="cuda" if GPU else "cpu", model_kwargs={"dtype": dtype})
              for name, dtype in (("default", torch.float32), ("fp16", half))}
    for st_model in theirs.values():
        st_model.max_seq_length = 256
    enc = inference_rates({f"retrievals_{k}": (lambda m=m: m.encode(passages, batch_size=128)) for k, m in ours.items()}
                          | {f"sentence_transformers_{k}": (lambda m=m: m.encode(passages, batch_size=128)) for k, m in theirs.items()},
                          len(passages))
    a = ours["fp16"].encode(passages[:256], batch_size=128, normalize_embeddings=False)
    b = theirs["fp16"].encode(passages[:256], batch_size=128, normalize_embeddings=False)
    enc["max_abs_difference_fp16"] = float(abs(a - b).max())
    print("embed encode passages/s", enc, flush=True)
    return {"train_triplets_per_s": out, "encode_passages_per_s": enc}


def ours_variants(module, cli: list, data: Path, work: Path, opts, variants: dict, reference: float, batch: int,
                  per_step: int) -> dict:
    """Our training items/s through ``module``'s pipeline for each set of extra flags (model saved in
    ``work/<module>_<variant>``), and the ratio to ``reference``."""
    out = {}
    for name, extra in variants.items():
        folder = work / f"{module.__name__.rsplit('.', 1)[-1]}_{name}"
        flags = cli + common_flags(folder, data, batch, opts.steps, 5e-5) + extra + ["--overwrite_output_dir", "true"]
        try:
            out[name] = timed_ours(module, flags, opts.warmup, per_step)
        except Exception as exc:  # a variant that fails is reported, the others still run
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            traceback.print_exc()
        out[name + "_ratio"] = round(out[name].get("per_s", 0) / reference, 2)
        print(module.__name__, "train,", name, out[name], flush=True)
    return out


def reference_of(opts, section: str, key: str) -> float:
    """The sentence-transformers training figure of an earlier section of this run (or of the results file)."""
    value = opts.results.get(section, {}).get(key, {}).get("sentence_transformers", {}).get("per_s")
    if not value:
        raise RuntimeError(f"run the {section} section first (its sentence-transformers figure is the reference)")
    return value


def bench_embed_compile(work: Path, assets: Path, opts) -> dict:
    """``--torch_compile``, without and with CUDA graphs, against the sentence-transformers figure of ``embed``."""
    from retrievals.pipelines import embed

    cli = ["--model_name_or_path", str(work / "bert"), *EMBED_CLI]
    return ours_variants(embed, cli, work / "embed.jsonl", work, opts, COMPILED,
                         reference_of(opts, "embed", "train_triplets_per_s"), 32, 32)


def ce_rows(words, n_queries: int, group: int, rng):
    return [(text(words, 30, rng), [text(words, 198, rng) for _ in range(group)]) for _ in range(n_queries)]


def bench_cross_encoder(work: Path, assets: Path, opts) -> dict:
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import AutoTokenizer

    from retrievals.pipelines import rerank

    model = save_bert(work / "bert_ce", assets / "minilm", opts.tiny, num_labels=1)
    words = words_of(AutoTokenizer.from_pretrained(model))
    rng = random.Random(1)
    group, queries_per_step, steps = CE_GROUP, CE_QUERIES, opts.steps
    groups = ce_rows(words, queries_per_step * steps, group, rng)
    data = work / "ce.jsonl"
    data.write_text("".join(json.dumps({"query": q, "positive": [d[0]], "negative": d[1:]}) + "\n" for q, d in groups))
    pairs_per_step = group * queries_per_step
    out = {}
    fresh_memory()
    theirs = CrossEncoder(model, num_labels=1, max_length=256, device="cuda" if GPU else "cpu")
    flat = {"query": [], "document": [], "label": []}
    for q, docs in groups:
        for i, d in enumerate(docs):
            flat["query"].append(q), flat["document"].append(d), flat["label"].append(float(i == 0))
    args = CrossEncoderTrainingArguments(output_dir=str(work / "st_ce"), per_device_train_batch_size=pairs_per_step, learning_rate=5e-5,
                                         max_steps=steps, logging_steps=1000, save_strategy="no", report_to="none",
                                         disable_tqdm=True, seed=42, dataloader_drop_last=True, bf16=GPU)
    trainer = CrossEncoderTrainer(model=theirs, args=args, train_dataset=Dataset.from_dict(flat), loss=BinaryCrossEntropyLoss(theirs))
    out["sentence_transformers"] = timed_st_trainer(trainer, opts.warmup, pairs_per_step)
    del theirs, trainer
    print("cross-encoder train, sentence-transformers", out["sentence_transformers"], flush=True)
    out.update(ours_variants(rerank, ["--model_name_or_path", model, *CE_CLI], data, work, opts, EAGER,
                             out["sentence_transformers"]["per_s"], queries_per_step, pairs_per_step))
    trained = str(work / "rerank_retrievals")

    pairs = [(q, d) for q, docs in groups for d in docs][: 4096 if GPU else 128]
    half = torch.float16 if GPU else torch.float32
    ours = {name: AutoModelForRanking.from_pretrained(trained, dtype=dtype, score_windows=False, **kw)  # truncating, as theirs does
            for name, dtype, kw in our_inference_variants(half)}
    theirs = {name: CrossEncoder(trained, max_length=256, device="cuda" if GPU else "cpu", model_kwargs={"dtype": dtype})
              for name, dtype in (("default", torch.float32), ("fp16", half))}
    score = inference_rates({f"retrievals_{k}": (lambda m=m: m.compute_score(pairs, batch_size=128)) for k, m in ours.items()}
                            | {f"sentence_transformers_{k}": (lambda m=m: m.predict(pairs, batch_size=128)) for k, m in theirs.items()},
                            len(pairs))
    import numpy as np

    a = np.asarray(ours["fp16"].compute_score(pairs[:256], batch_size=128), dtype=np.float32)
    b = np.asarray(theirs["fp16"].predict(pairs[:256], batch_size=128, activation_fn=torch.nn.Identity()), dtype=np.float32)
    score["max_abs_difference_fp16"] = float(np.abs(a - b).max())
    print("cross-encoder score pairs/s", score, flush=True)
    return {"train_pairs_per_s": out, "score_pairs_per_s": score}


def bench_ce_compile(work: Path, assets: Path, opts) -> dict:
    """Cross-encoder training with ``--torch_compile``, without and with CUDA graphs, against ``ce``'s
    sentence-transformers figure."""
    from retrievals.pipelines import rerank

    cli = ["--model_name_or_path", str(work / "bert_ce"), *CE_CLI]
    variants = {**COMPILED, "retrievals_graphs_nan_filter": COMPILED["retrievals_graphs"] + ["--logging_nan_inf_filter", "true"]}
    return ours_variants(rerank, cli, work / "ce.jsonl", work, opts, variants, reference_of(opts, "ce", "train_pairs_per_s"),
                         CE_QUERIES, CE_QUERIES * CE_GROUP)


def bench_colbert(work: Path, assets: Path, opts) -> dict:
    from transformers import AutoTokenizer

    from retrievals.pipelines import rerank

    model = save_bert(work / "bert_colbert", assets / "minilm", opts.tiny)
    words = words_of(AutoTokenizer.from_pretrained(model))
    group, queries_per_step = 8, 16
    groups = ce_rows(words, queries_per_step * opts.steps, group, random.Random(2))
    data = work / "colbert.jsonl"
    data.write_text("".join(json.dumps({"query": q, "positive": [d[0]], "negative": d[1:]}) + "\n" for q, d in groups))
    cli = ["--model_name_or_path", model, "--model_type", "colbert", "--train_group_size", str(group), "--max_len", "256",
           "--query_max_length", "64"]
    res = timed_ours(rerank, cli + common_flags(work / "ours_colbert", data, queries_per_step, opts.steps, 5e-5), opts.warmup, queries_per_step)
    res["vs_open_retrievals_h100"] = round(res["per_s"] / OPEN_RETRIEVALS_H100["colbert_queries_per_s"], 2)
    print("colbert train queries/s", res, flush=True)
    return {"train_queries_per_s": res, "documents_per_query": group}


def bench_llm(work: Path, assets: Path, opts) -> dict:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from retrievals.pipelines import rerank

    tok = AutoTokenizer.from_pretrained(assets / "smollm2")
    shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
             if opts.tiny else dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                                   num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6))
    config = Qwen2Config(vocab_size=151936, tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **shape)
    folder = work / "qwen2"
    with torch.device("cuda" if GPU else "cpu"):
        Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    gc.collect()
    words = words_of(tok)
    group, steps = 4, opts.steps
    out = {}
    ckpt = ["--gradient_checkpointing", "true"]
    for name, batch, extra in (("batch4", 4, []), ("batch8_checkpointing", 8, ckpt), ("batch16_checkpointing", 16, ckpt)):
        groups = ce_rows(words, batch * steps, group, random.Random(3))
        data = work / f"llm_{name}.jsonl"
        data.write_text("".join(json.dumps({"query": q, "positive": [d[0]], "negative": d[1:]}) + "\n" for q, d in groups))
        cli = ["--model_name_or_path", str(folder), "--model_type", "llm", "--causal_lm", "True", "--use_lora", "True",
               "--model_dtype", "bfloat16" if GPU else "float32", "--train_group_size", str(group), "--max_len", "256", *extra]
        try:
            res = timed_ours(rerank, cli + common_flags(work / f"ours_llm_{name}", data, batch, steps, 1e-4), opts.warmup, batch)
            res["vs_open_retrievals_h100"] = round(res["per_s"] / OPEN_RETRIEVALS_H100["llm_queries_per_s"], 2)
        except Exception as exc:
            res = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            traceback.print_exc()
        out[name] = res
        print("llm train queries/s", name, res, flush=True)
    return {"train_queries_per_s": out, "shape": "Qwen2-1.5B" if not opts.tiny else "tiny", "group": group, "max_len": 256,
            "lora_r": 8}


class StepProfiler(TrainerCallback):
    """torch.profiler over steps ``first`` .. ``last``; tables go to ``path``."""

    def __init__(self, first: int, last: int, path: Path) -> None:
        self.first, self.last, self.path, self.prof, self.start = first, last, path, None, 0.0
        self.summary: dict = {}

    def on_step_end(self, args, state, control, **kwargs):
        from torch.profiler import ProfilerActivity, profile

        if state.global_step == self.first:
            torch.cuda.synchronize() if GPU else None
            self.prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if GPU else []))
            self.prof.__enter__()
            self.start = time.perf_counter()
        elif state.global_step == self.last and self.prof is not None:
            torch.cuda.synchronize() if GPU else None
            wall = time.perf_counter() - self.start
            self.prof.__exit__(None, None, None)
            events = self.prof.key_averages()
            device_us = sum(e.self_device_time_total for e in events)
            steps = self.last - self.first
            self.summary = {"wall_ms_per_step": round(1000 * wall / steps, 1),
                            "gpu_kernel_ms_per_step": round(device_us / 1000 / steps, 1),
                            "gpu_busy": round(device_us / 1e6 / wall, 2)}
            with open(self.path, "w") as f:
                f.write(json.dumps(self.summary) + "\n")
                f.write(events.table(sort_by="self_device_time_total" if GPU else "self_cpu_time_total", row_limit=30))
                f.write(events.table(sort_by="self_cpu_time_total", row_limit=20))


def bench_profile(work: Path, assets: Path, opts) -> dict:
    """Where a training step of our embedder spends its time (run ``embed`` first: it writes the model and data)."""
    from retrievals.pipelines import embed

    prof = StepProfiler(20, 25, Path(opts.out).parent / "profile_embed.txt")
    base = ["--model_name_or_path", str(work / "bert"), "--train_group_size", "2", "--query_max_length", "64",
            "--document_max_length", "512", "--temperature", "0.05", "--pooling_method", "mean"]
    with timing_our_training(prof):
        embed.train(*pipeline_args(embed, base + common_flags(work / "profiled", work / "embed.jsonl", 32, 30, 5e-5)))
    print("profile", prof.summary, flush=True)
    return prof.summary


SECTIONS = {"embed": bench_embed, "ce": bench_cross_encoder, "colbert": bench_colbert, "llm": bench_llm,
            "embed_compile": bench_embed_compile, "ce_compile": bench_ce_compile, "profile": bench_profile}


def prepare_assets(folder: Path) -> None:
    """Copy the two tokenizers (from this machine's cached assets) into ``folder``."""
    from transformers import AutoTokenizer

    from retrievals.assets import fetch

    AutoTokenizer.from_pretrained(fetch("all-MiniLM-L6-v2")).save_pretrained(folder / "minilm")
    AutoTokenizer.from_pretrained(fetch("SmolLM2-135M-Instruct")).save_pretrained(folder / "smollm2")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--assets", default=".bench_assets")
    p.add_argument("--prepare_assets", action="store_true", help="write the tokenizers into --assets and stop")
    p.add_argument("--only", nargs="*", default=list(SECTIONS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default="benchmarks/results/gpu.json")
    p.add_argument("--update", default=None, help="an earlier results file: keep its sections that this run does not measure")
    opts = p.parse_args()
    assets = Path(opts.assets)
    if opts.prepare_assets:
        prepare_assets(assets)
        return
    import sentence_transformers
    import transformers

    machine = f"{os.cpu_count()} CPU cores"
    if GPU:
        machine = f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), {machine}"
    results = {"device": torch.cuda.get_device_name(0) if GPU else "cpu", "machine": machine,
               "date": datetime.date.today().isoformat(),
               "versions": {"retrievals": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                            "sentence_transformers": sentence_transformers.__version__, "python": platform.python_version()},
               "settings": {"steps": opts.steps, "warmup_steps": opts.warmup, "train_precision": "bf16" if GPU else "fp32",
                            "inference_precision": "each library's default, and fp16 weights" if GPU else "fp32", "shape": "tiny" if opts.tiny else "reference"},
               "open_retrievals_h100_reference": OPEN_RETRIEVALS_H100}
    if opts.update and Path(opts.update).is_file():
        earlier = json.loads(Path(opts.update).read_text())
        results = {**{k: v for k, v in earlier.items() if k in SECTIONS and k not in opts.only}, **results}
        results["earlier_sections_from"] = {"file": opts.update, "date": earlier.get("date"), "device": earlier.get("device"),
                                            "versions": earlier.get("versions")}
    if any(name.endswith("_compile") for name in opts.only):
        watch_cudagraph_skips()
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    opts.results = results
    for name in opts.only:
        start = time.perf_counter()
        try:
            results[name] = SECTIONS[name](work, assets, opts)
        except Exception as exc:  # one broken section must not cost the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            traceback.print_exc()
        results[name]["section_seconds"] = round(time.perf_counter() - start, 1)
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.out).write_text(json.dumps(results, indent=2) + "\n")
        fresh_memory()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

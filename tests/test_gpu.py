"""Checks that need a CUDA GPU: mixed-precision training through the CLIs (as the seed commands run them),
device placement, and half-precision inference. Skipped on machines without one (CI); run them on a
GPU machine with ``python -m pytest -q -m gpu tests/test_gpu.py``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrievals import AutoModelForEmbedding, AutoModelForRanking
from retrievals.pipelines import embed, rerank

from .conftest import corpus_lines, run_torchrun, seed_embed_command

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TEXTS = corpus_lines(24)


def losses(out: Path):
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def train_args(model, data, out, *extra):
    return ["--model_name_or_path", model, "--train_data", data, "--output_dir", str(out), "--do_train",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--logging_steps", "1", "--max_steps", "6",
            "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", *extra]


@pytest.mark.parametrize("precision", ["--fp16", "--bf16"])
def test_embedder_mixed_precision_training(precision, tiny_bert, train_file, tmp_path):
    out = tmp_path / "out"
    assert embed.main(train_args(tiny_bert, train_file, out, precision, "true", "--train_group_size", "2")) == 0
    curve = losses(out)
    assert len(curve) == 6 and all(np.isfinite(curve))
    gpu = AutoModelForEmbedding.from_pretrained(str(out), inference_precision="fp32")  # exact: the default autocasts
    assert gpu.device.type == "cuda"
    cpu = AutoModelForEmbedding.from_pretrained(str(out), device="cpu")
    np.testing.assert_allclose(gpu.encode(TEXTS), cpu.encode(TEXTS), atol=1e-4)  # saved = reloaded, on either device
    np.testing.assert_allclose(gpu.encode(TEXTS, batch_size=5), np.stack([gpu.encode(t) for t in TEXTS]), atol=1e-5)


def test_seed_embed_command_under_torchrun_fp16(tiny_bert, train_file, tmp_path):
    out = tmp_path / "seed"
    run_torchrun(1, *seed_embed_command(tiny_bert, train_file, out, num_train_epochs="1", per_device_train_batch_size="4",
                                        report_to="none"))
    assert AutoModelForEmbedding.from_pretrained(str(out)).encode("tax card").shape == (32,)


@pytest.mark.parametrize("kind", ["cross-encoder", "colbert", "llm"])
def test_reranker_fp16_training_and_device_agreement(kind, tiny_bert, tiny_qwen, train_file, tmp_path):
    model = tiny_qwen if kind == "llm" else tiny_bert
    extra = ["--causal_lm", "True", "--use_lora", "True"] if kind == "llm" else []
    out = tmp_path / kind
    assert rerank.main(train_args(model, train_file, out, "--model_type", kind, "--fp16", "true", "--train_group_size", "3",
                                  "--max_len", "256" if kind == "llm" else "64", *extra)) == 0
    assert all(np.isfinite(losses(out)))
    gpu = AutoModelForRanking.from_pretrained(str(out), inference_precision="fp32")  # exact: the default autocasts
    cpu = AutoModelForRanking.from_pretrained(str(out), device="cpu")
    pairs = [(TEXTS[i], TEXTS[-1 - i]) for i in range(10)] + [(TEXTS[0], " ".join(TEXTS))]  # the last needs windows
    np.testing.assert_allclose(gpu.compute_score(pairs, batch_size=3), cpu.compute_score(pairs), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(gpu.compute_score(pairs, batch_size=4), [gpu.compute_score(p) for p in pairs], atol=1e-5)


def test_half_precision_inference_tracks_float32(tiny_bert, tiny_qwen):
    full = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", inference_precision="fp32").encode(TEXTS)
    half = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", dtype="float16").encode(TEXTS)
    assert half.dtype == np.float32 and np.min(np.sum(full * half, axis=1)) > 0.999  # normalised: cosine
    pairs = [(TEXTS[i], TEXTS[i + 1]) for i in range(10)]
    ref = np.array(AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", inference_precision="fp32").compute_score(pairs))
    bf16 = np.array(AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", dtype="bfloat16").compute_score(pairs))
    assert np.abs(bf16 - ref).max() < 0.05 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("kind", ["embed", "cross-encoder"])
def test_cuda_graph_training_matches_eager(kind, tiny_bert, train_file, tmp_path):
    """``--torch_compile_mode reduce-overhead`` (CUDA graphs) with padding to a multiple trains to the same
    losses as eager bf16 training, and the saved model reloads."""
    module = embed if kind == "embed" else rerank
    # SGD, as in tests/test_compile.py: Adam would turn rounding noise in near-zero gradients into full steps
    extra = ["--bf16", "true", "--train_group_size", "2", "--seed", "5", "--temperature", "0.05", "--optim", "sgd",
             "--learning_rate", "0.5"]
    extra += ["--max_length", "64"] if kind == "embed" else ["--model_type", kind, "--max_len", "64"]
    curves = {}
    for name, flags in (("eager", []), ("graphs", ["--torch_compile_mode", "reduce-overhead", "--pad_to_multiple_of", "32"])):
        assert module.main(train_args(tiny_bert, train_file, tmp_path / name, *extra, *flags)) == 0
        curves[name] = losses(tmp_path / name)
    assert len(curves["graphs"]) == 6 and all(np.isfinite(curves["graphs"]))
    np.testing.assert_allclose(curves["graphs"], curves["eager"], atol=0.05)  # bf16 arithmetic, fused differently
    loader = AutoModelForEmbedding if kind == "embed" else AutoModelForRanking
    assert loader.from_pretrained(str(tmp_path / "graphs")) is not None


def test_gpu_default_is_half_precision_autocast(tiny_bert):
    texts = corpus_lines(300)  # more batches than BATCHES_PER_COPY: deferred copies on the GPU
    fast = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", device="cuda")
    exact = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", device="cuda", inference_precision="fp32")
    a, b = exact.encode(texts, batch_size=8), fast.encode(texts, batch_size=8)
    assert (a * b).sum(1).min() > 0.99 and np.abs(a - b).max() > 0
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)
    single = np.stack([fast.encode([t])[0] for t in texts[:5]])
    np.testing.assert_allclose(single, b[:5], atol=2e-2)


def test_gpu_default_compiles_batched_inference(tiny_bert, tiny_qwen):
    """On a GPU the batched loop runs the backbone compiled with CUDA graphs by default (models/compiled.py): the
    same vectors and scores as eager (bf16 autocast in both), batched = single, one result from many threads."""
    import threading

    texts = corpus_lines(300)
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", device="cuda")
    fast = model.encode(texts, batch_size=16)
    assert model.inference_compiled() is not None and model.inference_compiled().graphs
    model.inference_compile = "off"
    eager = model.encode(texts, batch_size=16)
    model.inference_compile = "auto"
    np.testing.assert_allclose(fast, eager, atol=2e-2)
    np.testing.assert_allclose(np.stack([model.encode([t])[0] for t in texts[:5]]), fast[:5], atol=2e-2)
    results = [None] * 3
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, model.encode(texts, batch_size=16))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results:
        np.testing.assert_allclose(got, fast, atol=1e-6)
    pairs = [(texts[i], texts[-1 - i]) for i in range(20)]
    for kind, path in (("cross-encoder", tiny_bert), ("colbert", tiny_bert), ("llm", tiny_qwen)):
        ranker = AutoModelForRanking.from_pretrained(path, model_type=kind, device="cuda")
        compiled = np.asarray(ranker.compute_score(pairs, batch_size=8))
        assert ranker.inference_compiled() is not None
        ranker.inference_compile = "off"
        exact = np.asarray(ranker.compute_score(pairs, batch_size=8))
        assert np.abs(compiled - exact).max() < 0.05 * max(1.0, np.abs(exact).max()), kind


def test_gpu_training_defaults_to_mixed_precision(tmp_path):
    from retrievals.training.arguments import RetrievalTrainingArguments

    auto = RetrievalTrainingArguments(output_dir=str(tmp_path))
    assert (auto.fp16, auto.bf16) == (not torch.cuda.is_bf16_supported(), torch.cuda.is_bf16_supported())
    assert not RetrievalTrainingArguments(output_dir=str(tmp_path), auto_mixed_precision=False).bf16
    assert RetrievalTrainingArguments(output_dir=str(tmp_path), fp16=True).fp16


def test_a_model_on_the_gpu_saves_its_cpu_graph(tiny_bert, tmp_path, monkeypatch):
    # the exporter got CPU example inputs beside CUDA weights; the saved graph must equal a CPU load's
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("RETRIEVALS_CACHE", str(tmp_path / "cache"))
    gpu = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", device="cuda")
    gpu.save_pretrained(tmp_path / "m", backend="onnx")
    served = AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"), backend="onnx")
    exact = AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"), device="cpu")
    np.testing.assert_allclose(served.encode(TEXTS), exact.encode(TEXTS), atol=1e-4)
    assert (tmp_path / "m" / "onnx").is_dir()

"""Inference precision (models/precision.py): autocast choices, float32 outputs normalised in float32, the
batched loop's deferred copies keeping input order, and the flags that set it."""

import numpy as np
import pytest
import torch
from transformers import HfArgumentParser

from retrievals import AutoModelForEmbedding, AutoModelForRanking
from retrievals.models import base
from retrievals.models.precision import autocast_dtype
from retrievals.utils import UsageError

from ..conftest import corpus_lines

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_autocast_choices(monkeypatch):
    assert autocast_dtype("auto", CPU, torch.float32) is None  # CPU stays exact unless asked
    assert autocast_dtype("fp32", CUDA, torch.float32) is None
    assert autocast_dtype("bf16", CPU, torch.float32) is torch.bfloat16
    assert autocast_dtype("auto", CUDA, torch.bfloat16) is None  # half weights run as they are
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("auto", CUDA, torch.float32) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("auto", CUDA, torch.float32) is torch.float16  # older GPUs
    with pytest.raises(UsageError, match="CUDA only"):
        autocast_dtype("fp16", CPU, torch.float32)
    with pytest.raises(UsageError, match="must be one of"):
        autocast_dtype("int4", CPU, torch.float32)


def test_bad_precision_is_refused_before_loading(tiny_bert):
    with pytest.raises(UsageError, match="must be one of"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, inference_precision="half")
    with pytest.raises(UsageError, match="backend_precision"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, backend="onnx", inference_precision="bf16")


def test_bf16_embeddings_are_float32_normalised_and_close(tiny_bert):
    texts = corpus_lines(40)
    exact = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    fast = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", inference_precision="bf16")
    a, b = exact.encode(texts, batch_size=8), fast.encode(texts, batch_size=8)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)  # normalised in float32
    assert (a * b).sum(1).min() > 0.99 and np.abs(a - b).max() > 0  # autocast did run, and stayed close
    np.testing.assert_array_equal(a, exact.encode(texts, batch_size=8))  # the default on CPU: exact float32
    single = np.stack([fast.encode([t])[0] for t in texts[:5]])
    np.testing.assert_allclose(single, b[:5], atol=2e-2)  # batched = single, within bf16's precision


def test_many_batches_between_copies_keep_input_order(tiny_bert, monkeypatch):
    """Rows stay on the device for BATCHES_PER_COPY batches: with copies every 3 batches the result is the same."""
    texts = corpus_lines(50)
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    expected = np.stack([model.encode([t])[0] for t in texts])
    for per_copy in (1, 3, 1000):
        monkeypatch.setattr(base, "BATCHES_PER_COPY", per_copy)
        np.testing.assert_allclose(model.encode(texts, batch_size=4), expected, atol=1e-5)
    ranker = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=32)
    pairs = [("q " + t[:10], t) for t in texts]
    monkeypatch.setattr(base, "BATCHES_PER_COPY", 1)
    one = ranker.compute_score(pairs, batch_size=4)
    monkeypatch.setattr(base, "BATCHES_PER_COPY", 4)
    np.testing.assert_allclose(ranker.compute_score(pairs, batch_size=4), one, atol=1e-6)


def test_ranker_precision_and_cli_flag(tiny_bert, tmp_path):
    from retrievals.pipelines.retrieve import RetrieveArguments

    ranker = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=32, inference_precision="bf16")
    exact = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=32)
    pairs = [("tax card", t) for t in corpus_lines(6)]
    np.testing.assert_allclose(ranker.compute_score(pairs), exact.compute_score(pairs), atol=5e-2)
    args = RetrieveArguments(model_name_or_path=tiny_bert, reranker_name_or_path=tiny_bert, model_type="cross-encoder",
                             inference_precision="bf16", output=str(tmp_path / "run.trec"))
    assert args.load_embedder().inference_precision == "bf16" and args.load_reranker().inference_precision == "bf16"



def test_caches_and_saved_indexes_keep_bf16_vectors_apart_from_float32(tiny_bert, tmp_path):
    # the shard cache and --index_dir keyed only the weights: a float32 run was served bf16 vectors, and back
    from retrievals.data.io import save_beir
    from retrievals.index.sharded import encode_sharded
    from retrievals.pipelines import retrieve
    from retrievals.utils import state_digest

    exact = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    fast = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", inference_precision="bf16")
    assert state_digest(exact) != state_digest(fast)
    fp32 = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", inference_precision="fp32")
    assert state_digest(exact) == state_digest(fp32)  # the same computation on CPU: the same key
    texts = corpus_lines(6)
    encode_sharded(fast, texts, tmp_path / "cache")
    np.testing.assert_array_equal(encode_sharded(exact, texts, tmp_path / "cache"), exact.encode(texts, batch_size=64))

    lines = corpus_lines(20)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:20] for i in range(3)},
              {f"q{i}": {f"d{i}": 1} for i in range(3)})
    common = ["--dataset", str(tmp_path / "beir"), "--model_name_or_path", tiny_bert, "--pooling_method", "mean",
              "--index_type", "exact", "--index_dir", str(tmp_path / "idx"), "--output", str(tmp_path / "run.trec")]
    assert retrieve.main(common) == 0
    (args,) = HfArgumentParser(retrieve.RetrieveArguments).parse_args_into_dataclasses(
        [*common, "--inference_precision", "bf16", "--overwrite", "true"])
    with pytest.raises(UsageError, match=r"another model \(weights or tokenizer\) than"):  # named, not "model, settings or corpus"
        retrieve.run_retrieval(args)


def test_a_bf16_checkpoint_loads_in_float32_unless_asked(tiny_qwen, tmp_path):
    # transformers 5 loads a checkpoint in its stored dtype when given none: a bf16 one ran in bf16 on CPU
    import shutil
    from pathlib import Path

    from transformers import AutoModel

    AutoModel.from_pretrained(tiny_qwen, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tiny_qwen) / name, tmp_path / "bf16" / name)
    model = AutoModelForEmbedding.from_pretrained(str(tmp_path / "bf16"))
    assert next(model.parameters()).dtype == torch.float32
    assert next(AutoModelForEmbedding.from_pretrained(str(tmp_path / "bf16"), dtype="auto").parameters()).dtype == torch.bfloat16
    ranker = AutoModelForRanking.from_pretrained(str(tmp_path / "bf16"), model_type="llm")
    assert next(ranker.parameters()).dtype == torch.float32

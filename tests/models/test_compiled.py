"""Compiled batched inference (models/compiled.py): the same vectors and scores as eager for every kind, inputs
padded to few shapes and cut back, one result from many threads, a failed compile raised (``on``) or survived
(``auto``), eager on CPU by default, training untouched. Most tests run dynamo with its ``eager`` backend (the
graph capture and our padding, in seconds); one runs inductor's real compiled code on CPU."""

import copy
import pickle
import threading
import warnings

import numpy as np
import pytest
import torch
from transformers import HfArgumentParser

from retrievals import AutoModelForEmbedding, AutoModelForRanking
from retrievals.models import base, compiled
from retrievals.models.compiled import bucket_length, bucket_rows
from retrievals.models.sparse import SparseEmbedder
from retrievals.pipelines.model_flags import EmbedderFlags
from retrievals.utils import UsageError

from ..conftest import corpus_lines

TEXTS = corpus_lines(37)  # not a multiple of the batch size: a short last batch
PAIRS = [(TEXTS[i], TEXTS[i + 1]) for i in range(19)]


@pytest.fixture
def dynamo_only(monkeypatch):
    monkeypatch.setattr(compiled, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def load(kind, tiny_bert, tiny_qwen, **kw):
    if kind == "embed-encoder":
        return AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", **kw)
    if kind == "embed-decoder":  # left padding, last-token pooling
        return AutoModelForEmbedding.from_pretrained(tiny_qwen, **kw)
    if kind == "sparse":  # masked-LM logits [rows, tokens, vocab], max-pooled
        return SparseEmbedder.from_pretrained(tiny_bert, **kw)
    return AutoModelForRanking.from_pretrained(tiny_qwen if kind == "llm" else tiny_bert, model_type=kind, **kw)


def outputs(model, batch_size=8):
    if isinstance(model, AutoModelForEmbedding):
        return model.encode(TEXTS, batch_size=batch_size)
    return np.asarray(model.compute_score(PAIRS, batch_size=batch_size))


def single(model):
    if isinstance(model, AutoModelForEmbedding):
        return np.stack([model.encode([t])[0] for t in TEXTS[:4]])
    return np.asarray([model.compute_score(p) for p in PAIRS[:4]])


def record_shapes(model):
    """Wrap the model's compiled module so each call's input shape is recorded."""
    forward = model.inference_compiled()
    inner, shapes = forward.module, []

    def recording(**inputs):
        shapes.append(tuple(inputs["input_ids"].shape))
        return inner(**inputs)

    forward.module = recording
    return shapes


@pytest.mark.parametrize("kind", ["embed-encoder", "embed-decoder", "sparse", "cross-encoder", "colbert", "llm"])
def test_compiled_equals_eager_on_few_shapes(kind, tiny_bert, tiny_qwen, dynamo_only):
    model = load(kind, tiny_bert, tiny_qwen, inference_compile="on")
    shapes = record_shapes(model)
    fast = outputs(model)
    assert shapes, "the batched loop did not run the compiled forward"
    for rows, width in shapes:  # few shapes: rows a power of two or the batch size, widths on the 32-token ladder
        assert rows in (1, 2, 4, 8, 16, 32) and (width % 32 == 0 or width == model.max_input_length())
    assert model.max_input_length() >= max(w for _, w in shapes)
    model.inference_compile = "off"
    exact = outputs(model)
    np.testing.assert_allclose(fast, exact, atol=1e-5)  # padding masked out, rows cut back
    model.inference_compile = "on"
    np.testing.assert_allclose(single(model), exact[:4], atol=1e-5)  # batched = single (one row: its own shape)
    assert len(set(shapes)) <= 6, sorted(set(shapes))  # every call of the test, single inputs included


def test_padding_is_cut_back_on_the_padded_side():
    ids, mask = torch.tensor([[7, 8, 9], [0, 5, 6]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    left = {k: compiled._pad(k, v, 2, 3, 4, 5, True, 0) for k, v in {"input_ids": ids, "attention_mask": mask}.items()}
    assert left["input_ids"].tolist() == [[0, 0, 7, 8, 9], [0, 0, 0, 5, 6], [0, 0, 7, 8, 9], [0, 0, 7, 8, 9]]
    assert left["attention_mask"][:2, :2].sum() == 0  # the added positions are masked
    right = compiled._pad("input_ids", ids, 2, 3, 2, 5, False, 1)
    assert right.tolist() == [[7, 8, 9, 1, 1], [0, 5, 6, 1, 1]]
    assert compiled._pad("logits_to_keep", 1, 2, 3, 4, 5, True, 0) == 1  # not a per-token input

    from transformers.modeling_outputs import BaseModelOutput

    hidden = torch.arange(4 * 5, dtype=torch.float).view(4, 5, 1)
    out = compiled._cut(BaseModelOutput(last_hidden_state=hidden), 2, 3, 4, 5, left=True)
    assert out.last_hidden_state[..., 0].tolist() == [[2, 3, 4], [7, 8, 9]]
    out = compiled._cut(BaseModelOutput(last_hidden_state=hidden), 2, 3, 4, 5, left=False)
    assert out.last_hidden_state[..., 0].tolist() == [[0, 1, 2], [5, 6, 7]]


def test_buckets_are_few_and_never_too_small():
    for cap in (64, 128, 512):
        widths = {bucket_length(n, cap) for n in range(1, cap + 1)}
        assert len(widths) <= cap // 32 + 1 and all(bucket_length(n, cap) >= n for n in range(1, cap + 50))
    assert {bucket_rows(n, 32) for n in range(1, 33)} == {1, 2, 4, 8, 16, 32}
    assert all(bucket_rows(n, 24) >= n for n in range(1, 40))


def test_many_threads_give_one_result(tiny_bert, tiny_qwen, dynamo_only):
    model = load("embed-encoder", tiny_bert, tiny_qwen, inference_compile="on")
    expected = outputs(model, batch_size=4)
    results, errors = [None] * 4, []

    def work(i):
        try:
            results[i] = outputs(model, batch_size=4)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in results:
        np.testing.assert_array_equal(got, expected)


def failing_backend(graph, example_inputs):
    raise RuntimeError("no compiler here")


def test_a_failed_compile_raises_when_asked_and_falls_back_under_auto(tiny_bert, tiny_qwen, monkeypatch):
    monkeypatch.setattr(compiled, "COMPILE_BACKEND", failing_backend)
    torch._dynamo.reset()
    try:
        model = load("embed-encoder", tiny_bert, tiny_qwen, inference_compile="on")
        with pytest.raises(Exception, match="no compiler here"):
            outputs(model)
        model.inference_compile = "auto"
        monkeypatch.setattr(base, "wants_compile", lambda setting, device: True)  # as on a GPU
        with pytest.warns(RuntimeWarning, match="running it eagerly"):
            fast = outputs(model)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once: the model stays eager
            again = outputs(model)
        assert model.inference_compiled() is None
        model.inference_compile = "off"
        np.testing.assert_array_equal(fast, outputs(model))
        np.testing.assert_array_equal(again, fast)
    finally:
        torch._dynamo.reset()


def test_auto_is_eager_on_cpu_and_settings_are_checked(tiny_bert, tiny_qwen):
    model = load("embed-encoder", tiny_bert, tiny_qwen)
    assert model.inference_compile == "auto"
    outputs(model)
    assert model._compiled is None  # nothing compiled on CPU unless asked
    model.inference_compile = "yes"
    with pytest.raises(UsageError, match="inference_compile must be one of"):
        outputs(model)  # a bad value set on the attribute: refused at the next call
    with pytest.raises(UsageError, match="inference_compile must be one of"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, inference_compile="yes")
    with pytest.raises(UsageError, match="compiles the torch backbone"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, backend="onnx", inference_compile="on")
    (flags,) = HfArgumentParser(EmbedderFlags).parse_args_into_dataclasses(
        ["--model_name_or_path", tiny_bert, "--inference_compile", "off"])
    assert flags.load_embedder().inference_compile == "off"


def test_training_and_copies_stay_eager(tiny_bert, tiny_qwen, dynamo_only):
    model = load("embed-encoder", tiny_bert, tiny_qwen, inference_compile="on")
    expected = outputs(model)
    assert model._compiled is not None
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other._compiled is None  # compiled code is not copied; the copy compiles its own
        np.testing.assert_allclose(outputs(other), expected, atol=1e-6)
    model.train()
    batch = model.processor.pad(model.tokenize(TEXTS[:4]))
    emb = model._embed_padded(batch["input_ids"], batch["attention_mask"], True)
    emb.sum().backward()  # outside the batched loop the backbone runs eagerly, with gradients
    assert all(p.grad is not None for n, p in model.backbone.named_parameters() if "pooler" not in n)  # unused: BERT's pooler
    assert sum(v.numel() for v in model.state_dict().values()) == sum(p.numel() for p in model.backbone.state_dict().values())


@pytest.mark.slow
def test_inductor_on_cpu_matches_eager(tiny_bert, tiny_qwen):
    """Inductor's real compiled code (C++ on CPU; on a GPU, triton kernels replayed as CUDA graphs)."""
    torch._dynamo.reset()
    model = load("embed-encoder", tiny_bert, tiny_qwen, inference_compile="on")
    fast = outputs(model)
    model.inference_compile = "off"
    np.testing.assert_allclose(fast, outputs(model), atol=1e-5)
    model.inference_compile = "on"
    np.testing.assert_allclose(single(model), fast[:4], atol=1e-5)

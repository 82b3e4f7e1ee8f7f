"""Static-shape training: ``--pad_to_multiple_of`` and ``--torch_compile`` (the path CUDA graphs need)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrievals import AutoModelForEmbedding, AutoModelForRanking
from retrievals.data import EmbeddingCollator
from retrievals.models.processing import PaddingOptions, pad_ids
from retrievals.pipelines import embed, rerank

from ..conftest import corpus_lines
from ..training.test_training import cli

KINDS = ["embed", "cross-encoder", "colbert", "llm"]


def items(n_queries: int = 6, group: int = 3):
    lines = corpus_lines(80)
    return [{"query": lines[i], "documents": lines[10 + group * i : 10 + group * (i + 1)]} for i in range(n_queries)]


def model_and_collator(kind: str, tiny_bert: str, tiny_qwen: str, multiple=None):
    if kind == "embed":
        model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
        return model, EmbeddingCollator(model.processor, multiple)
    model = AutoModelForRanking.from_pretrained(tiny_qwen if kind == "llm" else tiny_bert, model_type=kind)
    return model, model.processor.with_pad_to_multiple_of(multiple)


def widths(batch) -> list:
    out = []
    for value in batch.values():
        if isinstance(value, dict):
            out += widths(value)
        elif isinstance(value, torch.Tensor):
            out.append(value.shape[1])
    return out


def test_pad_ids_rounds_up_on_either_side():
    batch = pad_ids([[5, 6, 7], [8]], pad_id=0, multiple_of=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    left = pad_ids([[5, 6, 7, 1, 2], [8]], pad_id=0, left=True, multiple_of=4)
    assert left["input_ids"].tolist() == [[0, 0, 0, 5, 6, 7, 1, 2], [0] * 7 + [8]]
    assert left["attention_mask"].sum(1).tolist() == [5, 1]
    with pytest.raises(ValueError, match="pad_to_multiple_of must be >= 1"):
        PaddingOptions().with_pad_to_multiple_of(0)
    from retrievals.training import RetrievalTrainingArguments

    with pytest.raises(ValueError, match="--pad_to_multiple_of must be >= 1, got 0"):  # at parsing, before any model loads
        RetrievalTrainingArguments("out", pad_to_multiple_of=0)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_to_a_multiple_changes_shapes_not_outputs(kind, tiny_bert, tiny_qwen):
    model, plain = model_and_collator(kind, tiny_bert, tiny_qwen)
    _, padded = model_and_collator(kind, tiny_bert, tiny_qwen, multiple=13)
    batch_a, batch_b = plain(items()), padded(items())
    assert all(w % 13 == 0 for w in widths(batch_b)) and widths(batch_a) != widths(batch_b)
    model.eval()
    with torch.no_grad():
        out_a, out_b = model(**batch_a), model(**batch_b)
    for name in out_a.keys():
        a, b = out_a[name], out_b[name]
        if name.endswith("_vectors"):  # token vectors: the same on real tokens, zeros in the extra padding
            mask = out_a[name.replace("_vectors", "_mask")].bool()
            extra = b[:, a.shape[1]:]
            b = b[:, : a.shape[1]]
            assert extra.abs().sum() == 0
            a, b = a[mask], b[mask]
        elif name.endswith("_mask"):
            b = b[:, : a.shape[1]]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    # the training copy pads; the model's own processor (inference) still pads to the longest
    assert model.processor.pad_to_multiple_of is None


@pytest.mark.parametrize("kind", KINDS)
def test_training_forward_compiles_as_one_graph(kind, tiny_bert, tiny_qwen):
    """No graph break (no host sync, no data-dependent shape) in the training forward, so
    ``--torch_compile_mode reduce-overhead`` can run the whole step's forward as one CUDA graph."""
    import torch._dynamo as dynamo

    model, collator = model_and_collator(kind, tiny_bert, tiny_qwen, multiple=16)
    batch = collator(items(n_queries=12, group=3))  # 36 documents: more than one length chunk in eager mode
    model.train()
    dynamo.reset()
    explained = dynamo.explain(model)(**batch)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def losses(out: Path) -> list:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["embed", "cross-encoder"])
def test_compiled_training_matches_eager(kind, tiny_bert, train_file, tmp_path):
    """``--torch_compile true --pad_to_multiple_of 16`` trains to the same losses as eager training."""
    module = embed if kind == "embed" else rerank
    # SGD: Adam would turn rounding noise in near-zero gradients into full-size steps and hide what is compared
    extra = ["--max_steps", "4", "--seed", "3", "--temperature", "0.05", "--optim", "sgd", "--learning_rate", "0.5"]
    if kind != "embed":
        extra += ["--model_type", kind]
    results = {}
    for name, flags in (("eager", []), ("compiled", ["--torch_compile", "true", "--pad_to_multiple_of", "16"])):
        assert module.main(cli(tiny_bert, train_file, tmp_path / name, *extra, *flags)) == 0
        results[name] = losses(tmp_path / name)
    assert len(results["eager"]) == 4 and results["eager"][0] != results["eager"][-1]
    assert results["compiled"] == pytest.approx(results["eager"], abs=2e-4)
    # the compiled run saved the trained model itself (not the compile wrapper): it reloads and agrees
    texts = corpus_lines(6)
    if kind == "embed":
        eager, compiled = (AutoModelForEmbedding.from_pretrained(str(tmp_path / n)).encode(texts) for n in ("eager", "compiled"))
    else:
        pairs = list(zip(texts, reversed(texts)))
        eager, compiled = (np.array(AutoModelForRanking.from_pretrained(str(tmp_path / n)).compute_score(pairs))
                           for n in ("eager", "compiled"))
        # the listwise loss is blind to a constant shift, so the head's bias has no true gradient and its
        # rounding noise moves every score alike: compare the scores without that shift
        eager, compiled = eager - eager.mean(), compiled - compiled.mean()
    np.testing.assert_allclose(compiled, eager, atol=1e-3 * np.ptp(eager))  # scaled: a random tiny model's spread is small

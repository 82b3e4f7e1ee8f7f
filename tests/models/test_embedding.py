import json

import numpy as np
import pytest
import torch

from retrievals import AutoModelForEmbedding
from retrievals.models.pooling import pool
from retrievals.utils import UsageError, apply_instruction

from ..conftest import corpus_lines, needs

TEXTS = corpus_lines(13)


def test_pooling_is_padding_side_independent():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 4)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    shifted = torch.zeros_like(hidden)
    shifted[0, 2:] = hidden[0, :3]
    shifted[1] = hidden[1]
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    for method in ("cls", "mean", "last"):
        assert torch.allclose(pool(hidden, right, method), pool(shifted, left, method)), method
    assert torch.equal(pool(hidden, right, "last")[0], hidden[0, 2])
    with pytest.raises(ValueError, match="choose one of"):
        pool(hidden, right, "max")


def test_instructions():
    assert apply_instruction("Query: ", "x") == "Query: x"
    assert apply_instruction("Instruct: find {}\nanswer", "x") == "Instruct: find x\nanswer"
    assert apply_instruction("", "x") == "x"
    assert apply_instruction("no braces and no trailing space", "x") == "no braces and no trailing spacex"


@pytest.mark.parametrize("kind, pooling, side", [
    ("bert", "cls", "right"), ("bert", "mean", "right"), ("bert", "last", "right"), ("bert", "mean", "left"),
    ("qwen", "last", "left"), ("qwen", "last", "right"), ("qwen", "mean", "left"), ("qwen", "mean", "right"),
])
def test_batched_equals_single(kind, pooling, side, tiny_bert, tiny_qwen):
    path = tiny_bert if kind == "bert" else tiny_qwen
    model = AutoModelForEmbedding.from_pretrained(path, pooling_method=pooling, padding_side=side, query_instruction="q: ")
    batched = model.encode(TEXTS, batch_size=5, is_query=True)
    single = np.stack([model.encode(t, is_query=True) for t in TEXTS])
    assert batched.shape == (len(TEXTS), model.embedding_dim)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_decoder_defaults_last_pooling_with_eos(tiny_qwen):
    model = AutoModelForEmbedding.from_pretrained(tiny_qwen)
    cfg = model.retrieval_config
    assert cfg.decoder and cfg.pooling_method == "last" and cfg.append_eos
    ids = model.tokenize(["tax card " * 100], max_length=16)[0]
    assert len(ids) == 16 and ids[-1] == model.tokenizer.eos_token_id
    assert model.tokenizer.pad_token is not None


def test_decoder_appends_eos_only_for_last_token_pooling(tiny_qwen, tmp_path):
    mean = AutoModelForEmbedding.from_pretrained(tiny_qwen, pooling_method="mean")
    assert not mean.retrieval_config.append_eos
    assert mean.tokenize(["tax card"])[0][-1] != mean.tokenizer.eos_token_id
    asked = AutoModelForEmbedding.from_pretrained(tiny_qwen, pooling_method="mean", append_eos=True)
    assert asked.retrieval_config.append_eos
    mean.save_pretrained(tmp_path / "m")  # the saved choice is kept as saved
    assert not AutoModelForEmbedding.from_pretrained(str(tmp_path / "m")).retrieval_config.append_eos


def test_encoder_defaults(tiny_bert):
    cfg = AutoModelForEmbedding.from_pretrained(tiny_bert).retrieval_config
    assert not cfg.decoder and cfg.pooling_method == "cls" and not cfg.append_eos


def test_output_types(tiny_bert):
    model = AutoModelForEmbedding.from_pretrained(tiny_bert)
    assert isinstance(model.encode(TEXTS[:2], convert_to_tensor=True), torch.Tensor)
    assert model.encode("one text").shape == (model.embedding_dim,)
    raw = model.encode(TEXTS[:3], normalize_embeddings=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    corpus = model.encode_corpus([{"title": "t", "text": TEXTS[0]}, TEXTS[1]])
    np.testing.assert_allclose(corpus[0], model.encode("t " + TEXTS[0]), atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "qwen"])
def test_save_reload_identical(kind, tiny_bert, tiny_qwen, tmp_path):
    path = tiny_bert if kind == "bert" else tiny_qwen
    model = AutoModelForEmbedding.from_pretrained(
        path, pooling_method="mean", query_instruction="Instruct: {}\nQuery:", document_instruction="doc: ",
        query_max_length=20, document_max_length=40, padding_side="left",
    )
    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForEmbedding.from_pretrained(str(tmp_path / "saved"))
    assert reloaded.retrieval_config == model.retrieval_config
    for is_query in (True, False):
        np.testing.assert_array_equal(model.encode(TEXTS, is_query=is_query), reloaded.encode(TEXTS, is_query=is_query))
    saved = json.loads((tmp_path / "saved" / "retrievals_config.json").read_text())
    assert saved["query_instruction"] == "Instruct: {}\nQuery:" and saved["pooling_method"] == "mean"


def test_a_save_never_replaces_a_file_the_library_did_not_write(tiny_bert, tmp_path):
    # a save replaced same-named entries: saving into another tool's model folder overwrote its config.json and
    # weights without a word (files of other names are left alone, as before)
    from retrievals.files import OutputExistsError

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"their": "model"}')
    (theirs / "notes.txt").write_text("mine\n")
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    with pytest.raises(OutputExistsError, match=r"holds config\.json, which this library did not write"):
        model.save_pretrained(theirs)
    assert sorted(p.name for p in theirs.iterdir()) == ["config.json", "notes.txt"]  # nothing written, nothing left
    assert (theirs / "config.json").read_text() == '{"their": "model"}'
    (theirs / "config.json").unlink()
    model.save_pretrained(theirs)
    model.save_pretrained(theirs)  # over its own save: as before
    assert (theirs / "notes.txt").read_text() == "mine\n"
    AutoModelForEmbedding.from_pretrained(str(theirs))
def test_reads_sentence_transformers_folder(tiny_bert, tmp_path):
    from retrievals.st_format import read_st_settings, write_st_files

    write_st_files(tmp_path, 32, "mean", True, 77, "query: ", "passage: ")
    settings = read_st_settings(tmp_path)
    assert settings == {"normalize_embeddings": True, "pooling_method": "mean", "query_max_length": 77,
                        "document_max_length": 77, "query_instruction": "query: ", "document_instruction": "passage: "}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken"}))
    assert read_st_settings(tmp_path)["pooling_method"] == "last"
    # the classic layout with two modes on (sentence-transformers concatenates them) was read as the first one
    pooling = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
               "pooling_mode_max_tokens": True}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(UsageError, match=r"1_Pooling/config.json: pooling mode .* is not supported"):
        read_st_settings(tmp_path)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode_max_tokens": False}))
    assert read_st_settings(tmp_path)["pooling_method"] == "mean"
    # a module we do not run (a LayerNorm after pooling, a weighted layer pooling) changed the vectors silently
    modules = json.loads((tmp_path / "modules.json").read_text())
    for kind in ("sentence_transformers.models.LayerNorm", "sentence_transformers.models.WeightedLayerPooling"):
        (tmp_path / "modules.json").write_text(json.dumps([*modules, {"idx": 9, "name": "9", "path": "9_X", "type": kind}]))
        with pytest.raises(UsageError, match=f"modules.json: module '{kind}' is not supported; an embedder runs"):
            read_st_settings(tmp_path)


def test_sentence_transformers_lower_casing_is_read_or_refused(tiny_bert, tmp_path):
    # do_lower_case: true was ignored: a cased tokenizer then got other ids than sentence-transformers gives it
    import shutil

    from tokenizers import Tokenizer, normalizers

    from retrievals.st_format import read_st_settings, write_st_files

    folder = tmp_path / "st"
    shutil.copytree(tiny_bert, folder)
    write_st_files(folder, 32, "mean", True, 64, "", "")
    config = folder / "sentence_bert_config.json"
    config.write_text(json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    assert read_st_settings(folder)["pooling_method"] == "mean"  # an uncased tokenizer: lower-casing changes nothing
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.save(str(folder / "tokenizer.json"))
    with pytest.raises(UsageError, match=r"sentence_bert_config.json: do_lower_case is true and the tokenizer keeps case"):
        read_st_settings(folder)


def test_lora_adapter_and_merged_roundtrip(tiny_qwen, tmp_path):
    needs("peft")
    model = AutoModelForEmbedding.from_pretrained(tiny_qwen, use_lora=True, lora_r=4, query_instruction="Q: ")
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    expected = model.encode(TEXTS, is_query=True)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    reloaded = AutoModelForEmbedding.from_pretrained(str(tmp_path / "adapter"))
    np.testing.assert_allclose(reloaded.encode(TEXTS, is_query=True), expected, atol=1e-5)
    model.save_pretrained(tmp_path / "merged", merge_lora=True)
    merged = AutoModelForEmbedding.from_pretrained(str(tmp_path / "merged"))
    assert merged.retrieval_config.lora_base is None
    np.testing.assert_allclose(merged.encode(TEXTS, is_query=True), expected, atol=1e-5)
    via_lora_path = AutoModelForEmbedding.from_pretrained(tiny_qwen, lora_path=str(tmp_path / "adapter"), query_instruction="Q: ")
    np.testing.assert_allclose(via_lora_path.encode(TEXTS, is_query=True), expected, atol=1e-5)


def test_bf16_model_normalises_in_float32(tiny_bert):
    """A bf16 model's vectors are float32 and unit length (a bf16 norm left lengths 0.996-1.004)."""
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", dtype=torch.bfloat16)
    vectors = model.encode(corpus_lines(20), convert_to_tensor=True)
    assert vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(20), atol=1e-5)


def test_unknown_pooling_and_kwarg(tiny_bert):
    with pytest.raises(ValueError, match="choose one of"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="max")
    with pytest.raises(TypeError, match="unexpected keyword"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, poolng_method="cls")


@pytest.mark.parametrize("kind, side", [("bert", "right"), ("qwen", "left"), ("qwen", "right")])
def test_chunked_embed_equals_one_pass(kind, side, tiny_bert, tiny_qwen):
    model = AutoModelForEmbedding.from_pretrained(tiny_bert if kind == "bert" else tiny_qwen, padding_side=side, pooling_method="mean")
    batch = model.pad(model.tokenize(corpus_lines(40)))
    with torch.no_grad():
        chunked = model.embed(batch, chunk_size=8)
        whole = model.embed(batch, chunk_size=1000)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)


def _with_bos(base: str, folder, layout: str) -> str:
    """``base`` (a tiny Qwen folder) with a tokenizer that starts every text with a BOS token, as Llama-2, Mistral and
    Gemma do (``template``) or as Llama-3 does (``sequence``: ByteLevel, then the template)."""
    import shutil

    from tokenizers import processors
    from transformers import AutoTokenizer

    shutil.copytree(base, folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    bos = "<|im_start|>"
    template = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                             special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    tok.backend_tokenizer.post_processor = template if layout == "template" else \
        processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    tok.bos_token = bos
    tok.save_pretrained(str(folder))
    return str(folder)


@pytest.mark.parametrize("layout", ["none", "template", "sequence"])
def test_decoder_with_eos_loads_identically_in_sentence_transformers(layout, tiny_qwen, tmp_path):
    # a tokenizer adding BOS was saved with a second template chained after its own, which read "BOS text" as a pair:
    # the saved folder tokenized "BOS EOS text EOS", one token past the max length, other vectors everywhere
    st = needs("sentence_transformers")
    base = tiny_qwen if layout == "none" else _with_bos(tiny_qwen, tmp_path / "bos", layout)
    model = AutoModelForEmbedding.from_pretrained(base, query_instruction="Query: ", padding_side="right",
                                                  query_max_length=24, document_max_length=24)
    assert model.retrieval_config.append_eos and not model.processor.eos_added_by_tokenizer
    texts = corpus_lines(9) + ["tax card " * 40]  # the last one is truncated
    expected_q, expected_d = model.encode_queries(texts), model.encode_corpus(texts)
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))
    assert reloaded.processor.eos_added_by_tokenizer  # the saved tokenizer now adds EOS itself
    assert reloaded.tokenize(texts) == model.tokenize(texts)
    assert max(map(len, reloaded.tokenize(texts))) == 24
    if layout != "none":
        first = reloaded.tokenize(texts)[0]
        assert first[0] == model.tokenizer.bos_token_id and first[1] != model.tokenizer.eos_token_id
    np.testing.assert_allclose(reloaded.encode_queries(texts), expected_q, atol=1e-6)
    theirs = st.SentenceTransformer(str(tmp_path / "m"), device="cpu")
    np.testing.assert_allclose(theirs.encode_query(texts), expected_q, atol=1e-5)
    np.testing.assert_allclose(theirs.encode_document(texts), expected_d, atol=1e-5)


@pytest.mark.parametrize("left", [False, True])
def test_length_chunks_split_only_when_padding_saved(left):
    from retrievals.models.processing import pad_ids, run_in_length_chunks

    calls = []

    def row_sums(b):
        calls.append(tuple(b["input_ids"].shape))
        return (b["input_ids"] * b["attention_mask"]).sum(dim=1)

    varied = [[i + 1] * (i % 10 + 1) for i in range(40)]  # lengths 1..10
    batch = pad_ids(varied, 0, left=left)
    out = run_in_length_chunks(row_sums, batch, 8, left=left)
    assert out.tolist() == [sum(s) for s in varied]  # results back in row order
    assert len(calls) == 5 and sorted(w for _, w in calls) == [2, 4, 6, 8, 10]  # each chunk cut to its own longest
    calls.clear()
    similar = [[i + 1] * (10 if i % 2 else 9) for i in range(40)]  # chunking would save < 10% of tokens
    out = run_in_length_chunks(row_sums, pad_ids(similar, 0, left=left), 8, left=left)
    assert out.tolist() == [sum(s) for s in similar] and calls == [(40, 10)]


def _gram(x):
    return x @ x.T


def test_fit_pca_rotation_keeps_scores_orders_variance_and_round_trips(tiny_bert, tmp_path):
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", query_instruction="q: ")
    queries, docs = corpus_lines(30)[:12], corpus_lines(30)[12:]
    before_q, before_d = model.encode(queries, is_query=True), model.encode(docs)
    shares = model.fit_pca(queries, docs)
    assert model.embedding_dim == 32 and shares.shape == (32,)
    assert np.all(np.diff(shares) <= 1e-12) and abs(shares.sum() - 1) < 1e-6
    after_q, after_d = model.encode(queries, is_query=True), model.encode(docs)
    np.testing.assert_allclose(after_q @ after_d.T, before_q @ before_d.T, atol=1e-5)  # a rotation: scores unchanged
    rotated = np.concatenate([after_q, after_d])
    variances = rotated.var(axis=0, ddof=1)
    assert np.all(np.diff(variances) <= 1e-6)  # leading dimensions carry the most variance
    np.testing.assert_allclose(variances / variances.sum(), shares, atol=1e-5)
    model.save_pretrained(tmp_path / "saved")
    modules = json.loads((tmp_path / "saved" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    reloaded = AutoModelForEmbedding.from_pretrained(str(tmp_path / "saved"))
    assert reloaded.retrieval_config == model.retrieval_config
    np.testing.assert_array_equal(reloaded.encode(docs), after_d)
    np.testing.assert_array_equal(reloaded.encode(queries, is_query=True, truncate_dim=8),
                                  model.encode(queries, is_query=True, truncate_dim=8))
    st = needs("sentence_transformers")
    theirs = st.SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    np.testing.assert_allclose(theirs.encode_query(queries), after_q, atol=1e-5)
    np.testing.assert_allclose(theirs.encode_document(docs), after_d, atol=1e-5)


def test_fit_pca_fewer_axes_is_the_projection_on_the_leading_principal_axes(tiny_bert):
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    texts = corpus_lines(40)
    before = model.encode(texts)
    model.fit_pca(texts[:20], texts[20:], dim=6)
    after = model.encode(texts)
    assert after.shape == (40, 6)
    centred = before - before.mean(axis=0)
    axes = np.linalg.svd(centred, full_matrices=False)[2][:6].T  # computed apart, by numpy's SVD
    expected = before @ axes
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(_gram(after), _gram(expected), atol=1e-4)  # equal up to each axis's sign


def test_fit_pca_input_contract(tiny_bert):
    model = AutoModelForEmbedding.from_pretrained(tiny_bert)
    texts = corpus_lines(4)
    for dim in (0, 33, True, 2.0):
        with pytest.raises(ValueError, match=r"dim must be an integer in \[1, 32\]"):
            model.fit_pca(texts, texts, dim=dim)
    with pytest.raises(ValueError, match="at least 2 texts"):
        model.fit_pca(["one"], [])
    with pytest.raises((TypeError, ValueError), match="queries"):
        model.fit_pca(None, texts)
    assert model.dense is None and model.embedding_dim == 32  # nothing half-added
    model.fit_pca(texts, texts)
    with pytest.raises(ValueError, match="already has a Dense layer"):
        model.fit_pca(texts, texts)


def test_reads_a_sentence_transformers_dense_module(tiny_bert, tmp_path):
    st = needs("sentence_transformers")
    from sentence_transformers.sentence_transformer import modules

    torch.manual_seed(0)
    layers = [modules.Transformer(tiny_bert), modules.Pooling(32, "mean"),
              modules.Dense(32, 12, bias=True, activation_function=torch.nn.Tanh()), modules.Normalize()]
    st.SentenceTransformer(modules=layers, device="cpu").save(str(tmp_path / "st"))
    theirs = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    ours = AutoModelForEmbedding.from_pretrained(str(tmp_path / "st"))
    cfg = ours.retrieval_config
    assert (cfg.dense_dim, cfg.dense_bias, cfg.dense_activation, ours.embedding_dim) == (12, True, "tanh", 12)
    texts = corpus_lines(7)
    np.testing.assert_allclose(ours.encode(texts), theirs.encode(texts), atol=1e-5)
    ours.save_pretrained(tmp_path / "ours")  # and back: ours saves the same module
    np.testing.assert_allclose(st.SentenceTransformer(str(tmp_path / "ours"), device="cpu").encode(texts),
                               theirs.encode(texts), atol=1e-5)


def test_unsupported_dense_modules_fail_naming_the_file(tiny_bert, tmp_path):
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    model.fit_pca(corpus_lines(10), [])
    model.save_pretrained(tmp_path / "m")
    config = tmp_path / "m" / "2_Dense" / "config.json"
    good = config.read_text()
    config.write_text(good.replace("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.ReLU"))
    with pytest.raises(ValueError, match=r"2_Dense/config.json: activation_function 'torch.nn.modules.activation.ReLU'"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))
    config.write_text(good.replace('"bias": false', '"bias": true'))  # edited by hand: disagrees with our config
    with pytest.raises(ValueError, match="2_Dense/config.json: Dense settings .* disagree with retrievals_config.json"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))
    config.write_text(good.replace("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.ReLU"))
    (tmp_path / "m" / "retrievals_config.json").unlink()  # read as a plain sentence-transformers folder from here on,
    files = json.loads((tmp_path / "m" / "retrievals_files.json").read_text())  # its file record kept (minus that
    del files["files"]["retrievals_config.json"]                                 # file) for the checksum checks below
    (tmp_path / "m" / "retrievals_files.json").write_text(json.dumps(files))
    with pytest.raises(ValueError, match="activation_function"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))
    config.write_text(good)
    modules_file = tmp_path / "m" / "modules.json"
    modules = json.loads(modules_file.read_text())
    modules_file.write_text(json.dumps([modules[0], modules[1], modules[3], modules[2]]))
    with pytest.raises(ValueError, match="Dense module after Normalize"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))
    modules_file.write_text(json.dumps(modules))
    config.write_text("{not json")
    with pytest.raises(ValueError, match="2_Dense/config.json: not valid JSON"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))
    config.write_text(good)
    weights = tmp_path / "m" / "2_Dense" / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(Exception, match="2_Dense/model.safetensors"):  # our save's checksums notice first
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))
    record = (tmp_path / "m" / "retrievals_files.json").read_bytes()
    (tmp_path / "m" / "retrievals_files.json").unlink()
    with pytest.raises(ValueError, match="2_Dense/model.safetensors: unreadable Dense weights"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))  # a folder of another library: the reader says which
    weights.write_bytes(intact)
    (tmp_path / "m" / "retrievals_files.json").write_bytes(record)
    (tmp_path / "m" / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(Exception, match="2_Dense/model.safetensors: missing"):  # our save's file record notices
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))
    (tmp_path / "m" / "retrievals_files.json").unlink()
    with pytest.raises(FileNotFoundError, match="2_Dense: no model.safetensors"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))


def test_lora_adapter_keeps_its_dense_layer(tiny_qwen, tmp_path):
    needs("peft")
    model = AutoModelForEmbedding.from_pretrained(tiny_qwen, use_lora=True, lora_r=4)
    texts = corpus_lines(12)
    model.fit_pca(texts, texts, dim=8)
    with torch.no_grad():
        model.dense.weight.add_(0.1)  # trained weights, not the PCA ones
    expected = model.encode(texts)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "2_Dense" / "model.safetensors").is_file()
    np.testing.assert_allclose(AutoModelForEmbedding.from_pretrained(str(tmp_path / "adapter")).encode(texts), expected,
                               atol=1e-5)
    model.save_pretrained(tmp_path / "merged", merge_lora=True)
    np.testing.assert_allclose(AutoModelForEmbedding.from_pretrained(str(tmp_path / "merged")).encode(texts), expected,
                               atol=1e-5)


def test_an_instruction_that_leaves_no_room_for_the_text_is_refused(tiny_bert, tiny_qwen):
    # truncation cut every query to the instruction alone: every query got the same vector, silently
    instruction = "the a query document retrieval model search answer question faq topic card company tax service: "
    for path in (tiny_bert, tiny_qwen):
        model = AutoModelForEmbedding.from_pretrained(path, pooling_method="mean", query_instruction=instruction,
                                                      query_max_length=16)
        with pytest.raises(UsageError, match="leaves no room for the text"):
            model.encode_queries(["renew passport", "birth certificate fee"])
        model.encode(["renew passport"])  # documents have no instruction: fine
        vectors = model.encode_queries(["renew passport", "birth certificate fee"], max_length=64)
        assert not np.allclose(vectors[0], vectors[1])


def test_a_truncate_dim_reaches_sentence_transformers_and_comes_back(tiny_bert, tmp_path, caplog):
    # the config's truncate_dim was not written where sentence-transformers reads it: full-size vectors there
    st = needs("sentence_transformers")
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", truncate_dim=8, query_max_length=16,
                                                  document_max_length=32)
    with caplog.at_level("WARNING"):
        model.save_pretrained(tmp_path / "m")
    assert "one max length" in caplog.text  # its queries are cut at 32 there, at 16 here
    theirs = st.SentenceTransformer(str(tmp_path / "m"), device="cpu").encode(TEXTS[:3], normalize_embeddings=True)
    np.testing.assert_allclose(theirs, model.encode(TEXTS[:3]), atol=1e-5)
    (tmp_path / "m" / "retrievals_config.json").unlink()  # read as a sentence-transformers folder
    (tmp_path / "m" / "retrievals_files.json").unlink()
    assert AutoModelForEmbedding.from_pretrained(str(tmp_path / "m")).retrieval_config.truncate_dim == 8


def test_a_truncate_dim_above_the_model_size_is_refused(tiny_bert):
    # it served the full vectors silently: a typed 6400 for 64 went unnoticed (tiny_bert: 32 dimensions)
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    assert model.encode(TEXTS[:2], truncate_dim=32).shape == (2, 32)  # the full size itself is fine
    with pytest.raises(UsageError, match="truncate_dim=33 is larger than this model's 32 dimensions"):
        model.encode(TEXTS[:2], truncate_dim=33)
    with pytest.raises(UsageError, match="truncate_dim=64 is larger"):  # as its default: refused when it loads
        AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", truncate_dim=64)
    model.retrieval_config.truncate_dim = 64  # set afterwards: refused at the next encode
    with pytest.raises(UsageError, match="truncate_dim=64"):
        model.encode(TEXTS[:2])


def test_a_template_instruction_keeps_its_tail_when_the_text_is_cut(tiny_bert, tiny_qwen):
    # truncation cut instruction + text at the end: a long text lost the template's text after "{}"
    template = "passage: {} end of passage answer"
    for path in (tiny_bert, tiny_qwen):
        model = AutoModelForEmbedding.from_pretrained(path, pooling_method="mean", document_instruction=template,
                                                      document_max_length=40)
        tail = model.tokenizer(" end of passage answer", add_special_tokens=False)["input_ids"]
        short, long = model.tokenize(["tax", "tax " * 60])
        assert len(long) == 40
        trailing = model.processor.n_trailing
        assert long[len(long) - trailing - len(tail):len(long) - trailing] == tail
        assert short == model.tokenizer(apply_instruction(template, "tax"))["input_ids"]  # untouched when it fits
        np.testing.assert_allclose(model.encode(["tax " * 60, "tax"]), np.stack([model.encode("tax " * 60), model.encode("tax")]),
                                   atol=1e-5)


@pytest.mark.parametrize("similarity", ["cosine", None, "dot"])
def test_a_sentence_transformers_folder_without_normalize_ranks_as_its_similarity(tiny_bert, tmp_path, similarity):
    # without a Normalize module the folder's similarity_fn_name (cosine when unset, as sentence-transformers has it)
    # was ignored: every index and score here ranked the raw vectors by dot product, not by cosine
    st = needs("sentence_transformers")
    from sentence_transformers.sentence_transformer import modules

    torch.manual_seed(0)
    layers = [modules.Transformer(tiny_bert), modules.Pooling(32, "mean"), modules.Dense(32, 16, bias=True)]
    theirs = st.SentenceTransformer(modules=layers, device="cpu", similarity_fn_name=similarity)
    theirs.save(str(tmp_path / "st"))
    if similarity is None:
        config = tmp_path / "st" / "config_sentence_transformers.json"
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "similarity_fn_name"}))
    theirs = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    ours = AutoModelForEmbedding.from_pretrained(str(tmp_path / "st"))
    queries, docs = corpus_lines(12)[:4], corpus_lines(12)[4:]
    expected = theirs.similarity(theirs.encode(queries), theirs.encode(docs)).numpy()
    np.testing.assert_allclose(ours.similarity(ours.encode_queries(queries), ours.encode_corpus(docs)), expected, atol=1e-5)
    assert ours.retrieval_config.normalize_embeddings is (similarity != "dot")


def test_a_sentence_transformers_document_prompt_is_the_first_key_it_has(tiny_bert, tmp_path):
    # "document": "" means no prompt for sentence-transformers' encode_document even beside a "passage" one (it was
    # read as "passage: "), and "corpus" is its third name (its docstring's order: document, passage, corpus)
    st = needs("sentence_transformers")
    from sentence_transformers.sentence_transformer import modules

    texts = corpus_lines(5)
    for prompts, expected in (({"query": "query: ", "document": "", "passage": "passage: "}, None),
                              ({"query": "query: ", "corpus": "corpus: "}, "corpus: ")):
        folder = tmp_path / str(len(prompts))
        layers = [modules.Transformer(tiny_bert), modules.Pooling(32, "mean"), modules.Normalize()]
        st.SentenceTransformer(modules=layers, device="cpu").save(str(folder))
        config = folder / "config_sentence_transformers.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": prompts}))  # exactly these keys
        ours = AutoModelForEmbedding.from_pretrained(str(folder))
        assert (ours.retrieval_config.document_instruction or None) == expected
        theirs = st.SentenceTransformer(str(folder), device="cpu")
        np.testing.assert_allclose(ours.encode_corpus(texts), theirs.encode(texts, prompt=expected), atol=1e-5)


def test_a_decoder_whose_tokenizer_ends_texts_itself_gets_no_second_end_token(tiny_qwen, tmp_path):
    # Qwen3-Embedding's tokenizer ends every text with <|endoftext|> while its eos_token is <|im_end|>: an EOS was
    # appended after it, and last-token pooling read that token instead of the one the model pools
    import shutil

    from tokenizers import processors
    from transformers import AutoModel, AutoTokenizer

    path = tmp_path / "qwen3-like"
    shutil.copytree(tiny_qwen, path)
    tok = AutoTokenizer.from_pretrained(str(path))
    end = tok.convert_tokens_to_ids("<|endoftext|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1", special_tokens=[("<|endoftext|>", end)])
    tok.eos_token, tok.pad_token = "<|im_start|>", "<|endoftext|>"  # <|im_start|> stands for <|im_end|>
    tok.save_pretrained(str(path))
    texts = ["tax card renew", "passport office fee online", "birth certificate"]
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForEmbedding.from_pretrained(str(path), pooling_method="last")
    assert model.retrieval_config.append_eos  # a decoder's default: the tokenizer's own end token is that EOS
    assert model.tokenize(texts) == [tok(t)["input_ids"] for t in texts]
    backbone = AutoModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        expected = [torch.nn.functional.normalize(backbone(**tok(t, return_tensors="pt")).last_hidden_state[0, -1], dim=-1)
                    for t in texts]
    np.testing.assert_allclose(model.encode(texts), torch.stack(expected).numpy(), atol=1e-5)


def test_roberta_style_positions_are_the_usable_ones(tiny_bert, tmp_path):
    # XLM-R / RoBERTa number positions from pad_token_id + 1 (514 in the config, 512 usable): a max length up to
    # max_position_embeddings passed every check and failed in the backbone with an IndexError
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from retrievals import AutoModelForRanking

    folder = tmp_path / "tiny-roberta"
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(AutoTokenizer.from_pretrained(tiny_bert)), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=34,
                               pad_token_id=0)).save_pretrained(folder)
    model = AutoModelForEmbedding.from_pretrained(str(folder), pooling_method="mean")
    assert model.retrieval_config.query_max_length == model.retrieval_config.document_max_length == 33
    long = "tax card renew " * 30
    assert model.encode([long]).shape == (1, 32)
    with pytest.raises(UsageError, match="over the 33 positions"):
        model.encode([long], max_length=34)
    assert AutoModelForEmbedding.from_pretrained(str(folder), pooling_method="mean",
                                                 document_max_length=34).retrieval_config.document_max_length == 33
    ranker = AutoModelForRanking.from_pretrained(str(folder), model_type="cross-encoder")
    assert ranker.retrieval_config.max_length == 33 and len(ranker.compute_score([("tax", long)])) == 1


def test_a_tokenizer_that_cuts_at_the_start_is_cut_at_the_end(tiny_bert, tmp_path, caplog):
    # some chat models save truncation_side="left": the instruction was cut off every long query, documents scored by
    # their last tokens, and the rankers' query cut (read from the offsets' end) never shortened a query
    import shutil

    from transformers import AutoTokenizer

    from retrievals import AutoModelForRanking

    folder = tmp_path / "left"
    shutil.copytree(tiny_bert, folder)
    tok = AutoTokenizer.from_pretrained(str(folder), truncation_side="left")
    tok.save_pretrained(str(folder))
    assert AutoTokenizer.from_pretrained(str(folder)).truncation_side == "left"
    long = " ".join(corpus_lines(10))
    with caplog.at_level("WARNING", logger="retrievals"):
        model = AutoModelForEmbedding.from_pretrained(str(folder), pooling_method="mean", query_instruction="query: ",
                                                      query_max_length=16)
    assert "truncation_side='left'" in caplog.text
    ids = model.tokenize([long], is_query=True)[0]
    assert len(ids) == 16 and ids[1:4] == tok("query: " + long)["input_ids"][1:4]  # [CLS] query : ...
    ranker = AutoModelForRanking.from_pretrained(str(folder), model_type="cross-encoder", max_length=32)
    assert ranker.tokenizer.truncation_side == "right" and len(ranker.compute_score([(long, long)])) == 1


def test_an_instruction_spelling_a_special_token_pools_as_it_is_tokenized(tiny_bert, caplog):
    # include_prompt=False counted the prompt with its special token whole (1 token) while the text was tokenized
    # with it split into plain pieces: pooling took in the leftover pieces of the instruction
    instruction = "[SEP] query: "
    with caplog.at_level("WARNING", logger="retrievals"):
        model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", query_instruction=instruction,
                                                      include_prompt=False)
        ids = model.tokenize(["tax card"], is_query=True)
    prompt_ids = model.tokenizer("[SEP] query: ", split_special_tokens=True)["input_ids"][:-1]  # less the final [SEP]
    assert ids.prompt_length == len(prompt_ids) and ids[0][: len(prompt_ids)] == prompt_ids
    # the pooled tokens are exactly the text's and the final [SEP]
    assert len(ids[0]) - ids.prompt_length == len(model.tokenizer("tax card")["input_ids"]) - 1
    assert "spells the special token(s) [SEP]" in caplog.text


def test_settings_of_reads_what_from_pretrained_loads(tiny_bert, tmp_path):
    # a training run settles its loss (temperature, Matryoshka truncation) from these before loading anything
    from retrievals.models.sparse import SparseConfig, SparseEmbedder

    AutoModelForEmbedding.from_pretrained(tiny_bert, normalize_embeddings=False, pooling_method="mean").save_pretrained(tmp_path / "dot")
    for folder, override in ((tiny_bert, None), (str(tmp_path / "dot"), None), (str(tmp_path / "dot"), True)):
        settings = AutoModelForEmbedding.settings_of(folder, normalize_embeddings=override)
        loaded = AutoModelForEmbedding.from_pretrained(folder, normalize_embeddings=override).retrieval_config
        assert (settings.normalize_embeddings, settings.pooling_method) == (loaded.normalize_embeddings, loaded.pooling_method)
    assert AutoModelForEmbedding.settings_of(str(tmp_path / "dot")).normalize_embeddings is False
    (tmp_path / "st").mkdir()  # the same model as sentence-transformers alone has it: no Normalize, dot products
    for name in ("modules.json", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "1_Pooling"):
        src = tmp_path / "dot" / name
        if src.exists():
            (tmp_path / "st" / name).symlink_to(src)
    for similarity, normalized in (("dot", False), ("cosine", True)):
        (tmp_path / "st" / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": similarity}))
        assert AutoModelForEmbedding.settings_of(str(tmp_path / "st")).normalize_embeddings is normalized
        assert AutoModelForEmbedding.from_pretrained(str(tmp_path / "st")).retrieval_config.normalize_embeddings is normalized
    SparseEmbedder.from_pretrained(tiny_bert).save_pretrained(tmp_path / "sparse")
    assert isinstance(AutoModelForEmbedding.settings_of(str(tmp_path / "sparse")), SparseConfig)
    assert AutoModelForEmbedding.kind_of(str(tmp_path / "sparse")) == "sparse"
    assert AutoModelForEmbedding.kind_of(tiny_bert) is None and AutoModelForEmbedding.kind_of("org/hub-id") is None
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['colour'\\]"):
        AutoModelForEmbedding.settings_of(tiny_bert, colour="red")


def test_a_sentence_transformers_decoder_folder_runs_as_sentence_transformers_does(tiny_qwen, tmp_path):
    # last-token pooling of a decoder appended our EOS, which sentence-transformers never adds: other vectors than
    # the folder's own model (0.45 apart in a review probe)
    st = needs("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(tiny_qwen, max_seq_length=64)
    transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
    theirs = st.SentenceTransformer(modules=[transformer, Pooling(transformer.get_word_embedding_dimension(),
                                                                  pooling_mode="lasttoken"), Normalize()], device="cpu")
    theirs.save(str(tmp_path / "st"))
    texts = ["tax card renew", "passport office fee online form", "a"]
    ours = AutoModelForEmbedding.from_pretrained(str(tmp_path / "st"))
    assert ours.retrieval_config.pooling_method == "last" and not ours.retrieval_config.append_eos
    np.testing.assert_allclose(ours.encode(texts), theirs.encode(texts), atol=1e-5)
    assert AutoModelForEmbedding.from_pretrained(str(tmp_path / "st"), append_eos=True).retrieval_config.append_eos
    assert AutoModelForEmbedding.from_pretrained(tiny_qwen).retrieval_config.append_eos  # a plain folder: ours


def test_append_eos_false_says_when_the_tokenizer_adds_it(tiny_qwen, tmp_path, caplog):
    # a folder saved with append_eos has a tokenizer that adds EOS: append_eos=False could not remove it, silently
    AutoModelForEmbedding.from_pretrained(tiny_qwen).save_pretrained(tmp_path / "m")
    with caplog.at_level("WARNING", logger="retrievals"):
        model = AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"), append_eos=False)
    assert model.tokenize(["a b"])[0][-1] == model.tokenizer.eos_token_id
    assert "append_eos=False: this tokenizer itself ends every text with" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="retrievals"):
        AutoModelForEmbedding.from_pretrained(tiny_qwen, append_eos=False)  # a plain tokenizer: nothing to say
    assert "append_eos=False" not in caplog.text


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_a_text_with_nothing_to_pool_is_zeros_whatever_the_batch(pooling, tiny_qwen):
    # include_prompt=False and a text that is all prompt: last pooling took the last slot (a pad, whose state depends on
    # the other texts of the batch), so batched != single
    model = AutoModelForEmbedding.from_pretrained(tiny_qwen, pooling_method=pooling, append_eos=False,
                                                  include_prompt=False, query_instruction="Query: ")
    texts = ["", "tax card renew passport office online"]
    batched = model.encode_queries(texts, normalize_embeddings=False)
    single = np.stack([model.encode_queries(t, normalize_embeddings=False) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_array_equal(batched[0], 0.0)
    assert np.abs(batched[1]).max() > 0
    hidden, mask = torch.randn(2, 3, 4), torch.tensor([[0, 0, 0], [1, 1, 0]])
    for method in ("last", "mean"):
        assert torch.equal(pool(hidden, mask, method)[0], torch.zeros(4))
    assert torch.equal(pool(hidden, mask, "cls")[0], hidden[0, 0])  # encoders pad right: slot 0, as sentence-transformers


def test_lora_settings_that_would_be_dropped_are_refused(tiny_qwen, tmp_path):
    # a trained adapter loads with its own r, alpha and targets: lora_r=64 given with it was dropped (the run's record
    # said 64), and lora_target_modules=[] became "all-linear"
    needs("peft")
    AutoModelForEmbedding.from_pretrained(tiny_qwen, use_lora=True, lora_r=4).save_pretrained(tmp_path / "adapter")
    for settings in ({"lora_r": 64}, {"lora_alpha": 8}, {"lora_target_modules": ["q_proj"]}):
        with pytest.raises(UsageError, match="a trained LoRA adapter keeps its own settings; given (r 64|lora_alpha 8|"
                                             "target_modules)"):
            AutoModelForEmbedding.from_pretrained(tiny_qwen, lora_path=str(tmp_path / "adapter"), use_lora=True, **settings)
        with pytest.raises(UsageError, match="a trained LoRA adapter keeps its own"):
            AutoModelForEmbedding.from_pretrained(str(tmp_path / "adapter"), use_lora=True, **settings)
    resumed = AutoModelForEmbedding.from_pretrained(str(tmp_path / "adapter"), use_lora=True)
    assert resumed.backbone.peft_config["default"].r == 4
    # the same settings again (a training command rerun on its adapter): what the adapter has, so nothing is dropped
    same = AutoModelForEmbedding.from_pretrained(str(tmp_path / "adapter"), use_lora=True, lora_r=4)
    assert same.backbone.peft_config["default"].r == 4
    with pytest.raises(UsageError, match="lora_target_modules is empty"):
        AutoModelForEmbedding.from_pretrained(tiny_qwen, use_lora=True, lora_target_modules=[])

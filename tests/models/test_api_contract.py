"""The Python API's input contract (empty, invalid and single inputs) and thread safety, on tiny models."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrievals import AutoModelForEmbedding, AutoModelForRanking
from retrievals.index import BM25Index, ExactIndex, FaissIndex, reciprocal_rank_fusion
from retrievals.models.processing import eval_mode, exclude_prompt
from retrievals.utils import UsageError

from ..conftest import corpus_lines, needs

LINES = corpus_lines(64)
QUERIES = LINES[:16]
DOCS = [" ".join(LINES[i : i + 4]) for i in range(16, 48)]  # long: cut at 64 tokens, far above the 8 of queries


@pytest.fixture(scope="module")
def dropout_bert(tiny_bert, tmp_path_factory) -> str:
    """The tiny BERT with dropout on: a call that runs in train mode gives different vectors."""
    folder = tmp_path_factory.mktemp("dropout-bert")
    shutil.copytree(tiny_bert, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _concurrently(jobs, workers=8):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: job(), jobs))


@pytest.mark.parametrize("dense", [False, True])
def test_threads_encode_like_one_thread(dropout_bert, dense):
    model = AutoModelForEmbedding.from_pretrained(dropout_bert, pooling_method="mean", query_max_length=8,
                                                  document_max_length=64)
    if dense:  # a Dense layer after pooling (fit_pca's): the same path, one more module
        model.fit_pca(QUERIES, DOCS, dim=16)
    expected = {True: model.encode_queries(QUERIES, batch_size=4), False: model.encode_corpus(DOCS, batch_size=4)}
    jobs = []
    for i in range(48):  # queries and documents interleaved: different truncation lengths overlap
        is_query = i % 2 == 0
        texts = QUERIES if is_query else DOCS
        encode = model.encode_queries if is_query else model.encode_corpus
        jobs.append(lambda encode=encode, texts=texts, is_query=is_query: (is_query, encode(texts, batch_size=4)))
    for is_query, got in _concurrently(jobs):
        np.testing.assert_allclose(got, expected[is_query], atol=1e-6)
    assert not model.training  # left in eval mode
    np.testing.assert_allclose(model.encode_queries(QUERIES, batch_size=4), expected[True], atol=1e-6)


def test_threads_score_like_one_thread(dropout_bert):
    model = AutoModelForRanking.from_pretrained(dropout_bert, model_type="cross-encoder", max_length=64, query_max_length=8)
    pair_sets = [[(q, d) for q, d in zip(QUERIES, DOCS)], [(d, q) for q, d in zip(QUERIES, DOCS[16:])]]
    expected = [model.compute_score(p, batch_size=4) for p in pair_sets]
    jobs = [lambda k=k: (k, model.compute_score(pair_sets[k], batch_size=4)) for k in [0, 1] * 24]
    for k, got in _concurrently(jobs):
        np.testing.assert_allclose(got, expected[k], atol=1e-6)


def test_threads_tokenize_like_one_thread(tiny_bert):
    """The tokenizer alone, many short calls: the shared fast tokenizer's truncation settings must not leak."""
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, query_max_length=8, document_max_length=64)
    ranker = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=64, query_max_length=8)
    ranker.processor.tokenizer = ranker.tokenizer = model.tokenizer  # one tokenizer object shared by both models
    pairs = list(zip(DOCS[:8], DOCS[8:16]))
    calls = {"q": lambda: model.tokenize(DOCS[:8], is_query=True), "d": lambda: model.tokenize(DOCS[:8]),
             "pairs": lambda: ranker.processor.units(pairs, True)}
    expected = {name: call() for name, call in calls.items()}
    jobs = [lambda name=name: (name, calls[name]()) for name in list(calls) * 150]
    for name, got in _concurrently(jobs):
        assert got == expected[name], name


def test_overlapping_calls_on_a_training_model_run_in_eval_and_restore_training(dropout_bert):
    """Evaluation during training: calls switch to eval for their duration; the last one to finish restores training."""
    model = AutoModelForEmbedding.from_pretrained(dropout_bert, query_max_length=8, document_max_length=64)
    expected = model.encode_corpus(DOCS, batch_size=4)
    model.train()
    for got in _concurrently([lambda: model.encode_corpus(DOCS, batch_size=4)] * 16):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert all(m.training for m in model.modules())
    model.eval()
    model.backbone.encoder.train()  # a part in training mode: restored exactly, the rest left alone
    with eval_mode(model):
        with eval_mode(model):
            pass
        assert not any(m.training for m in model.modules())  # the outer call is still running
    assert [m.training for m in model.modules()] == [m is model.backbone.encoder or _inside(m, model.backbone.encoder)
                                                     for m in model.modules()]


def _inside(module, parent):
    return any(module is m for m in parent.modules())


@pytest.mark.parametrize("kind", ["embedding", "cross-encoder", "colbert", "llm"])
def test_from_pretrained_returns_eval_mode(kind, tiny_bert, tiny_qwen):
    if kind == "embedding":
        model = AutoModelForEmbedding.from_pretrained(tiny_bert)
    else:
        model = AutoModelForRanking.from_pretrained(tiny_qwen if kind == "llm" else tiny_bert, model_type=kind)
    assert not any(m.training for m in model.modules())


# ---------------------------------------------------------------------------------------------- embedder inputs
@pytest.fixture(scope="module")
def embedder(tiny_bert):
    return AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", query_instruction="q: ",
                                                 query_max_length=16, document_max_length=32)


def test_encode_empty_gives_empty_results(embedder):
    dim = embedder.embedding_dim
    for encode in (embedder.encode, embedder.encode_queries, embedder.encode_corpus):
        out = encode([])
        assert isinstance(out, np.ndarray) and out.shape == (0, dim) and out.dtype == np.float32
        tensor = encode([], convert_to_tensor=True)
        assert isinstance(tensor, torch.Tensor) and tensor.shape == (0, dim)
    assert embedder.encode_token_ids([]).shape == (0, dim)
    assert embedder.encode(iter(())).shape == (0, dim)


def test_encode_rejects_bad_input(embedder):
    with pytest.raises(TypeError, match="sentences must be a string or a list of strings, got NoneType"):
        embedder.encode(None)
    with pytest.raises(TypeError, match="got dict"):  # a dict is a document: encode_corpus, not encode
        embedder.encode({"text": "a"})
    with pytest.raises(TypeError, match=r"sentences\[3\] must be a string, got NoneType"):
        embedder.encode(["a", "b", "c", None])
    with pytest.raises(TypeError, match=r"sentences\[0\] must be a string, got int"):
        embedder.encode_queries([7])
    with pytest.raises(TypeError, match="got bytes"):
        embedder.encode(b"text")
    with pytest.raises(TypeError, match=r"corpus\[1\] must have a string 'text', got NoneType"):
        embedder.encode_corpus(["a", {"title": "t"}])
    with pytest.raises(TypeError, match=r"corpus must have a string 'text', got int"):
        embedder.encode_corpus({"title": "t", "text": 3})
    with pytest.raises(TypeError, match=r"corpus\[0\] must be a string or a dict"):
        embedder.encode_corpus([None])
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size must be > 0"):
            embedder.encode(["a"], batch_size=bad)
        with pytest.raises(ValueError, match="batch_size must be > 0"):
            embedder.encode_token_ids([[1, 2]], batch_size=bad)


def test_single_dict_is_one_document(embedder):
    doc = {"title": "t", "text": "passport office fee online"}
    one = embedder.encode_corpus(doc)
    assert one.shape == (embedder.embedding_dim,)
    np.testing.assert_array_equal(one, embedder.encode_corpus([doc])[0])
    np.testing.assert_allclose(one, embedder.encode("t passport office fee online"), atol=1e-6)
    assert embedder.encode_corpus(doc, convert_to_tensor=True).shape == (embedder.embedding_dim,)
    np.testing.assert_array_equal(embedder.encode_corpus(np.array(["a b", "c"])), embedder.encode_corpus(["a b", "c"]))


TEXT = st.one_of(
    st.text(max_size=60),  # any unicode, including the empty string
    st.text(alphabet="abcdefghij tax card", max_size=30),
    st.builds(lambda word, n: word * n, st.text(min_size=1, max_size=6), st.integers(50, 400)),  # far past the max length
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXT, min_size=1, max_size=7), is_query=st.booleans(), batch_size=st.integers(1, 4))
def test_property_batched_equals_one_by_one(embedder, texts, is_query, batch_size):
    batched = embedder.encode(texts, is_query=is_query, batch_size=batch_size)
    single = np.stack([embedder.encode(t, is_query=is_query) for t in texts])
    assert batched.shape == (len(texts), embedder.embedding_dim)
    np.testing.assert_allclose(batched, single, atol=1e-5)


BAD = st.sampled_from([None, 0, 2.5, b"bytes", ["nested"], ("a",)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=10), max_size=6), bad=BAD, data=st.data())
def test_property_bad_item_names_its_position(embedder, texts, bad, data):
    pos = data.draw(st.integers(0, len(texts)))
    items = texts[:pos] + [bad] + texts[pos:]
    kind = type(bad).__name__
    with pytest.raises(TypeError, match=rf"sentences\[{pos}\] must be a string, got {kind}"):
        embedder.encode(items)
    with pytest.raises(TypeError, match=rf"corpus\[{pos}\] must be a string or a dict with 'text', got {kind}"):
        embedder.encode_corpus(items)
    with pytest.raises(TypeError, match=rf"queries\[{pos}\] must be a string, got {kind}"):
        BM25Index(["tax card", "passport"], ["a", "b"]).search(items)


# ---------------------------------------------------------------------------------------------- reranker inputs
@pytest.mark.parametrize("kind", ["cross-encoder", "colbert", "llm"])
def test_reranker_input_contract(kind, tiny_bert, tiny_qwen):
    if kind == "llm":
        model = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=64, task_prompt="Relevant?")
    else:
        model = AutoModelForRanking.from_pretrained(tiny_bert, model_type=kind, max_length=32)
    docs = ["passport office fee", "tax card", "birth certificate"]
    assert model.compute_score([]) == []
    assert model.rerank("tax", []) == []
    assert model.rerank("tax", docs, top_k=0) == []
    assert [r.index for r in model.rerank("tax", docs, top_k=2)] == [r.index for r in model.rerank("tax", docs)][:2]
    one = model.rerank("tax", {"title": "t", "text": "tax card"})
    assert len(one) == 1 and one[0].document == "t tax card"
    assert one[0].score == pytest.approx(model.compute_score(("tax", "t tax card")), abs=1e-6)
    assert [r.document for r in model.rerank("tax", "tax card")] == ["tax card"]  # one string: one document
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        model.rerank("tax", docs, top_k=-1)
    with pytest.raises(TypeError, match="query must be a string, got NoneType"):
        model.rerank(None, docs)
    with pytest.raises(TypeError, match=r"documents\[2\] must be a string or a dict with 'text', got int"):
        model.rerank("tax", ["a", "b", 3])
    with pytest.raises(TypeError, match="pairs must be a"):
        model.compute_score(None)
    with pytest.raises(TypeError, match=r"pairs\[1\]\[1\] must be a string, got NoneType"):
        model.compute_score([("a", "b"), ("a", None)])
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(query, document\) pair"):
        model.compute_score(["ab"])
    for bad in (0, -2):
        with pytest.raises(ValueError, match="batch_size must be > 0"):
            model.compute_score([("a", "b")], batch_size=bad)
        with pytest.raises(ValueError, match="batch_size must be > 0"):
            model.rerank("a", ["b"], batch_size=bad)


# ---------------------------------------------------------------------------------------------- index inputs
def _indexes():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 8)).astype(np.float32)
    ids = [f"d{i}" for i in range(5)]
    texts = ["tax card", "passport fee", "birth certificate", "office time", "renew license"]
    out = [(ExactIndex(vectors, ids), vectors[:2])]
    if needs("faiss"):
        out.append((FaissIndex(vectors, ids), vectors[:2]))
    if needs("bm25s"):
        out.append((BM25Index(texts, ids), texts[:2]))
    return out


def test_index_input_contract():
    for index, queries in _indexes():
        name = index.backend
        scores, ids = index.search([], top_k=3)
        assert scores.shape == (0, 3) and ids == [], name
        scores, ids = index.search(queries, top_k=0)
        assert scores.shape == (2, 0) and ids == [[], []], name
        scores, ids = index.search(queries, top_k=50)  # capped at the index size
        assert scores.shape == (2, 5) and len(ids[0]) == 5, name
        assert index.search(queries[0], top_k=2)[0].shape == (1, 2), name  # one query
        assert index.search_run([], [], top_k=3) == {}, name
        assert index.search_run(["q1", "q2"], queries, top_k=0) == {"q1": {}, "q2": {}}, name
        with pytest.raises(ValueError, match="top_k must be >= 0"):
            index.search(queries, top_k=-1)
        with pytest.raises(ValueError, match="query_ids and queries"):
            index.search_run(["q1"], queries, top_k=2)
        with pytest.raises(TypeError):
            index.search(None)
    exact = _indexes()[0][0]
    with pytest.raises(ValueError, match="vectors of size 8"):
        exact.search(np.zeros((2, 3), dtype=np.float32))
    assert exact.search(torch.zeros(0, 8))[0].shape == (0, 5)
    run = {"q": {"a": 1.0, "b": 0.5}}
    assert reciprocal_rank_fusion([run, run], top_k=0) == {"q": {}}
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        reciprocal_rank_fusion([run], top_k=-1)


# ---------------------------------------------------------------------------------------------- include_prompt
def test_exclude_prompt_either_padding_side():
    right = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    assert exclude_prompt(right, 2).tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]
    assert exclude_prompt(left, 2).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]


@pytest.mark.parametrize("kind, side", [("bert", "right"), ("qwen", "left"), ("qwen", "right")])
def test_include_prompt_false_embeds_like_sentence_transformers(kind, side, tiny_bert, tiny_qwen, tmp_path):
    st_lib = needs("sentence_transformers")
    base = tiny_bert if kind == "bert" else tiny_qwen
    model = AutoModelForEmbedding.from_pretrained(base, pooling_method="mean", padding_side=side, query_max_length=24,
                                                  document_max_length=24, query_instruction="query: tax ",
                                                  document_instruction="passage: ")
    model.save_pretrained(tmp_path / "m")
    folder = tmp_path / "m"
    for ours_only in ("retrievals_config.json", "retrievals_files.json"):  # a sentence-transformers folder, as on the hub
        (folder / ours_only).unlink()
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "include_prompt": False}))
    texts = corpus_lines(7) + ["", "tax card " * 40]  # an empty text, and one cut at the max length
    ours = AutoModelForEmbedding.from_pretrained(str(folder), padding_side=side)
    assert ours.retrieval_config.include_prompt is False
    theirs = st_lib.SentenceTransformer(str(folder), device="cpu")
    theirs.tokenizer.padding_side = side
    expected_q = theirs.encode(texts, prompt_name="query", batch_size=4)
    np.testing.assert_allclose(ours.encode_queries(texts, batch_size=4), expected_q, atol=1e-5)
    np.testing.assert_allclose(ours.encode_corpus(texts), theirs.encode(texts, prompt_name="document"), atol=1e-5)
    assert not np.allclose(model.encode_queries(texts), expected_q, atol=1e-3)  # the prompt did count before
    # training sees the same: the collator's batch carries the pooling mask that leaves the prompt out
    from retrievals.data.collator import EmbeddingCollator

    batch = EmbeddingCollator(ours.processor)([{"query": t, "documents": ["x"]} for t in texts])
    with torch.no_grad():
        trained_view = ours(query=batch["query"]).query_embeddings
    np.testing.assert_allclose(trained_view.numpy(), expected_q, atol=1e-5)
    # saved by us: retrievals_config.json and the sentence-transformers files both keep include_prompt=False
    ours.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "1_Pooling" / "config.json").read_text())["include_prompt"] is False
    again = AutoModelForEmbedding.from_pretrained(str(tmp_path / "again"))
    assert again.retrieval_config.include_prompt is False
    np.testing.assert_array_equal(again.encode_queries(texts), ours.encode_queries(texts))


def test_include_prompt_false_needs_prefix_instructions(tiny_bert):
    with pytest.raises(ValueError, match="include_prompt=False needs instructions that are prefixes"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, query_instruction="Instruct: {}\nQuery:", include_prompt=False)
    prefix_template = AutoModelForEmbedding.from_pretrained(tiny_bert, query_instruction="Q: {}", include_prompt=False)
    plain = AutoModelForEmbedding.from_pretrained(tiny_bert, query_instruction="Q: ", include_prompt=False)
    np.testing.assert_array_equal(prefix_template.encode_queries(QUERIES), plain.encode_queries(QUERIES))
    assert plain.tokenize(QUERIES, is_query=True).prompt_length == 3  # [CLS] q : (the trailing [SEP] of the prompt alone is not counted)


def test_threads_load_like_one_thread(tiny_bert):
    """Models loaded by many threads at once, then one with fresh layers (a sparse embedder's MLM head, which the
    tiny BERT lacks): transformers swaps torch's init functions process-wide while it loads, and loads in parallel
    threads used to leave them swapped, so the later fresh head stayed on the meta device and the load failed."""
    import torch

    from retrievals.models.sparse import SparseEmbedder

    init = torch.nn.init.normal_
    expected = AutoModelForEmbedding.from_pretrained(tiny_bert).encode(QUERIES[:4])
    jobs = [lambda: AutoModelForEmbedding.from_pretrained(tiny_bert).encode(QUERIES[:4])] * 16
    for got in _concurrently(jobs):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert torch.nn.init.normal_ is init
    sparse = SparseEmbedder.from_pretrained(tiny_bert)
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in sparse.parameters())


# ---------------------------------------------------------------- lengths, empty texts, devices, saved tokenizers


def test_an_empty_text_gives_the_same_vector_alone_and_in_a_batch(tiny_qwen, tiny_bert):
    """A decoder tokenizer adds no token to "": it becomes one EOS token instead of a zero-token sequence that
    crashed alone and came out as a zero vector beside other texts."""
    qwen = AutoModelForEmbedding.from_pretrained(tiny_qwen, pooling_method="mean")
    alone, batched = qwen.encode([""]), qwen.encode(["", LINES[0]])
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)
    assert np.linalg.norm(alone[0]) > 0.5
    ranker = AutoModelForRanking.from_pretrained(tiny_qwen, model_type="cross-encoder", max_length=64)
    assert abs(ranker.compute_score(("", "")) - ranker.compute_score([("", ""), (LINES[0], LINES[1])])[0]) < 1e-5


def test_lengths_and_sizes_are_checked(tiny_bert):
    from retrievals.utils import UsageError

    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    long_text = " ".join(LINES)
    for bad, error in ((1, "leaves no room"), (2, "leaves no room"), (0, "max_length must be >= 1"), (-1, ">= 1")):
        with pytest.raises(UsageError, match=error):  # 1 and 2: BERT adds 2 tokens, the tokenizer would not truncate
            model.encode(long_text, max_length=bad)
    assert model.encode(long_text, max_length=3).shape == (32,)
    for bad in (True, 2.5):
        with pytest.raises(TypeError, match="truncate_dim must be an int"):
            model.encode("a", truncate_dim=bad)
    with pytest.raises(TypeError, match="document_max_length must be an int"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, document_max_length=2.5)
    with pytest.raises(UsageError, match="document_max_length must be >= 1"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, document_max_length=-3)
    big = AutoModelForEmbedding.from_pretrained(tiny_bert, document_max_length=1000)  # 128 positions: lowered to them
    assert big.retrieval_config.document_max_length == 128 and big.encode(long_text).shape == (32,)
    with pytest.raises(UsageError, match="padding_side"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, padding_side="middle")
    with pytest.raises(UsageError, match="window_overlap must be >= 0"):
        AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", window_overlap=-5)


def test_encode_never_moves_the_model(embedder):
    from retrievals.utils import UsageError

    assert embedder.encode("a", device="cpu").shape == (32,)
    with pytest.raises(UsageError, match="move it first"):
        embedder.encode("a", device="meta")
    assert embedder.device.type == "cpu" and embedder.encode("a").shape == (32,)


def test_build_index_of_one_text_is_one_document(embedder):
    index = embedder.build_index(LINES[0], index_type="exact")
    assert len(index) == 1 and index.search(embedder.encode(LINES[0]), 1)[1] == [["0"]]


def test_a_save_after_inference_writes_the_tokenizer_at_rest(tiny_bert, tmp_path):
    """The fast tokenizer keeps the last call's truncation: saved, it cut every text at that length when read by
    `tokenizers`, and two saves of one model differed."""
    from tokenizers import Tokenizer

    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", query_max_length=8)
    model.save_pretrained(tmp_path / "a")
    model.encode_queries(QUERIES[:2])
    model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert json.loads((tmp_path / "b" / "tokenizer.json").read_text())["truncation"] is None
    assert len(Tokenizer.from_file(str(tmp_path / "b" / "tokenizer.json")).encode(" ".join(LINES)).ids) > 8


def test_sparse_call_arguments_are_checked(tiny_bert, tmp_path):
    from retrievals.models.sparse import SparseEmbedder
    from retrievals.utils import UsageError

    model = SparseEmbedder.from_pretrained(tiny_bert, query_inference_free=True)
    with pytest.raises(UsageError, match="top_k must be >= 0"):
        model.encode_sparse("a", top_k=-1)
    with pytest.raises(TypeError, match="top_k must be an int"):
        model.encode_sparse("a", top_k=2.5)
    with pytest.raises(UsageError, match="not normalised"):
        model.encode("a", normalize_embeddings=True)
    for is_query in (True, False):  # the inference-free query path too: vocabulary ids below 5 are no smaller vector
        with pytest.raises(UsageError, match="truncate_dim=5: a sparse embedder's dimensions are vocabulary terms"):
            model.encode("a b", is_query=is_query, truncate_dim=5)
    assert model.encode("a b", is_query=True, truncate_dim=model.embedding_dim).shape == (model.embedding_dim,)


def test_similarity_and_the_encode_helpers_take_what_they_say(embedder):
    from retrievals.utils import UsageError

    q, d = embedder.encode_queries(["a"]), embedder.encode_corpus(["b", "c"])
    mixed = embedder.similarity(q.astype(np.float64), torch.as_tensor(d))
    assert mixed.dtype == torch.float32 and mixed.shape == (1, 2)
    with pytest.raises(UsageError, match="use encode_queries"):
        embedder.encode_corpus("b", is_query=True)
    with pytest.raises(UsageError, match="use encode_corpus"):
        embedder.encode_queries("a", is_query=False)


def test_a_lone_surrogate_is_named_before_the_tokenizer(embedder):
    from retrievals.inputs import as_pairs, as_texts
    from retrievals.utils import UsageError

    bad = json.loads('"bad \\ud800 text"')  # what json.loads gives for an unpaired \u escape
    # before: passed every check and failed in the tokenizer with a TypeError naming neither item nor cause
    with pytest.raises(UsageError, match=r"sentences\[1\] has a lone surrogate at character 4"):
        embedder.encode(["ok", bad])
    with pytest.raises(UsageError, match=r"^sentences has a lone surrogate at character 4"):
        embedder.encode(bad)
    with pytest.raises(UsageError, match=r"corpus\[0\] has a lone surrogate"):
        embedder.encode_corpus([{"title": "t", "text": bad}])
    with pytest.raises(UsageError, match=r"pairs\[1\]\[1\] has a lone surrogate at character 4"):
        as_pairs([("q", "d"), ("q", bad)])
    assert as_texts(["é \U0001f600 ok", "a"], "sentences") == (["é \U0001f600 ok", "a"], False)  # paired: fine


def test_generator_stop_string_is_one_stop_sequence(tiny_qwen):
    from retrievals.models.generator import Generator
    from retrievals.utils import UsageError

    gen = Generator.from_pretrained(tiny_qwen, use_chat_template=False)
    full = gen.generate("the tax", max_new_tokens=8)
    assert full
    # its first character followed by one the model never writes: a stop that never occurs. Iterated as characters
    # (before), its first character cut the answer before it: an empty answer.
    stop = full[0] + "\ue001"
    assert gen.generate("the tax", max_new_tokens=8, stop=stop) == full
    assert gen.generate("the tax", max_new_tokens=8, stop=[stop]) == full
    two = full[1:3]
    assert gen.generate("the tax", max_new_tokens=8, stop=two) == gen.generate("the tax", max_new_tokens=8, stop=[two])
    with pytest.raises(TypeError, match=r"stop\[1\] must be a string, got int"):
        gen.generate("the tax", stop=["x", 3])
    with pytest.raises(TypeError, match="stop must be a string or a list of strings, got int"):
        gen.generate("the tax", stop=3)
    with pytest.raises(UsageError, match="empty string"):
        gen.generate("the tax", stop=["x", ""])


def test_settings_that_must_be_true_or_false_refuse_strings(tiny_bert):
    # the string "false" is truthy: the model normalised, the ranker scored every window
    with pytest.raises(UsageError, match="normalize_embeddings must be true or false"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, normalize_embeddings="false")
    with pytest.raises(UsageError, match="score_windows must be true or false"):
        AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", score_windows="false")
    assert AutoModelForEmbedding.from_pretrained(tiny_bert, normalize_embeddings=False).retrieval_config.normalize_embeddings is False


def test_a_call_max_length_over_the_positions_is_refused_and_cpu_0_is_the_cpu(tiny_bert):
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    positions = model.backbone.config.max_position_embeddings
    with pytest.raises(UsageError, match=f"over the {positions} positions"):  # was a size mismatch inside the backbone
        model.encode(["tax " * (2 * positions)], max_length=positions + 8)
    assert model.encode(["tax card"], max_length=positions).shape == (1, model.embedding_dim)
    np.testing.assert_array_equal(model.encode(["tax card"], device="cpu:0"), model.encode(["tax card"], device="cpu"))
    with pytest.raises(UsageError, match="this model is on cpu"):
        model.encode(["tax card"], device="meta")


def test_a_load_reads_one_save_even_when_another_commits_meanwhile(tiny_bert, tmp_path, monkeypatch):
    # the loader read the config, then the weights, without the folder's lock: a save committing in between gave a
    # model with the old save's settings and the new save's weights
    import threading

    from retrievals.models.embedding import AutoModelForEmbedding as Embedder

    old = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="cls", query_instruction="A: ")
    old.save_pretrained(tmp_path / "m")
    new = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean", query_instruction="B: ")
    with torch.no_grad():
        for p in new.backbone.parameters():
            p.mul_(1.5)
    reached, go, loaded = threading.Event(), threading.Event(), {}
    original = Embedder._load_backbone.__func__

    def slow(cls, *args, **kwargs):
        if threading.current_thread().name == "reader":
            reached.set()
            go.wait(30)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Embedder, "_load_backbone", classmethod(slow))
    reader = threading.Thread(target=lambda: loaded.setdefault("m", AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))),
                              name="reader")
    reader.start()
    assert reached.wait(30)
    saver = threading.Thread(target=new.save_pretrained, args=(tmp_path / "m",))
    saver.start()
    saver.join(1.0)
    assert saver.is_alive()  # waits for the read to finish
    go.set()
    reader.join(60), saver.join(60)
    texts = ["the tax office", "renew passport"]
    assert loaded["m"].retrieval_config.pooling_method == "cls"
    np.testing.assert_allclose(loaded["m"].encode_queries(texts), old.encode_queries(texts), atol=1e-6)
    again = AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))
    np.testing.assert_allclose(again.encode_queries(texts), new.encode_queries(texts), atol=1e-6)


def test_a_lora_adapter_whose_base_moved_loads_with_its_own_settings(tiny_qwen, tmp_path):
    # the recorded base gone: transformers' hub-id error; loaded onto the moved base with lora_path, the adapter's
    # settings (pooling, instruction) were replaced by the base folder's defaults: other vectors, silently
    from retrievals.models.base import ModelPathError

    needs("peft")
    shutil.copytree(tiny_qwen, tmp_path / "base")
    model = AutoModelForEmbedding.from_pretrained(str(tmp_path / "base"), use_lora=True, pooling_method="mean",
                                                  query_instruction="Query: ", padding_side="left")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(tmp_path / "adapter")
    texts = ["the tax office", "renew passport"]
    expected = model.encode_queries(texts)
    shutil.move(tmp_path / "base", tmp_path / "moved")
    with pytest.raises(ModelPathError, match="base model .*base is gone.*lora_path"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "adapter"))
    again = AutoModelForEmbedding.from_pretrained(str(tmp_path / "moved"), lora_path=str(tmp_path / "adapter"))
    assert again.retrieval_config.pooling_method == "mean" and again.retrieval_config.query_instruction == "Query: "
    np.testing.assert_allclose(again.encode_queries(texts), expected, atol=1e-5)


# ---------------------------------------------------------------- break-it review of the model APIs (2026-12-02)


def test_call_flags_must_be_bools(embedder, tiny_bert):
    # the string "no" is truthy: normalize_embeddings="no" normalised, is_query="no" encoded a query
    for flag in ("normalize_embeddings", "is_query", "show_progress_bar", "convert_to_tensor", "convert_to_numpy"):
        with pytest.raises(TypeError, match=f"{flag} must be True or False, got str"):
            embedder.encode(["a"], **{flag: "no"})
    assert embedder.encode(["a"], normalize_embeddings=np.bool_(True)).shape[0] == 1
    ranker = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder")
    with pytest.raises(TypeError, match="normalize must be True or False, got str"):
        ranker.compute_score(("q", "d"), normalize="no")
    with pytest.raises(TypeError, match="normalize must be True or False"):
        ranker.rerank("q", ["d"], normalize="no")


def test_unordered_or_tabular_inputs_are_refused(embedder, tiny_bert):
    class Frame:  # what pandas.DataFrame looks like to the inputs: iterating it gives the column names
        columns, iloc = ["text"], None

        def __iter__(self):
            return iter(self.columns)

    for bad in ({"a", "b"}, frozenset({"a"}), Frame()):
        with pytest.raises(TypeError, match="must be an ordered sequence"):
            embedder.encode(bad)
    ranker = AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder")
    with pytest.raises(TypeError, match="must be an ordered sequence"):
        ranker.rerank("q", Frame())
    with pytest.raises(TypeError, match="pairs must be a"):
        ranker.compute_score({("q", "d")})


def test_settings_that_cannot_work_are_refused_at_load(tiny_bert, tiny_qwen):
    from retrievals.models.sparse import SparseEmbedder

    with pytest.raises(UsageError, match="pooling_method='cls' on a decoder-only model"):
        AutoModelForEmbedding.from_pretrained(tiny_qwen, pooling_method="cls")  # every text starting alike: one vector
    with pytest.raises(UsageError, match="both score with token id"):
        AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", score_mode="yes_minus_no", negative_token="Yes")
    with pytest.raises(UsageError, match="these settings leave no room for any text"):
        AutoModelForRanking.from_pretrained(tiny_qwen, model_type="llm", max_length=8)
    with pytest.raises(UsageError, match="not normalised"):
        SparseEmbedder.from_pretrained(tiny_bert, normalize_embeddings=True)  # recorded, then never applied
    for bad in (True, 1.5, "5"):
        with pytest.raises(TypeError, match="top_k must be an int"):
            SparseEmbedder.from_pretrained(tiny_bert, top_k=bad)
        with pytest.raises(TypeError, match="colbert_dim must be an int"):
            AutoModelForRanking.from_pretrained(tiny_bert, model_type="colbert", colbert_dim=bad)
    with pytest.raises(UsageError, match="fit_pca rotates dense vectors"):
        SparseEmbedder.from_pretrained(tiny_bert).fit_pca(["a", "b"], ["c"])


def test_fit_pca_keeps_the_dimensions_the_model_serves(tiny_bert, tmp_path):
    # dim 8 under truncate_dim 16 saved a model that refused every encode and every reload
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, truncate_dim=16)
    with pytest.raises(UsageError, match="dim=8 is below the 16 dimensions this model serves"):
        model.fit_pca(LINES[:8], LINES[8:16], dim=8)
    assert model.dense is None  # nothing changed
    model.fit_pca(LINES[:8], LINES[8:16], dim=np.int64(16))
    model.save_pretrained(tmp_path / "m")
    assert AutoModelForEmbedding.from_pretrained(str(tmp_path / "m")).encode("a").shape == (16,)


def test_model_type_routes_or_is_refused_never_ignored(tiny_bert, tmp_path):
    from retrievals.models.sparse import SparseEmbedder

    # model_type="sparse" returned a dense model, silently
    assert type(AutoModelForEmbedding.from_pretrained(tiny_bert, model_type="sparse")) is SparseEmbedder
    assert type(AutoModelForEmbedding.from_pretrained(tiny_bert, model_type="dense")) is AutoModelForEmbedding
    with pytest.raises(UsageError, match=r"model_type='colbert': AutoModelForEmbedding loads \['dense', 'embedding', 'sparse'\]"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, model_type="colbert")
    SparseEmbedder.from_pretrained(tiny_bert).save_pretrained(tmp_path / "sparse")
    with pytest.raises(UsageError, match="holds a sparse model, not model_type='dense'"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "sparse"), model_type="dense")
    assert type(AutoModelForEmbedding.from_pretrained(str(tmp_path / "sparse"), model_type="sparse")) is SparseEmbedder


@pytest.mark.parametrize("name", ["retrievals_config.json", "tokenizer.json", "config.json"])
def test_a_saved_file_removed_afterwards_is_named_at_load(name, tiny_bert, tmp_path):
    # without retrievals_config.json the model loaded with default settings and scored differently
    from retrievals.files import CorruptFileError

    AutoModelForEmbedding.from_pretrained(tiny_bert, query_instruction="query: ").save_pretrained(tmp_path / "m")
    (tmp_path / "m" / name).unlink()
    with pytest.raises(CorruptFileError, match=f"{name}: missing \\(listed in retrievals_files.json\\)"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))


def test_helpers_and_paths_give_named_errors(embedder, tiny_bert, tmp_path):
    e = embedder.encode(["a", "b"])
    with pytest.raises(UsageError, match=r"similarity needs vectors of one size: queries \(2, 32\), documents \(2, 8\)"):
        embedder.similarity(e, e[:, :8])  # was torch's "mat1 and mat2 shapes cannot be multiplied"
    with pytest.raises(UsageError, match="nan or inf"):
        embedder.similarity(e, np.full_like(e, np.nan))
    assert isinstance(embedder.truncate(e, 8), np.ndarray) and embedder.truncate(e, 8).shape == (2, 8)  # numpy in, out
    torch.testing.assert_close(torch.from_numpy(embedder.truncate(e, 8)), embedder.truncate(torch.from_numpy(e), 8))
    with pytest.raises(TypeError, match="max_length must be an int"):
        embedder.encode("a", max_length="8")
    with pytest.raises(UsageError, match="device='bogus' is not a device"):
        embedder.encode("a", device="bogus")
    with pytest.raises(UsageError, match="device='bogus' is not a device"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, device="bogus")
    with pytest.raises(TypeError, match="query_instruction must be a string, got int"):
        AutoModelForEmbedding.from_pretrained(tiny_bert, query_instruction=5)
    for bad in ("", None):
        with pytest.raises(UsageError, match="save_pretrained needs a folder path"):
            embedder.save_pretrained(bad)  # "" saved into the working folder
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UsageError, match="is a file; save_pretrained writes a folder"):
        embedder.save_pretrained(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_a_broken_saved_config_is_named(content, message, tiny_bert, tmp_path):
    from retrievals.files import CorruptFileError

    AutoModelForEmbedding.from_pretrained(tiny_bert).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "retrievals_config.json").write_text(content)  # hand-edited: its content is not checksummed
    with pytest.raises(CorruptFileError, match=f"retrievals_config.json: {message}"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))


def test_settings_that_fit_no_text_are_refused_at_load(tiny_bert):
    with pytest.raises(UsageError, match="these settings leave no room for any text"):
        AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=4)  # was a ValueError per call

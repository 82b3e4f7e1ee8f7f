"""The sparse (SPLADE) embedder, its inverted index, the FLOPS loss, and training/retrieval through the CLIs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrievals.files import CorruptFileError
from retrievals.index import Index, SparseIndex
from retrievals.losses import FlopsRegularizedLoss, InfoNCELoss
from retrievals.models.sparse import SparseConfig, SparseEmbedder
from retrievals.utils import UsageError

from ..conftest import corpus_lines, needs

TEXTS = corpus_lines(9)


@pytest.fixture(scope="module")
def sparse_model(tiny_bert, tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sparse") / "m"
    SparseEmbedder.from_pretrained(tiny_bert, query_max_length=16, document_max_length=32).save_pretrained(folder)
    return str(folder)


def test_sparse_vectors_batched_equal_single_and_reload(sparse_model, tmp_path):
    model = SparseEmbedder.from_pretrained(sparse_model)
    batched = model.encode_sparse(TEXTS, batch_size=4)
    single = [model.encode_sparse(t) for t in TEXTS]
    assert all(v and min(v.values()) > 0 for v in batched)
    for a, b in zip(batched, single):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)
    dense = model.encode(TEXTS[:2])
    assert dense.shape == (2, model.embedding_dim) and dense.min() >= 0
    assert set(np.flatnonzero(dense[0]).tolist()) == set(batched[0])
    pruned = model.encode_sparse(TEXTS[0], top_k=3)
    assert len(pruned) == 3 and set(pruned) <= set(batched[0])
    assert min(pruned.values()) >= sorted(batched[0].values())[-3] - 1e-6
    model.save_pretrained(tmp_path / "again")
    again = SparseEmbedder.from_pretrained(str(tmp_path / "again")).encode_sparse(TEXTS)
    assert all(a.keys() == b.keys() for a, b in zip(again, batched))
    from retrievals import AutoModelForEmbedding
    from retrievals.models.rankers import CrossEncoder

    loaded = AutoModelForEmbedding.from_pretrained(sparse_model)  # the folder names its kind
    assert isinstance(loaded, SparseEmbedder) and loaded.encode_sparse(TEXTS[0]) == batched[0]
    with pytest.raises(ValueError, match="holds a 'sparse' model"):
        CrossEncoder.from_pretrained(sparse_model)


def test_sparse_index_scores_are_exact_dot_products(sparse_model, tmp_path):
    model = SparseEmbedder.from_pretrained(sparse_model)
    docs = model.encode(TEXTS, convert_to_tensor=True)
    queries = model.encode(TEXTS[:3], is_query=True, convert_to_tensor=True)
    index = SparseIndex(model.encode_sparse(TEXTS), [f"d{i}" for i in range(len(TEXTS))])
    scores, ids = index.search(model.encode_sparse(TEXTS[:3], is_query=True), 4)
    expected = queries @ docs.T
    for row in range(3):
        for score, doc in zip(scores[row], ids[row]):
            assert score == pytest.approx(float(expected[row, int(doc[1:])]), rel=1e-4)
        assert list(scores[row]) == sorted(scores[row], reverse=True)
    with pytest.raises(TypeError, match=r"vectors\[1\] must map integer term ids"):
        SparseIndex([{1: 0.5}, {"x": 1.0}], ["a", "b"])
    for weight in ("2", True):  # float() read them as 2.0 and 1.0
        with pytest.raises(TypeError, match=r"vectors\[1\] must map integer term ids .* to numbers"):
            SparseIndex([{1: 0.5}, {1: weight}], ["a", "b"])
    index.save(tmp_path / "idx")
    assert Index.load(tmp_path / "idx").search(queries[0], 4)[1] == index.search(queries[0], 4)[1]


def test_build_index_of_a_sparse_embedder_is_an_inverted_index(sparse_model, tmp_path):
    """``build_index`` of a sparse embedder once built a dense faiss index of [n, vocabulary] vectors (memory
    growing with the vocabulary); it is now the inverted index retrieval uses, with the dense kinds still on request,
    ranking alike, and ``search_run`` is the evaluation's and the retrieve pipeline's query side."""
    from retrievals.evaluation.retrieval import retrieve
    from retrievals.utils import UsageError

    model = SparseEmbedder.from_pretrained(sparse_model)
    ids = [f"d{i}" for i in range(len(TEXTS))]
    index = model.build_index(TEXTS, index_path=str(tmp_path / "ix"), ids=ids)
    assert isinstance(index, SparseIndex) and index.postings == sum(len(v) for v in model.encode_sparse(TEXTS))
    queries = {f"q{i}": TEXTS[i][:30] for i in range(4)}
    run = model.search_run(index, queries, top_k=5)
    assert run == model.search_run(Index.load(str(tmp_path / "ix")), queries, top_k=5)  # saved = reloaded
    assert run == retrieve(model, dict(zip(ids, TEXTS)), queries, top_k=5)
    dense = model.build_index(TEXTS, index_type="exact", ids=ids)
    q = model.encode(list(queries.values()), is_query=True)
    _, dense_ids = dense.search(q, 5)
    assert [list(run[qid]) for qid in queries] == [list(row) for row in dense_ids]
    pruned = model.build_index(TEXTS, encode_kwargs={"top_k": 3})
    assert pruned.postings == 3 * len(TEXTS) and pruned.ids == [str(i) for i in range(len(TEXTS))]
    with pytest.raises(UsageError, match="encode_kwargs \\['truncate_dim'\\]"):
        model.build_index(TEXTS, encode_kwargs={"truncate_dim": 8})
    with pytest.raises(UsageError, match="takes no index settings"):
        model.build_index(TEXTS, nlist=4)


def test_flops_regularizer_matches_hand_computed():
    q = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
    d = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 1.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    base = InfoNCELoss(temperature=1.0)
    loss = FlopsRegularizedLoss(base, query_weight=0.1, document_weight=0.01)
    flops_q = 0.5 ** 2 + 0.0 + 2.0 ** 2  # mean weight per term, squared, summed
    flops_d = 0.75 ** 2 + 1.0 ** 2 + 0.5 ** 2
    assert loss(q, d).item() == pytest.approx(base(q, d).item() + 0.1 * flops_q + 0.01 * flops_d, rel=1e-6)
    assert loss.get_config_dict()["name"] == "flops"
    with pytest.raises(ValueError, match="FLOPS query_weight must be a finite number >= 0, got -1"):
        FlopsRegularizedLoss(base, query_weight=-1)


def test_sparse_training_and_retrieval_through_the_clis(sparse_model, train_file, tmp_path):
    from retrievals.data.io import read_trec_run, save_beir
    from retrievals.pipelines import embed, retrieve

    from ..training.test_training import cli

    out = tmp_path / "trained"
    assert embed.main(cli(sparse_model, train_file, out, "--max_steps", "3", "--model_type", "sparse",
                          "--query_flops_weight", "1e-3")) == 0
    assert json.loads((out / "retrievals_config.json").read_text())["model_type"] == "sparse"
    record = json.loads((out / "retrievals_fingerprint.json").read_text())
    assert record["loss"]["name"] == "flops" and record["loss"]["loss"]["temperature"] == 1.0
    lines = corpus_lines(30)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:25] for i in range(5)},
              {f"q{i}": {f"d{i}": 1} for i in range(5)})
    run_file = tmp_path / "run.trec"
    assert retrieve.main(["--dataset", str(tmp_path / "beir"), "--model_name_or_path", str(out), "--index_type", "sparse",
                          "--top_k", "10", "--output", str(run_file)]) == 0
    run = read_trec_run(run_file)
    assert len(run) == 5 and all(len(docs) == 10 for docs in run.values())
    assert embed.main(cli(sparse_model, train_file, tmp_path / "x", "--model_type", "sparse", "--pooling_method", "mean")) == 2


def test_saved_model_is_a_sentence_transformers_sparse_encoder(sparse_model, tmp_path):
    """Our folder loads in sentence-transformers' SparseEncoder with the same vectors, prompts included; a folder
    SparseEncoder saved loads here as a sparse embedder, with the same vectors."""
    st = needs("sentence_transformers")
    # sentence-transformers has one max length: ours are set equal (it would cut queries at the documents' length)
    model = SparseEmbedder.from_pretrained(sparse_model, query_instruction="query: ", document_instruction="passage: ",
                                           query_max_length=32)
    model.save_pretrained(tmp_path / "ours")
    theirs = st.SparseEncoder(str(tmp_path / "ours"), device="cpu")
    texts = TEXTS[:5]
    ours_q = model.encode(texts, is_query=True, convert_to_tensor=True)
    ours_d = model.encode(texts, convert_to_tensor=True)
    assert torch.allclose(theirs.encode_query(texts, convert_to_tensor=True).to_dense(), ours_q, atol=1e-5)
    assert torch.allclose(theirs.encode_document(texts, convert_to_tensor=True).to_dense(), ours_d, atol=1e-5)
    theirs.save(str(tmp_path / "theirs"))
    from retrievals import AutoModelForEmbedding

    back = AutoModelForEmbedding.from_pretrained(str(tmp_path / "theirs"))
    assert isinstance(back, SparseEmbedder) and back.retrieval_config.query_instruction == "query: "
    assert torch.allclose(back.encode(texts, is_query=True, convert_to_tensor=True), ours_q, atol=1e-5)


def test_other_sparse_layouts_are_refused_by_name(sparse_model, tmp_path):
    import shutil

    from retrievals import AutoModelForEmbedding
    from retrievals.utils import UsageError

    shutil.copytree(sparse_model, tmp_path / "m")
    (tmp_path / "m" / "retrievals_config.json").unlink()
    (tmp_path / "m" / "retrievals_files.json").unlink()
    pooling = tmp_path / "m" / "1_SpladePooling" / "config.json"
    pooling.write_text(json.dumps({"pooling_strategy": "sum", "activation_function": "relu"}))
    with pytest.raises(UsageError, match="1_SpladePooling.config.json.*sum"):
        AutoModelForEmbedding.from_pretrained(str(tmp_path / "m"))


def test_inference_free_queries(sparse_model, tmp_path):
    """A query is the presence of its tokens (special tokens left out, a repeat counted once) times one weight per
    term; the training forward gives the same vectors as encode; trained weights survive save and reload."""
    model = SparseEmbedder.from_pretrained(sparse_model, query_inference_free=True)
    words = TEXTS[0].split()[:5]
    text = " ".join(words + words[:1])  # a repeated word, within the query max length
    ids = [i for i in model.tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        model.query_weights.copy_(torch.rand(model.embedding_dim) + 0.5)
    vector = model.encode(text, is_query=True, convert_to_tensor=True)
    expected = torch.zeros(model.embedding_dim)
    expected[sorted(set(ids))] = model.query_weights.detach()[sorted(set(ids))]
    assert torch.equal(vector, expected)
    batch = model.processor.pad(model.tokenize(TEXTS, is_query=True))
    trained = model(query=batch).query_embeddings
    assert torch.allclose(trained.detach(), model.encode(TEXTS, is_query=True, convert_to_tensor=True, batch_size=3))
    documents = model.encode(TEXTS, convert_to_tensor=True)  # documents still run the model
    assert torch.allclose(documents, SparseEmbedder.from_pretrained(sparse_model).encode(TEXTS, convert_to_tensor=True))
    model.save_pretrained(tmp_path / "free")
    assert not (tmp_path / "free" / "modules.json").exists()  # its sentence-transformers layout is not written
    again = SparseEmbedder.from_pretrained(str(tmp_path / "free"))
    assert again.retrieval_config.query_inference_free and torch.equal(again.query_weights, model.query_weights)
    (tmp_path / "free" / "query_weights.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="query_weights.safetensors: missing"):  # the save recorded it
        SparseEmbedder.from_pretrained(str(tmp_path / "free"))
    (tmp_path / "free" / "retrievals_files.json").unlink()
    with pytest.raises(FileNotFoundError, match="query_weights.safetensors: missing"):  # and the config says it has them
        SparseEmbedder.from_pretrained(str(tmp_path / "free"))


def test_inference_free_queries_leave_the_instruction_out_with_include_prompt_false(sparse_model):
    # the query bag held the instruction's tokens although include_prompt=False leaves them out of pooling
    model = SparseEmbedder.from_pretrained(sparse_model, query_inference_free=True, include_prompt=False,
                                           query_instruction="query: ")
    plain = SparseEmbedder.from_pretrained(sparse_model, query_inference_free=True)
    with torch.no_grad():
        weights = torch.rand(model.embedding_dim) + 0.5
        model.query_weights.copy_(weights)
        plain.query_weights.copy_(weights)
    texts = [" ".join(t.split()[:4]) for t in TEXTS[:5]]
    with_prompt_out = model.encode(texts, is_query=True, convert_to_tensor=True, batch_size=2)
    assert torch.equal(with_prompt_out, plain.encode(texts, is_query=True, convert_to_tensor=True))
    batch = model.processor.pad(model.tokenize(texts, is_query=True))
    assert "pooling_mask" in batch
    assert torch.equal(model(query=batch).query_embeddings.detach(), with_prompt_out)  # training sees the same


def test_inference_free_training_learns_query_weights(sparse_model, train_file, tmp_path):
    from retrievals.pipelines import embed

    from ..training.test_training import cli

    out = tmp_path / "free"
    assert embed.main(cli(sparse_model, train_file, out, "--max_steps", "3", "--model_type", "sparse",
                          "--query_inference_free", "true", "--learning_rate", "1e-2")) == 0
    model = SparseEmbedder.from_pretrained(str(out))
    assert model.retrieval_config.query_inference_free
    assert not torch.allclose(model.query_weights, torch.ones_like(model.query_weights))  # trained with the rest
    assert embed.main(cli(sparse_model, train_file, tmp_path / "x", "--model_type", "dense", "--query_inference_free",
                          "true")) == 2  # a dense model has no query weights


def test_sparse_embedders_in_evaluate_with_hybrids(sparse_model, tiny_bert, tmp_path):
    """pipelines.evaluate scores a sparse embedder through its inverted index (= exact dot products) and fuses runs."""
    from retrievals.data.io import save_beir
    from retrievals.evaluation.datasets import load_eval_dataset
    from retrievals.evaluation.metrics import evaluate_run
    from retrievals.pipelines import evaluate

    lines = corpus_lines(30)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:25] for i in range(6)},
              {f"q{i}": {f"d{i}": 1} for i in range(6)})
    for fusion in ("rrf", "weighted"):
        report = evaluate.main(["--dataset", str(tmp_path / "beir"), "--output_dir", str(tmp_path / fusion),
                                "--models", f"sparse={sparse_model}", f"dense={tiny_bert}",
                                "--hybrids", "both=sparse+dense", "lex=bm25+sparse", "--fusion", fusion])
        assert report == 0
        rows = {r["name"]: r for r in json.loads((tmp_path / fusion / "report.json").read_text())["results"]}
        model = SparseEmbedder.from_pretrained(sparse_model)
        data = load_eval_dataset(str(tmp_path / "beir"))
        ids = list(data.corpus)
        scores = model.encode([data.queries[q] for q in data.queries], is_query=True) @ model.encode([data.corpus[d] for d in ids]).T
        brute = {q: {ids[j]: float(scores[i, j]) for j in range(len(ids))} for i, q in enumerate(data.queries)}
        assert rows["sparse"]["metrics"]["ndcg@10"] == pytest.approx(evaluate_run(brute, data.qrels, (10,))["ndcg@10"], abs=1e-4)
        assert rows["both"]["kind"] == f"hybrid sparse + dense ({fusion})" and "lex" in rows
    assert evaluate.main(["--dataset", str(tmp_path / "beir"), "--output_dir", str(tmp_path / "bad"), "--models",
                          f"a={sparse_model}", "--hybrids", "h=a+nope"]) == 2


def test_sparse_training_flags_of_dense_embedders(sparse_model, tiny_bert, train_file, tmp_path, capsys):
    from retrievals.pipelines import embed

    from ..training.test_training import cli

    # the teacher (a cosine embedder) scores at --temperature (0.02 by default), not at the sparse student's 1.0, at
    # which its softmax over a batch was nearly flat
    out = tmp_path / "distilled"
    assert embed.main(cli(sparse_model, train_file, out, "--max_steps", "1", "--model_type", "sparse",
                          "--teacher_model", tiny_bert)) == 0
    loss = json.loads((out / "retrievals_fingerprint.json").read_text())["loss"]
    assert loss["teacher_temperature"] == 0.02 and loss["loss"]["loss"]["temperature"] == 1.0
    # an explicit --temperature 0.02 is the user's, not "the default" (it trained at 1.0; 0.03 was honoured)
    out = tmp_path / "explicit"
    assert embed.main(cli(sparse_model, train_file, out, "--max_steps", "1", "--model_type", "sparse",
                          "--temperature", "0.02")) == 0
    assert json.loads((out / "retrievals_fingerprint.json").read_text())["loss"]["loss"]["temperature"] == 0.02
    # Matryoshka sizes would be the first d vocabulary ids: refused like --pca_rotation
    assert embed.main(cli(sparse_model, train_file, tmp_path / "m", "--model_type", "sparse", "--matryoshka_dims", "64")) == 2
    assert "--matryoshka_dims is for dense embedders" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_top_k_is_the_models_vectors_everywhere_and_in_sentence_transformers(sparse_model, tmp_path, caplog):
    """``top_k`` pruned only ``encode_sparse``: ``encode``, ``build_index`` and scores used every term (another
    ranking from one model); sentence-transformers' ``max_active_dims`` is the same setting, both ways."""
    st = needs("sentence_transformers")
    model = SparseEmbedder.from_pretrained(sparse_model, top_k=5)
    dense = model.encode(TEXTS, convert_to_tensor=True)
    assert ((dense != 0).sum(dim=1) == 5).all()
    assert [{i: v for i, v in enumerate(row.tolist()) if v} for row in dense] == [
        pytest.approx(v) for v in model.encode_sparse(TEXTS)]
    wider = model.encode_sparse(TEXTS[0], top_k=8)  # a call's own top_k, also above the config's
    assert len(wider) == 8 and set(model.encode_sparse(TEXTS[0])) <= set(wider)
    model.save_pretrained(tmp_path / "ours")
    theirs = st.SparseEncoder(str(tmp_path / "ours"), device="cpu")
    assert theirs.max_active_dims == 5
    assert torch.allclose(theirs.encode_document(TEXTS, convert_to_tensor=True).to_dense(), dense, atol=1e-5)
    theirs.max_active_dims = 7
    theirs.save(str(tmp_path / "theirs"))
    back = SparseEmbedder.from_pretrained(str(tmp_path / "theirs"))
    assert back.retrieval_config.top_k == 7 and ((back.encode(TEXTS, convert_to_tensor=True) != 0).sum(dim=1) == 7).all()
    # a template's text after {} has no sentence-transformers prompt: said, as for dense embedders
    with caplog.at_level("WARNING", logger="retrievals"):
        SparseEmbedder.from_pretrained(sparse_model, query_instruction="query: {} answer").save_pretrained(tmp_path / "t")
    assert "cannot express it as a prompt" in caplog.text


def test_sparse_contracts_truncate_dim_negative_weights_and_decode(sparse_model):
    from retrievals.utils import UsageError

    model = SparseEmbedder.from_pretrained(sparse_model, query_inference_free=True)
    with pytest.raises(UsageError, match="truncate_dim=50: a sparse embedder's dimensions are vocabulary terms"):
        model.encode(TEXTS[0], truncate_dim=50)
    with pytest.raises(UsageError, match="truncate_dim=50"):
        SparseEmbedder.from_pretrained(sparse_model, truncate_dim=50)
    # a learned query weight below 0 counts in the dense vector's dot products: the sparse one keeps it too
    ids = model.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        model.query_weights[ids[0]] = -0.5
    vector = model.encode_sparse(TEXTS[0], is_query=True)
    assert vector[ids[0]] == -0.5
    assert model.decode(vector, top=1)[0][1] in (-0.5, 1.0)
    with pytest.raises(ValueError, match="top must be"):
        model.decode(vector, top=-1)


def test_retrieve_saves_the_sparse_index_under_index_dir_and_never_serves_another_models(sparse_model, tiny_bert,
                                                                                        tmp_path, monkeypatch, capsys,
                                                                                        caplog):
    """--index_type sparse (and hybrid's --sparse_name_or_path) once ignored --index_dir: every run re-encoded the
    corpus. Now the second run loads the saved postings (no corpus encoding, the same run), and another sparse model
    or setting with that folder is refused, naming what differs; --cache_dir, which a sparse index cannot use, is
    refused with --index_type sparse and a warning in a hybrid (its dense half uses it)."""
    from retrievals.data.io import save_beir
    from retrievals.pipelines import retrieve

    lines = corpus_lines(30)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:25] for i in range(5)},
              {f"q{i}": {f"d{i}": 1} for i in range(5)})
    encoded = []  # is_query of each encode_sparse call
    original = SparseEmbedder.encode_sparse
    monkeypatch.setattr(SparseEmbedder, "encode_sparse",
                        lambda self, texts, is_query=False, **kw: encoded.append(is_query) or original(self, texts, is_query, **kw))
    ix = tmp_path / "ix"
    base = ["--dataset", str(tmp_path / "beir"), "--top_k", "10", "--index_dir", str(ix)]
    sparse = base + ["--model_name_or_path", sparse_model, "--index_type", "sparse"]
    runs = []
    for i in range(2):
        assert retrieve.main(sparse + ["--output", str(tmp_path / f"run{i}.trec")]) == 0
        runs.append((tmp_path / f"run{i}.trec").read_text())
    assert (ix / "sparse" / "index_meta.json").is_file() and encoded == [False, True, True]  # corpus encoded once
    assert runs[0] == runs[1] and len(runs[0].splitlines()) == 50
    torch.manual_seed(1)
    other = tmp_path / "other"
    SparseEmbedder.from_pretrained(tiny_bert, query_max_length=16, document_max_length=32).save_pretrained(other)
    # the same settings, another (randomly initialised) MLM head: only the weights differ
    capsys.readouterr()
    for argv, differs in ((base + ["--model_name_or_path", str(other), "--index_type", "sparse"], "model (weights or tokenizer)"),
                          (sparse + ["--max_length", "8"], "model settings")):
        assert retrieve.main(argv + ["--output", str(tmp_path / "x.trec")]) == 2
        assert f"{ix / 'sparse'}: this index was built with another {differs}" in capsys.readouterr().err
    assert not (tmp_path / "x.trec").exists()
    encoded.clear()
    hybrid = base + ["--model_name_or_path", tiny_bert, "--pooling_method", "mean", "--index_type", "hybrid",
                     "--sparse_name_or_path", sparse_model]  # its sparse half: the same model and folder
    assert retrieve.main(hybrid + ["--output", str(tmp_path / "hybrid.trec")]) == 0
    assert encoded == [True] and (ix / "dense" / "index_meta.json").is_file()
    assert retrieve.main(sparse + ["--cache_dir", str(tmp_path / "cache"), "--output", str(tmp_path / "x.trec")]) == 2
    assert "--cache_dir keeps dense corpus embeddings" in capsys.readouterr().err
    fresh = [str(tmp_path / "ix2") if arg == str(ix) else arg for arg in hybrid]
    with caplog.at_level("WARNING", logger="retrievals"):
        assert retrieve.main(fresh + ["--cache_dir", str(tmp_path / "cache"), "--output", str(tmp_path / "x.trec")]) == 0
    assert any(f"the sparse embedder {sparse_model} encodes the corpus again" in r.getMessage() for r in caplog.records)
    assert list((tmp_path / "cache").iterdir())  # the dense half's shards


def test_search_run_names_queries_and_an_index_it_cannot_search(sparse_model):
    """A list or string of queries failed as "list/string indices must be integers", a non-string text or a lone
    surrogate was named "sentences[0]", and the dense index build_index makes on request failed in float()."""
    from retrievals.utils import UsageError

    model = SparseEmbedder.from_pretrained(sparse_model)
    index = model.build_index(TEXTS)
    for queries in (None, "tax card", ["tax card"]):
        with pytest.raises(TypeError, match="queries must be a dict of query id -> text"):
            model.search_run(index, queries, 3)
    with pytest.raises(TypeError, match=r"queries\['q2'\] must be a string, got NoneType"):
        model.search_run(index, {"q1": "tax", "q2": None}, 3)
    with pytest.raises(UsageError, match=r"queries\['q1'\] has a lone surrogate"):
        model.search_run(index, {"q1": "tax \ud800"}, 3)
    with pytest.raises(UsageError, match="search_run searches a SparseIndex .* got ExactIndex"):
        model.search_run(model.build_index(TEXTS, index_type="exact"), {"q1": "tax"}, 3)
    assert model.search_run(index, {}, 3) == {}


def test_a_save_sentence_transformers_reads_otherwise_is_warned_of(sparse_model, tmp_path, caplog):
    # a sparse model without include_prompt, or with two max lengths, gave other query vectors in SparseEncoder,
    # without a word (the dense kind warned of its lengths)
    for settings, said in (({"query_instruction": "query: tax ", "include_prompt": False}, "SpladePooling has no include_prompt"),
                           ({"query_max_length": 4, "document_max_length": 16}, "one max length: written as the larger (16)")):
        caplog.clear()
        with caplog.at_level("WARNING"):
            SparseEmbedder.from_pretrained(sparse_model, **settings).save_pretrained(tmp_path / said[:5])
        assert said in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        SparseEmbedder.from_pretrained(sparse_model, query_max_length=32, document_max_length=32).save_pretrained(tmp_path / "same")
    assert "sentence-transformers" not in caplog.text


def _st_only(sparse_model, folder, legacy: bool):
    """The saved sparse model as sentence-transformers alone would have it (no retrievals files); ``legacy``: with the
    module paths sentence-transformers 5.x wrote (the SPLADE folders on the Hub)."""
    import shutil

    shutil.copytree(sparse_model, folder)
    (folder / "retrievals_config.json").unlink()
    (folder / "retrievals_files.json").unlink()
    if legacy:
        modules = json.loads((folder / "modules.json").read_text())
        for module in modules:
            module["type"] = "sentence_transformers.sparse_encoder.models." + module["type"].rsplit(".", 1)[-1]
        (folder / "modules.json").write_text(json.dumps(modules))
    return str(folder)


def test_sentence_transformers_5_sparse_folders_load_as_sparse(sparse_model, tmp_path):
    # their module paths (sparse_encoder.models.SpladePooling) were not recognised: the folder loaded as a dense
    # 32-dim CLS embedder of the masked-LM's encoder, and evaluate reported that model's figures
    from retrievals import AutoModelForEmbedding

    legacy = _st_only(sparse_model, tmp_path / "legacy", legacy=True)
    (Path(legacy) / "config_sentence_transformers.json").write_text(json.dumps({"max_active_dims": 5, "prompts": {}}))
    back = AutoModelForEmbedding.from_pretrained(legacy)
    assert isinstance(back, SparseEmbedder) and back.retrieval_config.top_k == 5
    assert AutoModelForEmbedding.kind_of(legacy) == "sparse"
    ours = SparseEmbedder.from_pretrained(sparse_model).encode_sparse(TEXTS[:3], top_k=5)
    theirs = back.encode_sparse(TEXTS[:3])
    assert [v.keys() for v in theirs] == [v.keys() for v in ours]
    assert all(abs(a[k] - b[k]) < 1e-5 for a, b in zip(ours, theirs) for k in a)


def test_embed_trains_a_sentence_transformers_sparse_folder_as_sparse(sparse_model, train_file, tmp_path, capsys):
    # without --model_type the folder's kind was read from retrievals_config.json only: an ST SparseEncoder folder
    # trained with the dense recipe (temperature 0.02, no FLOPS term) and took Matryoshka sizes of vocabulary ids
    from retrievals.pipelines import embed

    from ..training.test_training import cli

    theirs = _st_only(sparse_model, tmp_path / "theirs", legacy=False)
    out = tmp_path / "out"
    assert embed.main(cli(theirs, train_file, out, "--max_steps", "1")) == 0
    loss = json.loads((out / "retrievals_fingerprint.json").read_text())["loss"]
    assert loss["name"] == "flops" and loss["loss"]["temperature"] == 1.0
    assert embed.main(cli(theirs, train_file, tmp_path / "m", "--matryoshka_dims", "16")) == 2
    assert "--matryoshka_dims is for dense embedders" in capsys.readouterr().err
    for folder in (theirs, sparse_model):  # an explicit kind that contradicts the folder's
        assert embed.main(cli(folder, train_file, tmp_path / "d", "--model_type", "dense")) == 2
        assert "holds a sparse embedder; drop --model_type" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "d").exists()
    # a folder that records Matryoshka sizes for a sparse model is refused (the server offered them, then failed)
    config = SparseConfig.load(sparse_model)
    config.matryoshka_dims = [16]
    with pytest.raises(UsageError, match="matryoshka_dims=\\[16\\]: a sparse embedder"):
        SparseEmbedder.from_pretrained(sparse_model)._check_config(config)


def test_sparse_index_takes_torch_sparse_tensors(sparse_model):
    # sentence-transformers' SparseEncoder.encode returns torch sparse tensors: they failed inside numpy ("can't
    # convert Sparse layout tensor"); the index now reads them as the dense rows they stand for
    dense = SparseEmbedder.from_pretrained(sparse_model).encode(TEXTS[:4], convert_to_tensor=True)
    ids = ["a", "b", "c", "d"]
    expected = SparseIndex(list(dense), ids).search(dense[:2], 3)
    for layout in (dense.to_sparse(), dense.to_sparse_csr()):
        got = SparseIndex(layout, ids).search(dense[:2].to_sparse(), 3)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
        assert got[1] == expected[1]

"""Index backends, fusion, evaluation IO and the retrieval / mining / evaluation pipelines on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrievals import AutoModelForEmbedding
from retrievals.data.readers import DataError
from retrievals.data.io import load_beir, read_qrels, read_trec_run, save_beir, write_qrels, write_trec_run
from retrievals.index import (AutoRetrieval, BM25Index, ExactIndex, FaissIndex, Index, reciprocal_rank_fusion,
                              weighted_score_fusion)
from retrievals.index.sharded import encode_sharded
from retrievals.utils import UsageError, state_digest

from ..conftest import corpus_lines, needs


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 24)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, [f"d{i}" for i in range(400)]


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_faiss_matches_exact_and_round_trips(vectors, index_type, tmp_path):
    x, ids = vectors
    queries = x[:20] + 0.05 * np.random.default_rng(1).normal(size=(20, 24)).astype("float32")
    exact_scores, exact_ids = ExactIndex(x, ids).search(queries, 10)
    index = FaissIndex(x, ids, index_type, nprobe=64 if index_type == "ivf" else 16)
    scores, found = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact_ids)])
    assert recall >= (1.0 if index_type == "flat" else 0.9)
    if index_type == "flat":
        np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx")
    assert isinstance(loaded, FaissIndex) and loaded.ids == ids and loaded.index_type == index_type
    assert loaded.search(queries, 10)[1] == found


def test_exact_index_and_auto_retrieval(vectors, tmp_path):
    x, ids = vectors
    ExactIndex(x, ids).save(tmp_path / "e")
    scores, positions = AutoRetrieval().similarity_search(x[5], index_path=str(tmp_path / "e"), top_k=3)
    assert positions[0][0] == 5 and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="unique"):
        ExactIndex(x[:2], ["a", "a"])
    with pytest.raises(FileNotFoundError, match="index_meta.json"):
        Index.load(tmp_path)


def test_bm25_ranks_lexical_matches_and_round_trips(tmp_path):
    texts = ["renew the tax card online", "passport office fee", "birth certificate register", "tax office address"]
    index = BM25Index(texts, ["a", "b", "c", "d"])
    _, ids = index.search(["tax card", "passport"], 2)
    assert ids[0][0] == "a" and ids[1][0] == "b"
    index.save(tmp_path / "bm25")
    assert Index.load(tmp_path / "bm25").search(["tax card"], 2)[1] == [ids[0]]


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([{"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q": {"c": 9.0, "a": 1.0}}], k=60)
    assert fused["q"]["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["q"]["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["q"]["b"] == pytest.approx(1 / 62)
    assert list(reciprocal_rank_fusion([{"q": {"a": 1.0, "b": 2.0}}], top_k=1)["q"]) == ["b"]
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([{}], weights=[1, 2])


def test_weighted_score_fusion_is_hand_computed():
    bm25 = {"q": {"a": 12.0, "b": 4.0, "c": 2.0}, "r": {"a": 5.0, "b": 5.0}}
    dense = {"q": {"c": 0.9, "a": 0.5, "d": 0.4}}
    fused = weighted_score_fusion([bm25, dense], weights=[0.3, 0.7])
    # per query min-max: bm25 q: a 1, b 0.2, c 0; dense q: c 1, a 0.2, d 0; equal scores in r give 1
    assert fused["q"] == pytest.approx({"a": 0.3 + 0.7 * 0.2, "b": 0.3 * 0.2, "c": 0.7, "d": 0.0})
    assert list(fused["q"]) == ["c", "a", "b", "d"] and fused["r"] == {"a": 0.3, "b": 0.3}
    assert list(weighted_score_fusion([bm25, dense], top_k=1)["q"]) == ["a"]  # 1 + 0.2 beats c's 0 + 1, by weight 1:1
    assert weighted_score_fusion([{"q": {}}]) == {"q": {}}
    with pytest.raises(ValueError, match="weights"):
        weighted_score_fusion([bm25], weights=[1, 2])


def test_model_build_index(tiny_bert, tmp_path):
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    docs = corpus_lines(30)
    model.build_index(docs, index_path=str(tmp_path / "faiss"))
    assert Index.load(tmp_path / "faiss").source["model_weights"] == state_digest(model)  # which model made it
    _, positions = AutoRetrieval().similarity_search(model.encode_corpus(docs[7]), index_path=str(tmp_path / "faiss"), top_k=1)
    assert positions[0][0] == 7


def test_trec_and_beir_round_trip(tmp_path):
    run = {"q1": {"d1": 0.5, "d2": 0.7}, "q2": {"d3": 1.0}}
    write_trec_run(run, tmp_path / "run.trec")
    assert read_trec_run(tmp_path / "run.trec") == run
    assert (tmp_path / "run.trec").read_text().splitlines()[0] == "q1 Q0 d2 1 0.7 retrievals"  # exact, not rounded
    qrels = {"q1": {"d2": 1}, "q2": {"d3": 2}}
    write_qrels(qrels, tmp_path / "qrels")
    assert read_qrels(tmp_path / "qrels") == qrels
    save_beir(tmp_path / "beir", {"d1": "a", "d2": "b", "d3": "c"}, {"q1": "x", "q2": "y", "q3": "unjudged"}, qrels)
    corpus, queries, loaded = load_beir(tmp_path / "beir")
    assert corpus == {"d1": "a", "d2": "b", "d3": "c"} and queries == {"q1": "x", "q2": "y"} and loaded == qrels
    (tmp_path / "bad").write_text("q1 0 d1 1\nq1 d1\n")
    with pytest.raises(DataError, match="bad:2"):
        read_qrels(tmp_path / "bad")
    with pytest.raises(DataError, match="corpus.jsonl: missing"):
        load_beir(tmp_path)


def test_sharded_encoding_resumes(tiny_bert, tmp_path):
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    texts = corpus_lines(25)
    full = encode_sharded(model, texts, tmp_path / "cache", shard_size=10)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("shard-*.npy")) == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    np.testing.assert_allclose(full, model.encode_corpus(texts), atol=1e-5)
    next((tmp_path / "cache").rglob("shard-00001.npy")).unlink()  # a run killed after two shards
    calls = []
    original = model.encode
    model.encode = lambda t, **kw: calls.append(len(t)) or original(t, **kw)
    np.testing.assert_allclose(encode_sharded(model, texts, tmp_path / "cache", shard_size=10), full, atol=1e-6)
    assert calls == [10]  # only the missing shard was encoded again
    # another corpus in the same cache folder gets its own shards, never these
    one_shard = encode_sharded(model, texts[:5], tmp_path / "cache", shard_size=10)
    np.testing.assert_allclose(one_shard, full[:5], atol=1e-5)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2
    assert one_shard.flags.writeable and full.flags.writeable  # one shard was a read-only memory map, several not


@pytest.fixture
def beir_folder(tmp_path):
    lines = corpus_lines(60)
    corpus = {f"d{i}": t for i, t in enumerate(lines)}
    queries = {f"q{i}": " ".join(lines[i].split()[:4]) for i in range(0, 60, 6)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(0, 60, 6)}
    save_beir(tmp_path / "beir", corpus, queries, qrels)
    return tmp_path / "beir"


@pytest.mark.parametrize("index_type", ["exact", "flat", "hnsw", "int8", "binary", "bm25", "hybrid"])
def test_retrieve_pipeline(index_type, tiny_bert, beir_folder, tmp_path):
    from retrievals.pipelines import retrieve

    out = tmp_path / "run.trec"
    args = ["--dataset", str(beir_folder), "--index_type", index_type, "--top_k", "20", "--output", str(out),
            "--index_dir", str(tmp_path / "idx")]
    if index_type != "bm25":  # a model's dense embeddings, cached in shards (bm25 has none: the flag is refused)
        args += ["--model_name_or_path", tiny_bert, "--pooling_method", "mean", "--cache_dir", str(tmp_path / "cache"),
                 "--shard_size", "25"]
    assert retrieve.main(args) == 0
    run = read_trec_run(out)
    assert len(run) == 10 and all(len(docs) <= 20 for docs in run.values())
    metrics = json.loads((tmp_path / "run.trec.metrics.json").read_text())
    if index_type == "bm25":  # each query is the first words of its document
        assert metrics["recall@10"] == 1.0 and metrics["mrr@10"] > 0.6
    assert retrieve.main(args) == 2  # an existing run file is replaced only when asked
    assert retrieve.main(args + ["--overwrite"]) == 0  # second run loads the saved index
    assert read_trec_run(out) == run


def test_retrieve_hybrid_with_a_sparse_embedder(tiny_bert, beir_folder, tmp_path):
    """--index_type hybrid fuses the dense index with a sparse embedder's run (rrf or weighted), exactly as the
    library's fusion functions fuse the two single-index runs."""
    from retrievals.models.sparse import SparseEmbedder
    from retrievals.pipelines import retrieve

    SparseEmbedder.from_pretrained(tiny_bert).save_pretrained(tmp_path / "sparse")
    base = ["--dataset", str(beir_folder), "--top_k", "20"]
    dense = base + ["--model_name_or_path", tiny_bert, "--pooling_method", "mean"]
    runs = {}
    assert retrieve.main(base + ["--index_type", "sparse", "--model_name_or_path", str(tmp_path / "sparse"),
                                 "--output", str(tmp_path / "sparse.trec")]) == 0
    runs["sparse"] = read_trec_run(tmp_path / "sparse.trec")
    for name, extra in (("dense", ["--index_type", "flat"]),
                        ("rrf", ["--index_type", "hybrid", "--sparse_name_or_path", str(tmp_path / "sparse")]),
                        ("weighted", ["--index_type", "hybrid", "--sparse_name_or_path", str(tmp_path / "sparse"),
                                      "--fusion", "weighted", "--fusion_weights", "0.3", "0.7"])):
        assert retrieve.main(dense + extra + ["--output", str(tmp_path / f"{name}.trec")]) == 0
        runs[name] = read_trec_run(tmp_path / f"{name}.trec")
    ranked = lambda run: {q: list(docs) for q, docs in run.items()}  # noqa: E731  (TREC files keep the order)
    assert ranked(runs["rrf"]) == ranked(reciprocal_rank_fusion([runs["sparse"], runs["dense"]], top_k=20))
    assert ranked(runs["weighted"]) == ranked(weighted_score_fusion([runs["sparse"], runs["dense"]], [0.3, 0.7], top_k=20))
    for bad in (["--fusion", "max"], ["--fusion_weights", "1"], ["--fusion_weights", "-1", "1"]):
        assert retrieve.main(dense + ["--index_type", "hybrid", "--output", str(tmp_path / "x")] + bad) == 2
    assert retrieve.main(dense + ["--index_type", "flat", "--fusion", "weighted", "--output", str(tmp_path / "x")]) == 2
    assert retrieve.main(dense + ["--index_type", "hybrid", "--sparse_name_or_path", tiny_bert,
                                  "--output", str(tmp_path / "x")]) == 2  # a dense model is no sparse one
    # the dense half at a Matryoshka size: --truncate_dim is the dense model's (it was passed to the sparse one too,
    # which refuses any, and the run failed); the sparse half's run is unchanged
    assert retrieve.main(dense + ["--index_type", "hybrid", "--sparse_name_or_path", str(tmp_path / "sparse"),
                                  "--truncate_dim", "16", "--output", str(tmp_path / "short.trec")]) == 0
    assert retrieve.main(dense + ["--index_type", "flat", "--truncate_dim", "16", "--output",
                                  str(tmp_path / "short_dense.trec")]) == 0
    assert ranked(read_trec_run(tmp_path / "short.trec")) == ranked(reciprocal_rank_fusion(
        [runs["sparse"], read_trec_run(tmp_path / "short_dense.trec")], top_k=20))
    # a quantized index's search setting, given to an index that has no codes: refused like --hybrid_k, not ignored
    assert retrieve.main(dense + ["--index_type", "flat", "--rescore_multiplier", "8", "--output", str(tmp_path / "x")]) == 2


def test_retrieve_binary_rescored_with_int8(tiny_bert, beir_folder, tmp_path):
    """--rescore_with int8 builds and saves the int8 file beside the binary index; a saved index of the other kind
    of rescoring is refused, not reused."""
    from retrievals.pipelines import retrieve

    base = ["--dataset", str(beir_folder), "--model_name_or_path", tiny_bert, "--pooling_method", "mean", "--top_k", "20",
            "--index_type", "binary", "--index_dir", str(tmp_path / "idx")]
    assert retrieve.main(base + ["--rescore_with", "int8", "--output", str(tmp_path / "a.trec")]) == 0
    assert (tmp_path / "idx" / "dense" / "rescore_int8.npy").is_file()
    assert retrieve.main(base + ["--rescore_with", "int8", "--output", str(tmp_path / "b.trec")]) == 0  # loaded
    assert read_trec_run(tmp_path / "a.trec") == read_trec_run(tmp_path / "b.trec")
    # --rescore_multiplier is a search setting: a loaded index searches with this run's, like a fresh one
    fresh = ["--dataset", str(beir_folder), "--model_name_or_path", tiny_bert, "--pooling_method", "mean", "--top_k", "20",
             "--index_type", "binary", "--rescore_with", "int8", "--rescore_multiplier", "0"]
    assert retrieve.main(fresh + ["--output", str(tmp_path / "fresh0.trec")]) == 0
    assert retrieve.main(base + ["--rescore_with", "int8", "--rescore_multiplier", "0", "--output", str(tmp_path / "e.trec")]) == 0
    assert read_trec_run(tmp_path / "e.trec") == read_trec_run(tmp_path / "fresh0.trec") != read_trec_run(tmp_path / "a.trec")
    assert retrieve.main(base + ["--output", str(tmp_path / "c.trec")]) == 2  # built with int8 rescoring: refused
    assert retrieve.main(base[:-4] + ["--index_type", "flat", "--rescore_with", "int8", "--output", str(tmp_path / "d")]) == 2


def test_retrieve_pipeline_errors(beir_folder, tmp_path, capsys):
    from retrievals.pipelines import retrieve

    assert retrieve.main(["--dataset", str(beir_folder), "--index_type", "flat", "--output", str(tmp_path / "r")]) == 2
    assert "needs --model_name_or_path" in capsys.readouterr().err
    assert retrieve.main(["--dataset", str(tmp_path), "--index_type", "bm25", "--output", str(tmp_path / "r")]) == 2
    assert "not 'aia-bde'" in capsys.readouterr().err


def test_build_hn(tiny_bert, train_file, tmp_path, caplog):
    from retrievals.pipelines import build_hn

    out = tmp_path / "hn.jsonl"
    base = ["--model_name_or_path", tiny_bert, "--input_file", train_file, "--output_file", str(out)]
    assert build_hn.main(base + ["--range_for_sampling", "0-30", "--negative_number", "3", "--false_negative_ratio", "10"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    source = [json.loads(line) for line in open(train_file)]
    assert len(records) == len(source)
    for rec, src in zip(records, source):
        assert len(rec["negative"]) == 3 and not set(rec["negative"]) & set(src["positive"])
    assert build_hn.main(base) == 2  # no silent overwrite
    with caplog.at_level("WARNING"):  # ask for more than exists: a warning, not a crash
        assert build_hn.main(base + ["--overwrite", "--range_for_sampling", "0-5", "--negative_number", "50",
                                     "--false_negative_ratio", "10"]) == 0
    assert "fewer than 50 negatives" in caplog.text
    # a strict false-negative filter (candidates must score below 0 x the positive's score) keeps none: a file of
    # empty negative lists would be worse than its input, so it is an error and the last file stays
    before = out.read_text()
    assert build_hn.main(base + ["--overwrite", "--range_for_sampling", "0-30", "--negative_number", "30",
                                 "--false_negative_ratio", "-10"]) == 2
    assert out.read_text() == before
    # --min_negatives leaves out the queries a training run with --train_group_size N+1 would refuse
    stats = build_hn.run(build_hn.HardNegativeArguments(
        model_name_or_path=tiny_bert, input_file=train_file, output_file=str(out), overwrite=True, range_for_sampling="0-5",
        negative_number=5, min_negatives=5, false_negative_ratio=10))
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(r["negative"]) == 5 for r in kept) and stats["left_out"] == len(source) - len(kept) > 0
    assert build_hn.main(base + ["--overwrite", "--false_negative_ratio", "-10", "--min_negatives", "1"]) == 2
    assert len(out.read_text().splitlines()) == len(kept)  # nothing written over the last good file


def test_evaluate_pipeline_report(tiny_bert, beir_folder, tmp_path):
    from retrievals.models.rankers import AutoModelForRanking
    from retrievals.pipelines import evaluate

    AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=64).save_pretrained(tmp_path / "ce")
    out = tmp_path / "report"
    assert evaluate.main(["--dataset", str(beir_folder), "--output_dir", str(out), "--models", f"base={tiny_bert}",
                          "--rerankers", f"ce={tmp_path / 'ce'}", "--first_stage", "bm25", "--rerank_top_k", "5"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["results"]] == ["base", "bm25", "ce"]  # the bm25 first stage beside its reranker
    bm25_alone = evaluate.evaluate_run(evaluate.bm25_run(evaluate.load_eval_dataset(str(beir_folder)), 100),
                                       evaluate.load_eval_dataset(str(beir_folder)).qrels, (10, 100))
    assert report["results"][1]["metrics"]["ndcg@10"] == round(bm25_alone["ndcg@10"], 4)
    assert report["dataset"]["queries"] == 10 and len(report["dataset"]["hash"]) == 16
    assert report["results"][0]["settings"]["pooling_method"] == "cls" and "transformers" in report["environment"]
    assert report["results"][0]["settings"]["inference_precision"] == "auto"
    assert report["results"][2]["settings"]["model_type"] == "cross-encoder"
    assert "| base | embedder |" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def clustered(n=300, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(30, dim))
    docs = centers[rng.integers(0, 30, n)] + 0.3 * rng.normal(size=(n, dim))
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[:40] + 0.05 * rng.normal(size=(40, dim))
    return docs.astype(np.float32), queries.astype(np.float32)


@pytest.mark.parametrize("index_type", ["int8", "binary", "binary_hnsw"])
def test_quantized_indexes(index_type, tmp_path):
    """int8 and binary codes: memory per vector, recall against exact search, float rescoring, save/load."""
    needs("faiss")
    from retrievals.index import Index, build_dense_index, exact_search
    from retrievals.index.quantized import binarize, unbinarize

    docs, queries = clustered()
    ids = [f"d{i}" for i in range(len(docs))]
    _, exact = exact_search(queries, docs, top_k=10)
    plain = build_dense_index(docs, ids, index_type, rescore_multiplier=0)
    rescored = build_dense_index(docs, ids, index_type, rescore_multiplier=8)
    assert plain.bytes_per_vector == (64 if index_type == "int8" else 8)

    def recall(index):
        _, found = index.search(queries, 10)
        return np.mean([len({f"d{j}" for j in e} & set(f)) / 10 for e, f in zip(exact.tolist(), found)])

    r_plain, r_rescored = recall(plain), recall(rescored)
    assert r_rescored >= r_plain - 1e-9 and r_rescored > (0.9 if index_type == "int8" else 0.6), (r_plain, r_rescored)
    if index_type != "int8":  # the rescored scores are the float query against the +-1 codes
        scores, found = rescored.search(queries[:1], 5)
        codes = unbinarize(binarize(docs), 64)
        np.testing.assert_allclose(scores[0], [codes[int(d[1:])] @ queries[0] for d in found[0]], rtol=1e-5)
    rescored.save(tmp_path / "q")
    loaded = Index.load(tmp_path / "q")
    assert loaded.search(queries, 10)[1] == rescored.search(queries, 10)[1]
    data = (tmp_path / "q" / "index.faiss").stat().st_size  # the codes once: no second copy beside faiss' own
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["ids.json", "index.faiss", "index_meta.json",
                                                                  "retrievals_files.json"]
    if index_type == "binary":  # flat: the codes and a small header
        assert len(docs) * 8 <= data < len(docs) * 8 + 1024
    if index_type != "int8":  # binary search, rescored against int8 codes kept in a memory-mapped file
        int8 = build_dense_index(docs, ids, index_type, rescore_multiplier=8, rescore_with="int8")
        assert int8.bytes_per_vector == 8 and recall(int8) >= r_rescored
        scores, found = int8.search(queries[:1], 5)
        low, high = docs.min(axis=0), docs.max(axis=0)
        decoded = low + np.rint((docs - low) / ((high - low) / 255)) * ((high - low) / 255)
        np.testing.assert_allclose(scores[0], [decoded[int(d[1:])] @ queries[0] for d in found[0]], rtol=1e-4)
        int8.save(tmp_path / "i8")
        again = Index.load(tmp_path / "i8")
        assert isinstance(again.rescore_codes, np.memmap) and again.search(queries, 10)[1] == int8.search(queries, 10)[1]
        with pytest.raises(UsageError, match="rescore_with"):
            build_dense_index(docs, ids, index_type, rescore_with="float")
    else:
        with pytest.raises(UsageError, match="rescore_with"):
            build_dense_index(docs, ids, "int8", rescore_with="int8")


def test_retrieve_never_writes_over_its_inputs_and_checks_the_qrels_match(beir_folder, tmp_path, capsys):
    """An output equal to an input is refused even with --overwrite; judgments naming none of the queries (or no
    relevant document) are an error, not metrics of 0; a folder on the output path that is a file is named first."""
    from retrievals.pipelines import retrieve

    corpus, queries, qrels = (str(beir_folder / name) for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"))
    base = ["--corpus", corpus, "--queries", queries, "--index_type", "bm25", "--overwrite"]
    before = Path(qrels).read_bytes()
    assert retrieve.main(base + ["--qrels", qrels, "--output", qrels]) == 2
    assert "is the --qrels this run uses" in capsys.readouterr().err and Path(qrels).read_bytes() == before
    (tmp_path / "afile").write_text("x")
    assert retrieve.main(base + ["--output", str(tmp_path / "afile" / "run.trec")]) == 2
    assert "is a file, so nothing can be written under it" in capsys.readouterr().err
    (tmp_path / "other.tsv").write_text("nope 0 d1 1\n")
    assert retrieve.main(base + ["--qrels", str(tmp_path / "other.tsv"), "--output", str(tmp_path / "r.trec")]) == 2
    assert "judged query ids is a query id of this run" in capsys.readouterr().err
    (tmp_path / "zero.tsv").write_text("".join(f"{q} 0 d1 0\n" for q in read_qrels(qrels)))
    assert retrieve.main(base + ["--qrels", str(tmp_path / "zero.tsv"), "--output", str(tmp_path / "r.trec")]) == 2
    assert "no query has a relevant document" in capsys.readouterr().err


class TextVectors:
    """An embedder whose vector for each text is given (build_hn's ranking made by hand)."""

    def __init__(self, vectors):
        self.vectors = {t: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for t, v in vectors.items()}

    def encode_corpus(self, texts, **kwargs):
        return np.stack([self.vectors[t] for t in texts])

    encode_queries = encode_corpus


def test_build_hn_never_mines_a_positive_of_the_same_query(tmp_path):
    from retrievals.data.readers import Record
    from retrievals.pipelines import build_hn

    # pair data: one record per (query, positive); p2 is q's positive too, though not in the first record
    records = [Record("q", ["p1"]), Record("q", ["p2"]), Record("other", ["p3"])]
    model = TextVectors({"q": [1, 0, 0], "other": [0, 0, 1], "p1": [1, 0.1, 0], "p2": [1, 0.2, 0], "p3": [0, 0.1, 1],
                         "n": [1, 1, 0]})
    a = build_hn.HardNegativeArguments(model_name_or_path="given", input_file="-", output_file="-",
                                       range_for_sampling="0-4", negative_number=5, false_negative_ratio=10)
    negatives, _ = build_hn.mine(a, records, ["p1", "p2", "p3", "n"], model)
    assert set(negatives[0]) == set(negatives[1]) == {"n", "p3"}  # neither p1 nor p2
    assert set(negatives[2]) == {"p1", "p2", "n"}


def test_build_hn_false_negative_filter_below_a_negative_positive():
    from retrievals.data.readers import Record
    from retrievals.pipelines import build_hn

    # the positive scores -0.4: a candidate at -0.3 scores above it (a likely false negative), one at -0.9 below
    model = TextVectors({"q": [1, 0], "p": [-0.4, 0.9165], "close": [-0.3, 0.9539], "far": [-0.9, 0.4359]})
    a = build_hn.HardNegativeArguments(model_name_or_path="given", input_file="-", output_file="-",
                                       range_for_sampling="0-3", negative_number=5, false_negative_ratio=0.5)
    negatives, stats = build_hn.mine(a, [Record("q", ["p"])], ["p", "close", "far"], model)
    assert negatives == [["far"]] and stats["dropped_as_false_negative"] == 1
    # a positive score: the threshold is ratio x that score, as before
    assert build_hn.false_negative_threshold(0.8, 0.95) == pytest.approx(0.76)
    assert build_hn.false_negative_threshold(-0.4, 0.5) == pytest.approx(-0.6)


def test_build_hn_pool_file_is_deduplicated(tmp_path):
    from retrievals.pipelines import build_hn

    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"text": "neg"}\n{"text": "other"}\n{"text": "neg"}\n"other"\n')
    assert build_hn.read_pool(str(pool)) == ["neg", "other"]
    (tmp_path / "pool.txt").write_text("a\nb\na\n")
    assert build_hn.read_pool(str(tmp_path / "pool.txt")) == ["a", "b"]


@pytest.mark.parametrize("flags", [["--hybrids", "e=e+bm25"], ["--models", "bm25=M"], ["--rerankers", "e=M"]])
def test_evaluate_refuses_a_name_given_twice(flags, tiny_bert, beir_folder, tmp_path, capsys):
    # a hybrid named like a model replaced its run: the report had two "e" rows, and a reranker over "e" reranked the hybrid
    from retrievals.pipelines import evaluate

    flags = [tiny_bert if f == "M" else f for f in flags]
    models = ["--models", f"e={tiny_bert}"] + (flags[1:] if flags[0] == "--models" else [])
    rest = [] if flags[0] == "--models" else flags
    assert evaluate.main(["--dataset", str(beir_folder), "--output_dir", str(tmp_path / "r"), *models, *rest]) == 2
    assert "that name is taken" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_build_hn_kept_original_negatives_are_screened_too(tmp_path):
    from retrievals.data.readers import Record
    from retrievals.pipelines import build_hn

    # pair data: q's first record lists p2 as a negative, and p2 is q's positive in its second record
    records = [Record("q", ["p1"], ["p2", "n0"]), Record("q", ["p2"], ["p1"])]
    model = TextVectors({"q": [1, 0], "p1": [1, 0.1], "p2": [1, 0.2], "n0": [0.5, 1], "n": [0.2, 1]})
    a = build_hn.HardNegativeArguments(model_name_or_path="given", input_file="-", output_file="-",
                                       range_for_sampling="0-5", negative_number=5, false_negative_ratio=10,
                                       keep_original_negatives=True)
    negatives, _ = build_hn.mine(a, records, ["p1", "p2", "n0", "n"], model)
    assert "p2" not in negatives[0] and "n0" in negatives[0] and "p1" not in negatives[1]


def test_build_hn_loads_the_reranker_before_encoding(tiny_bert, train_file, tmp_path, monkeypatch, capsys):
    from retrievals import AutoModelForEmbedding
    from retrievals.pipelines import build_hn

    monkeypatch.setattr(AutoModelForEmbedding, "encode_corpus", lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoded")))
    assert build_hn.main(["--model_name_or_path", tiny_bert, "--input_file", train_file, "--output_file",
                          str(tmp_path / "hn.jsonl"), "--reranker_name_or_path", str(tmp_path / "nope")]) == 2
    assert "no such model folder" in capsys.readouterr().err

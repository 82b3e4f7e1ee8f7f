"""The retrieve pipeline's outputs: what a rerun leaves beside its run file."""

import json
import os

from retrievals.data.io import rank, read_jsonl_texts, save_beir
from retrievals.pipelines import retrieve

from ..conftest import corpus_lines


def test_a_rerun_without_qrels_leaves_no_earlier_metrics_beside_its_run(tiny_bert, tmp_path):
    lines = corpus_lines(20)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:20] for i in range(3)},
              {f"q{i}": {f"d{i}": 1} for i in range(3)})
    out = tmp_path / "run.trec"
    common = ["--model_name_or_path", tiny_bert, "--pooling_method", "mean", "--index_type", "exact", "--output", str(out)]
    assert retrieve.main(["--dataset", str(tmp_path / "beir"), *common]) == 0
    assert json.loads((tmp_path / "run.trec.metrics.json").read_text())["ndcg@10"] > 0
    beir = tmp_path / "beir"
    assert retrieve.main(["--corpus", str(beir / "corpus.jsonl"), "--queries", str(beir / "queries.jsonl"), *common,
                          "--overwrite", "true"]) == 0
    assert out.is_file() and not (tmp_path / "run.trec.metrics.json").exists()  # they were the earlier run's


def test_ids_a_run_file_cannot_hold_are_refused_before_any_encoding(tiny_bert, tmp_path, monkeypatch, capsys):
    from retrievals import AutoModelForEmbedding

    save_beir(tmp_path / "beir", {"doc 1": "tax card", "d2": "passport"}, {"q1": "tax"}, {"q1": {"doc 1": 1}})
    monkeypatch.setattr(AutoModelForEmbedding, "encode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoded")))
    assert retrieve.main(["--dataset", str(tmp_path / "beir"), "--model_name_or_path", tiny_bert, "--index_type", "exact",
                          "--output", str(tmp_path / "run.trec")]) != 0
    assert not (tmp_path / "run.trec").exists()
    assert "'doc 1' is empty or contains whitespace" in capsys.readouterr().err


def test_metrics_leave_out_judged_queries_that_were_not_asked(tiny_bert, tmp_path):
    """The warning says so: a judged query missing from the queries file is not a query the run missed."""
    lines = corpus_lines(20)
    beir = tmp_path / "beir"
    save_beir(beir, {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:20] for i in range(3)},
              {f"q{i}": {f"d{i}": 1} for i in range(3)})
    qrels = tmp_path / "qrels.tsv"
    common = ["--model_name_or_path", tiny_bert, "--pooling_method", "mean", "--index_type", "exact",
              "--corpus", str(beir / "corpus.jsonl"), "--queries", str(beir / "queries.jsonl"), "--qrels", str(qrels)]
    metrics = []
    for extra in ("", "q9\t0\td5\t1\n"):
        qrels.write_text("".join(f"q{i}\t0\td{i}\t1\n" for i in range(3)) + extra)
        out = tmp_path / f"run{len(extra)}.trec"
        assert retrieve.main([*common, "--output", str(out)]) == 0
        metrics.append(json.loads(out.with_name(out.name + ".metrics.json").read_text()))
    assert metrics[0] == metrics[1] and metrics[0]["ndcg@10"] > 0


def test_output_is_never_a_file_of_the_dataset_folder(tmp_path, capsys):
    """--dataset FOLDER --output FOLDER/qrels/test.tsv --overwrite once replaced the dataset's own qrels with the run:
    the files a --dataset folder supplies are protected like --corpus/--queries/--qrels (one error line naming it)."""
    from retrievals.evaluation.datasets import dataset_files

    beir = tmp_path / "beir"
    save_beir(beir, {"d1": "tax card", "d2": "passport"}, {"q1": "tax"}, {"q1": {"d1": 1}})
    vaswani = tmp_path / "vaswani"
    vaswani.mkdir()
    (vaswani / "doc-text.trec").write_text("<DOC> <DOCNO> 1 </DOCNO> tax card </DOC>\n<DOC> <DOCNO> 2 </DOCNO> passport </DOC>\n")
    (vaswani / "query-text.trec").write_text("<top> <num> 1 </num> <title> TAX </title> </top>\n")
    (vaswani / "qrels").write_text("1 0 1 1\n")
    for folder, names in ((beir, ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")),
                          (vaswani, ("doc-text.trec", "query-text.trec", "qrels"))):
        assert sorted(dataset_files(str(folder)).values()) == sorted(folder / name for name in names)
        before = {name: (folder / name).read_bytes() for name in names}
        for name in names:
            argv = ["--dataset", str(folder), "--index_type", "bm25", "--top_k", "2", "--output", str(folder / name),
                    "--overwrite", "true"]
            assert retrieve.main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"{folder / name}: is the --dataset " in err, err
        assert {name: (folder / name).read_bytes() for name in names} == before
        out = tmp_path / f"{folder.name}.trec"  # the folder itself is fine to read from and write beside
        assert retrieve.main(["--dataset", str(folder), "--index_type", "bm25", "--top_k", "2", "--output", str(out)]) == 0
        assert out.read_text().split()[:3] == ["q1" if folder == beir else "1", "Q0", "d1" if folder == beir else "1"]


def test_cache_dir_is_refused_where_no_dense_embeddings_are_made(tmp_path, capsys):
    """--cache_dir holds dense corpus embeddings: with --index_type bm25 it was silently ignored (every run re-indexed
    while the user believed it cached); now refused before any work, naming the flag that does save the index."""
    beir = tmp_path / "beir"
    save_beir(beir, {"d1": "tax card", "d2": "passport"}, {"q1": "tax"}, {"q1": {"d1": 1}})
    out = tmp_path / "run.trec"
    argv = ["--dataset", str(beir), "--index_type", "bm25", "--output", str(out), "--cache_dir", str(tmp_path / "cache")]
    assert retrieve.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--cache_dir keeps dense corpus embeddings, which --index_type bm25 has none of" in err and "--index_dir" in err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_truncate_dim_retrieves_with_the_leading_dimensions(tiny_bert, tmp_path):
    """--truncate_dim (a Matryoshka model's smaller size) reaches the index: its vectors have that many dimensions,
    renormalised, as encode(truncate_dim=) gives them; an index saved at another size is not served."""
    import numpy as np

    from retrievals import AutoModelForEmbedding

    lines = corpus_lines(20)
    beir = tmp_path / "beir"
    save_beir(beir, {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:20] for i in range(3)},
              {f"q{i}": {f"d{i}": 1} for i in range(3)})
    common = ["--dataset", str(beir), "--model_name_or_path", tiny_bert, "--pooling_method", "mean", "--index_type", "exact"]
    for dim in (8, 16):
        folder = tmp_path / f"index{dim}"
        assert retrieve.main([*common, "--truncate_dim", str(dim), "--index_dir", str(folder),
                              "--output", str(tmp_path / f"run{dim}.trec")]) == 0
        vectors = np.load(folder / "dense" / "vectors.npy")
        assert vectors.shape == (20, dim)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    model = AutoModelForEmbedding.from_pretrained(tiny_bert, pooling_method="mean")
    np.testing.assert_allclose(vectors, model.encode([lines[int(d[1:])] for d in json.loads(
        (tmp_path / "index16" / "dense" / "ids.json").read_text())], truncate_dim=16), atol=1e-5)
    assert retrieve.main([*common, "--truncate_dim", "8", "--index_dir", str(tmp_path / "index16"),
                          "--output", str(tmp_path / "again.trec")]) == 2  # made at 16: not served as 8
    assert retrieve.main([*common, "--truncate_dim", "0", "--output", str(tmp_path / "bad.trec")]) == 2
    big = tmp_path / "index64"  # above the model's 32 dimensions: refused, no index left behind
    assert retrieve.main([*common, "--truncate_dim", "64", "--index_dir", str(big), "--output", str(tmp_path / "big.trec")]) == 2
    assert not (big / "dense" / "vectors.npy").exists() and not (tmp_path / "big.trec").exists()


def _beir(tmp_path, n=20, queries=3):
    lines = corpus_lines(n)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:20] for i in range(queries)},
              {f"q{i}": {f"d{i}": 1} for i in range(queries)})
    return tmp_path / "beir"


def test_the_run_is_never_written_into_a_folder_the_run_uses(tiny_bert, tmp_path, capsys):
    # --output IDX/dense/ids.json replaced the saved index's ids; --output MODEL/config.json --overwrite the model's
    beir = _beir(tmp_path)
    common = ["--dataset", str(beir), "--model_name_or_path", tiny_bert, "--pooling_method", "mean", "--index_type", "exact"]
    for output, flag in ((tmp_path / "idx" / "dense" / "ids.json", "--index_dir"), (tmp_path / "idx" / "run", "--index_dir"),
                         (os.path.join(tiny_bert, "config.json"), "--model_name_or_path")):
        before = os.path.getmtime(os.path.join(tiny_bert, "config.json"))
        assert retrieve.main([*common, "--index_dir", str(tmp_path / "idx"), "--output", str(output), "--overwrite", "true"]) == 2
        assert f"is in the {flag} this run uses" in capsys.readouterr().err
        assert not (tmp_path / "idx").exists() and os.path.getmtime(os.path.join(tiny_bert, "config.json")) == before


def test_folders_that_are_files_and_contradicting_flags_are_refused_before_any_work(tiny_bert, tmp_path, capsys):
    beir = _beir(tmp_path)
    (tmp_path / "a_file").write_text("mine")
    out = ["--output", str(tmp_path / "run.trec")]
    dense = ["--dataset", str(beir), "--model_name_or_path", tiny_bert, "--index_type", "exact", *out]
    for argv, words in (([*dense, "--index_dir", str(tmp_path / "a_file")], "--index_dir"),
                        ([*dense, "--cache_dir", str(tmp_path / "a_file")], "--cache_dir"),
                        ([*dense, "--corpus", str(beir / "corpus.jsonl")], "--dataset brings its own"),
                        (["--dataset", str(beir), "--index_type", "bm25", "--model_name_or_path", tiny_bert, *out], "uses no embedder"),
                        ([*dense, "--reranker_name_or_path", str(tmp_path / "nope")], "nope"),
                        (["--dataset", str(beir), "--index_type", "hybrid", *out], "needs --model_name_or_path")):
        assert retrieve.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "a_file").read_text() == "mine" and not (tmp_path / "run.trec").exists()


def test_empty_inputs_and_qrels_naming_no_document_are_errors(tiny_bert, tmp_path, capsys):
    # an empty corpus wrote an empty run (or, with --cache_dir, a traceback); qrels whose document ids match none of
    # the corpus printed metrics of 0 with exit 0
    beir = _beir(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("".join(f"q{i}\t0\tdoc{i}\t1\n" for i in range(3)))
    common = ["--model_name_or_path", tiny_bert, "--index_type", "exact", "--output", str(tmp_path / "run.trec")]
    for files, words in (((empty, beir / "queries.jsonl"), "empty.jsonl: holds no records"),
                         ((beir / "corpus.jsonl", empty), "empty.jsonl: holds no records"),
                         ((beir / "corpus.jsonl", beir / "queries.jsonl", qrels), "none of its 3 relevant document ids")):
        argv = ["--corpus", str(files[0]), "--queries", str(files[1]), *(["--qrels", str(files[2])] if len(files) > 2 else [])]
        assert retrieve.main([*argv, *common, "--cache_dir", str(tmp_path / "cache")]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "run.trec").exists()


def test_the_run_keeps_top_k_documents_and_the_reranker_sees_rerank_top_k(tiny_bert, tmp_path):
    # --top_k 100 --rerank_top_k 5 wrote 5 documents (recall@100 was recall@5); --top_k 3 --rerank_top_k 8 reranked 3
    from retrievals import AutoModelForRanking
    from retrievals.data.io import read_trec_run

    beir = _beir(tmp_path)
    ranker = tmp_path / "ce"
    AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=32).save_pretrained(ranker)
    common = ["--dataset", str(beir), "--model_name_or_path", tiny_bert, "--pooling_method", "mean", "--index_type", "exact"]
    assert retrieve.main([*common, "--output", str(tmp_path / "first.trec"), "--top_k", "12"]) == 0
    first = read_trec_run(tmp_path / "first.trec")
    scored = {}
    real = AutoModelForRanking.from_pretrained(str(ranker))
    for top_k, rerank_top_k in ((12, 5), (3, 8)):
        out = tmp_path / f"run{top_k}.trec"
        assert retrieve.main([*common, "--output", str(out), "--top_k", str(top_k), "--reranker_name_or_path", str(ranker),
                              "--rerank_top_k", str(rerank_top_k)]) == 0
        run = read_trec_run(out)
        for q, scores in run.items():
            assert len(scores) == top_k
            ranked, before = rank(scores), rank(first[q])
            depth = min(top_k, rerank_top_k)
            if top_k > rerank_top_k:  # the rest follows in first-stage order
                assert set(ranked[:rerank_top_k]) == set(before[:rerank_top_k]) and ranked[rerank_top_k:] == before[rerank_top_k:top_k]
            else:  # the best of the reranked top 8
                candidates = before[:rerank_top_k]
                texts, asked = read_jsonl_texts(beir / "corpus.jsonl"), read_jsonl_texts(beir / "queries.jsonl")
                expect = real.compute_score([(asked[q], texts[d]) for d in candidates])
                best = [d for _, d in sorted(zip(expect, candidates), key=lambda sd: (sd[0], sd[1]), reverse=True)][:depth]
                assert ranked == best, (ranked, best)



def test_retrieve_names_only_what_its_run_measures_and_refuses_what_it_would_ignore(tiny_bert, tmp_path, capsys):
    # --top_k 10 reported recall@100 (of 10 documents); an empty qrels file wrote no metrics and exited 0;
    # --hybrid_k, --rerank_top_k and --rerank_first_stage_weight were ignored without a reranker or a hybrid
    beir = _beir(tmp_path)
    common = ["--dataset", str(beir), "--model_name_or_path", tiny_bert, "--pooling_method", "mean", "--index_type", "exact"]
    out = tmp_path / "run.trec"
    assert retrieve.main([*common, "--output", str(out), "--top_k", "10"]) == 0
    metrics = json.loads((tmp_path / "run.trec.metrics.json").read_text())
    assert "recall@100" not in metrics and metrics["run_depth"] == 10 and "recall@10" in metrics and "map" in metrics
    empty = tmp_path / "empty.tsv"
    empty.write_text("query-id\tcorpus-id\tscore\n")
    corpus, queries = tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(corpus_lines(5))))
    queries.write_text(json.dumps({"_id": "q0", "text": "tax"}) + "\n")
    assert retrieve.main(["--corpus", str(corpus), "--queries", str(queries), "--qrels", str(empty), "--model_name_or_path",
                          tiny_bert, "--index_type", "exact", "--output", str(tmp_path / "e.trec")]) == 2
    assert "holds no judgments" in capsys.readouterr().err
    for flags, words in ((("--hybrid_k", "10"), "--hybrid_k is the reciprocal-rank fusion constant"),
                         (("--rerank_top_k", "5"), "pass a reranker, or drop them"),
                         (("--rerank_first_stage_weight", "0.5"), "pass a reranker, or drop them")):
        assert retrieve.main([*common, "--output", str(tmp_path / "x.trec"), *flags]) == 2
        assert words in capsys.readouterr().err

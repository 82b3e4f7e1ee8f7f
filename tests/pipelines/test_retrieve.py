"""The retrieve pipeline's outputs: what a rerun leaves beside its run file."""

import json

from retrievals.data.io import save_beir
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

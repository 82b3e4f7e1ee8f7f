"""The evaluate pipeline under careless use: flags given twice, shallow runs, reranker rows as deep as the first
stage's, a stale chart, wrong paths found before any model runs."""

import json
import sys

from retrievals.data.io import save_beir
from retrievals.pipelines import evaluate

from ..conftest import corpus_lines


def _beir(tmp_path, n=60, doc_prefix="d"):
    lines = corpus_lines(n)
    save_beir(tmp_path / "beir", {f"d{i}": t for i, t in enumerate(lines)}, {f"q{i}": lines[i][:30] for i in range(0, n, 6)},
              {f"q{i}": {f"{doc_prefix}{i}": 1} for i in range(0, n, 6)})
    return tmp_path / "beir"


def test_a_list_flag_given_twice_and_a_shallow_top_k_are_refused(tiny_bert, tmp_path, capsys):
    # --models a=X --models b=Y evaluated b alone; --top_k 50 changed nothing (recall@100 needs 100)
    beir = _beir(tmp_path)
    common = ["--dataset", str(beir), "--output_dir", str(tmp_path / "r")]
    assert evaluate.main([*common, "--models", f"a={tiny_bert}", "--models", f"b={tiny_bert}"]) == 2
    assert "--models is given twice" in capsys.readouterr().err
    assert evaluate.main([*common, "--models", f"a={tiny_bert}", "--top_k", "50"]) == 2
    assert "--top_k" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_wrong_paths_and_qrels_naming_no_document_fail_before_any_model_runs(tiny_bert, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "retrieve", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrieved")))
    beir = _beir(tmp_path)
    common = ["--dataset", str(beir), "--output_dir", str(tmp_path / "r"), "--models", f"a={tiny_bert}"]
    assert evaluate.main([*common, "--rerankers", f"ce={tmp_path / 'nope'}"]) == 2
    assert "nope: no such --rerankers ce model folder" in capsys.readouterr().err
    assert evaluate.main([*common, "--rerankers", f"ce={tiny_bert}", "--first_stage", "b"]) == 2
    assert "--first_stage 'b'" in capsys.readouterr().err
    bad = _beir(tmp_path / "bad", doc_prefix="doc")
    assert evaluate.main(["--dataset", str(bad), "--output_dir", str(tmp_path / "r"), "--models", f"a={tiny_bert}"]) == 2
    assert "none of its 10 relevant document ids" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_reranker_row_measures_as_deep_a_list_as_its_first_stage(tiny_bert, tmp_path):
    # the reranked run held --rerank_top_k documents: its recall@100 was recall@20 and its MAP fell under the first stage's
    from retrievals import AutoModelForRanking

    beir = _beir(tmp_path, n=150)
    ranker = tmp_path / "ce"
    AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder", max_length=32).save_pretrained(ranker)
    assert evaluate.main(["--dataset", str(beir), "--output_dir", str(tmp_path / "r"), "--models", f"b={tiny_bert}",
                          "--rerankers", f"ce={ranker}", "--rerank_top_k", "5"]) == 0
    rows = {r["name"]: r["metrics"] for r in json.loads((tmp_path / "r" / "report.json").read_text())["results"]}
    assert rows["ce"]["recall@100"] == rows["b"]["recall@100"]  # reranking the top 5 moves nothing in or out of 100


def test_a_report_without_a_chart_removes_the_earlier_chart(tiny_bert, tmp_path, monkeypatch, caplog):
    beir = _beir(tmp_path)
    argv = ["--dataset", str(beir), "--output_dir", str(tmp_path / "r"), "--models", f"a={tiny_bert}", "--overwrite"]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.png").write_bytes(b"an earlier report's chart")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with caplog.at_level("WARNING"):
        assert evaluate.main(argv) == 0
    assert not (tmp_path / "r" / "report.png").exists() and "removed the earlier report's chart" in caplog.text
    assert (tmp_path / "r" / "report.json").is_file()


def test_metrics_leave_out_judged_queries_never_asked_and_record_the_run_depth(tiny_bert, tmp_path):
    # a Vaswani-layout folder whose qrels judge a query its query file lacks: the warning said "left out of the
    # metrics" but each metric counted it as 0; and MAP (over the whole run) depended on --top_k, never recorded
    folder = tmp_path / "vaswani"
    folder.mkdir()
    lines = corpus_lines(41)
    (folder / "doc-text.trec").write_text("".join(f"<DOC>\n<DOCNO>{i}</DOCNO>\n{lines[i]}\n</DOC>\n" for i in range(1, 41)))
    (folder / "query-text.trec").write_text("".join(f"<top>\n<num>{i}</num>\n<title>\n{lines[i][:30].upper()}\n</title>\n"
                                                    "</top>\n" for i in (1, 2, 3)))
    (folder / "qrels").write_text("1 0 1 1\n2 0 2 1\n3 0 3 1\n4 0 4 1\n")  # query 4 is judged, never asked
    for top_k in (100, 120):
        out = tmp_path / f"r{top_k}"
        assert evaluate.main(["--dataset", str(folder), "--output_dir", str(out), "--models", f"b={tiny_bert}",
                              "--top_k", str(top_k)]) == 0
        row = json.loads((out / "report.json").read_text())["results"][0]
        assert row["metrics"]["recall@100"] == 1.0  # 40 documents, all retrieved, for each of the 3 asked queries
        assert row["settings"]["run_depth"] == top_k


def test_settings_that_change_nothing_are_said_to(tiny_bert, tmp_path, caplog):
    # --rerank_top_k, --rerank_first_stage_weight and --fusion weighted without rerankers or hybrids were taken silently
    beir = _beir(tmp_path)
    with caplog.at_level("WARNING", logger="retrievals"):
        assert evaluate.main(["--dataset", str(beir), "--output_dir", str(tmp_path / "r"), "--models", f"b={tiny_bert}",
                              "--rerank_top_k", "5", "--rerank_first_stage_weight", "0.5", "--fusion", "weighted"]) == 0
    for flag, missing in (("--rerank_top_k", "--rerankers"), ("--rerank_first_stage_weight", "--rerankers"),
                          ("--fusion", "--hybrids")):
        assert f"{flag} is set but there are no {missing}: it changes nothing." in caplog.text

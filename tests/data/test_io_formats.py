"""Evaluation and data files keep what was written: ids with spaces in BEIR TSV, refused where TREC's format cannot
hold them, pretty-printed JSON errors where they are, and file modes as the umask says. Quick: no models."""

import os
import stat

import pytest

from retrievals.data.io import load_beir, read_qrels, read_trec_run, save_beir, write_qrels, write_trec_run
from retrievals.data.readers import DataError, load_records
from retrievals.files import atomic_write_json


def test_beir_ids_with_spaces_survive_the_round_trip(tmp_path):
    corpus = {"doc 7": "x", "Albert Einstein": "y", "d8": "z"}
    qrels = {"q 1": {"doc 7": 1, "d8": 0}, "q2": {"Albert Einstein": 2}}
    save_beir(tmp_path / "beir", corpus, {"q 1": "query one", "q2": "query two"}, qrels)
    # before: "q 1\tdoc 7\t1" split on any whitespace read as TREC "qid 0 docid rel": {'q': {'7': 1}}
    assert load_beir(tmp_path / "beir") == (corpus, {"q 1": "query one", "q2": "query two"}, qrels)
    (tmp_path / "run.tsv").write_text("q 1\tQ0\tdoc 7\t1\t2.5\ttag\n")  # a tab-separated run splits on tabs too
    assert read_trec_run(tmp_path / "run.tsv") == {"q 1": {"doc 7": 2.5}}
    (tmp_path / "trec.txt").write_text("q1 0 d1 1\nq1  0  d2   0\n")  # TREC: any whitespace, as before
    assert read_qrels(tmp_path / "trec.txt") == {"q1": {"d1": 1, "d2": 0}}
    (tmp_path / "empty_id.tsv").write_text("query-id\tcorpus-id\tscore\nq1\t\t1\n")
    with pytest.raises(DataError, match=r"empty_id.tsv:2: the document id column is empty"):
        read_qrels(tmp_path / "empty_id.tsv")


def test_trec_writers_refuse_ids_they_cannot_hold(tmp_path):
    run = tmp_path / "run.trec"
    with pytest.raises(DataError, match=r"run.trec: query 'q1': document id 'doc 7' is empty or contains whitespace"):
        write_trec_run({"q1": {"d1": 1.0, "doc 7": 0.5}}, run)
    with pytest.raises(DataError, match=r"query id 'q\\t1'"):
        write_trec_run({"q\t1": {"d1": 1.0}}, run)
    with pytest.raises(DataError, match="tag 'my run'"):
        write_trec_run({"q1": {"d1": 1.0}}, run, tag="my run")
    with pytest.raises(DataError, match=r"query 'q1': document id 'Albert Einstein'"):
        write_qrels({"q1": {"Albert Einstein": 1}}, tmp_path / "qrels.txt")
    assert not run.exists() and not (tmp_path / "qrels.txt").exists()  # refused before anything is written
    with pytest.raises(DataError, match=r"id 'doc\\t7' is empty or contains a tab"):
        save_beir(tmp_path / "beir", {"doc\t7": "x"}, {"q1": "q"}, {"q1": {"doc\t7": 1}})
    assert not (tmp_path / "beir").exists()
    write_trec_run({"q1": {"d1": 1.0}}, run)  # ids without whitespace: written and read back
    assert read_trec_run(run) == {"q1": {"d1": 1.0}}


def test_a_broken_pretty_printed_json_object_is_reported_where_it_breaks(tmp_path):
    f = tmp_path / "d.json"
    f.write_text('{\n  "query": "q",\n  "positive": "p",\n  "negative": ["n",]\n}\n')
    # before: retried as JSON Lines and reported at line 1 ("Expecting property name ...")
    with pytest.raises(DataError, match=r"d.json:4:20: invalid JSON object \(Expecting value\)"):
        load_records(str(f))
    f.write_text('{"query": "a", "positive": "p"}\n{"query": "b", "positive": "q"}\n{"query": "c", "pos\n')
    with pytest.raises(DataError, match=r"d.json:3: invalid JSON"):  # JSON Lines saved as .json: its bad line
        load_records(str(f))
    f.write_text('{"query": "a", "positive": "p"}\n\n{"query": "b", "positive": "q"}\n')
    assert [r.origin for r in load_records(str(f))] == [f"{f}:1", f"{f}:3"]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_trec_run({"q1": {"d1": 1.0}}, tmp_path / "run.trec")
        atomic_write_json(tmp_path / "config.json", {"a": 1})
        (tmp_path / "plain.txt").write_text("x")  # what open() gives: the reference
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("run.trec", "config.json", "plain.txt")}
    # before: mkstemp's 0o600 kept by the rename, unreadable for every other user whatever the umask
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_save_beir_writes_only_what_load_beir_reads_back(tmp_path):
    # only the qrels ids were checked first: a lone surrogate in a text raised UnicodeEncodeError with corpus.jsonl and
    # qrels/ already written; a None text, a True or 0.5 relevance and a {"title", "text"} corpus value were written
    # and then refused (or read back nested) by load_beir
    folder = tmp_path / "beir"
    corpus, queries, qrels = {"d1": "a text", "d2": "another"}, {"q1": "a query"}, {"q1": {"d1": 1}}
    for bad_corpus, bad_queries, bad_qrels, message in (
            (corpus, {"q1": "bad \ud800"}, qrels, "queries.jsonl: field text of id 'q1' has a lone surrogate"),
            (corpus, {"q1": None}, qrels, "queries.jsonl: id 'q1': the text must be a string"),
            (corpus, queries, {"q1": {"d1": True}}, r"test.tsv: query 'q1', document 'd1': relevance True must be a whole"),
            (corpus, queries, {"q1": {"d1": 0.5}}, "relevance 0.5 must be a whole number"),
            ({"d1": {"title": 1, "text": "x"}}, queries, qrels, "corpus.jsonl: id 'd1': the title must be a string"),
            ({("d", 1): "x"}, queries, qrels, r"corpus.jsonl: id \('d', 1\) must be a non-empty string")):
        with pytest.raises(DataError, match=message):
            save_beir(folder, bad_corpus, bad_queries, bad_qrels)
        assert not folder.exists()
    with pytest.raises(DataError, match="relevance '1' must be a whole number"):
        write_qrels({"q1": {"d1": "1"}}, tmp_path / "qrels.txt")
    assert not (tmp_path / "qrels.txt").exists()
    titled = {"d1": {"title": "Tax", "text": "a text"}, "d2": "another"}
    save_beir(folder, titled, queries, {"q1": {"d1": 1.0}})  # a whole float (a pandas column) is written as 1
    assert load_beir(folder) == ({"d1": "Tax a text", "d2": "another"}, queries, qrels)
    write_qrels({"q1": {"d1": 2.0}}, tmp_path / "qrels.txt")
    assert read_qrels(tmp_path / "qrels.txt") == {"q1": {"d1": 2}}

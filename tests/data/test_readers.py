"""Readers: every bad input named (encoding, BOM, folders, broken JSON arrays, duplicate queries) and TREC
runs written in the order the metrics rank them. Quick: no models."""

import codecs
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrievals.data.readers import DataError, load_records
from retrievals.utils import UsageError
from retrievals.data.io import read_jsonl_texts, read_qrels, read_trec_run, write_trec_run
from retrievals.evaluation.metrics import evaluate_run, rank
from retrievals.pipelines.build_hn import read_pool
from retrievals.pipelines.embed import read_texts

from ..conftest import needs

BOM = codecs.BOM_UTF8
PROPERTY = settings(max_examples=50, deadline=None)

# Every text reader, with a 3-line file it accepts (line 2 is where a bad byte goes).
READERS = {
    "records.jsonl": (load_records, b'{"query": "a", "positive": "b"}\n{"query": "c", "positive": "d"}\n{"query": "e", "positive": "f"}\n'),
    "records.json": (load_records, b'[{"query": "a", "positive": "b"},\n {"query": "c", "positive": "d"},\n {"query": "e", "positive": "f"}]\n'),
    "texts.txt": (lambda p: read_texts(p, "text"), b"one\ntwo\nthree\n"),
    "pool.txt": (read_pool, b"one\ntwo\nthree\n"),
    "qrels.tsv": (read_qrels, b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n"),
    "run.trec": (read_trec_run, b"q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\nq1 Q0 d3 3 0.5 t\n"),
    "corpus.jsonl": (read_jsonl_texts, b'{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n{"_id": "d3", "text": "c"}\n'),
}


@pytest.mark.parametrize("name", READERS)
def test_non_utf8_is_a_data_error_naming_file_line_and_column(tmp_path, name):
    read, content = READERS[name]
    lines = content.split(b"\n")
    lines[1] = lines[1][:3] + b"\xe9" + lines[1][3:]  # a Latin-1 "é" in line 2, column 4
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as err:
        read(str(path))
    assert f"{path}:2: not UTF-8 text (byte 0xe9 at column 4" in str(err.value)


@pytest.mark.parametrize("name", READERS)
def test_utf8_bom_is_accepted(tmp_path, name):
    read, content = READERS[name]
    plain, with_bom = tmp_path / name, tmp_path / "bom" / name
    with_bom.parent.mkdir()
    plain.write_bytes(content)
    with_bom.write_bytes(BOM + content)
    same = lambda out: [(r.query, r.positives) for r in out] if isinstance(out, list) and hasattr(out[0], "query") else out  # noqa: E731
    assert same(read(str(with_bom))) == same(read(str(plain)))  # qrels: the header is still recognised as one


def test_folder_reads_jsonl_and_json_only_skips_hidden_and_names_the_rest(tmp_path, caplog):
    folder = tmp_path / "data"
    for rel, content in {
        "b.jsonl": '{"query": "b", "positive": "p"}\n',
        "a/c.json": '[{"query": "c", "positive": "p"}]',
        "a.jsonl": '{"query": "a", "positive": "p"}\n',
        "notes.txt": "not data",
        "data.csv": "query,positive\n",
        ".DS_Store": "\x00",
        ".ipynb_checkpoints/a-checkpoint.jsonl": '{"query": "stale", "positive": "p"}\n',
        "a/.hidden.jsonl": '{"query": "hidden", "positive": "p"}\n',
    }.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(content, encoding="utf-8")
    with caplog.at_level("WARNING", logger="retrievals"):
        records = load_records(str(folder))
    assert [r.query for r in records] == ["c", "a", "b"]  # sorted paths: a/c.json, a.jsonl, b.jsonl
    warnings = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(warnings) == 1 and "2 file(s)" in warnings[0]
    assert "notes.txt" in warnings[0] and "data.csv" in warnings[0] and ".DS_Store" not in warnings[0]


def test_broken_json_array_names_line_and_column(tmp_path):
    f = tmp_path / "d.json"
    f.write_text('[{"query": "a", "positive": "p"},\n {"query": "x", "pos', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_records(str(f))
    assert f"{f}:2:17: invalid JSON array (Unterminated string starting at)" in str(err.value)
    # JSON Lines saved with a .json name, and a single object, still read
    f.write_text('{"query": "a", "positive": "p"}\n{"query": "b", "positive": "q"}\n', encoding="utf-8")
    assert [r.origin for r in load_records(str(f))] == [f"{f}:1", f"{f}:2"]
    f.write_text('{\n  "query": "a",\n  "positive": "p"\n}\n', encoding="utf-8")
    assert [r.query for r in load_records(str(f))] == ["a"]


def test_text_lines_split_on_newline_only(tmp_path):
    # U+2028 and U+0085 are line breaks to str.splitlines() but legal inside texts and JSON strings
    f = tmp_path / "t.txt"
    f.write_bytes("a\u2028b\r\nc\x85d\n".encode())
    assert read_texts(str(f), "text") == ["a\u2028b", "c\x85d"]
    assert read_pool(str(f)) == ["a\u2028b", "c\x85d"]


def test_duplicate_queries_warn_once_with_both_locations(tmp_path, caplog):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"query": q, "positive": p}) for q, p in
                           [("q1", "a"), ("q2", "b"), ("q1", "c"), ("q2", "d"), ("q1", "e"), ("q3", "f")]) + "\n")
    with caplog.at_level("WARNING", logger="retrievals"):
        records = load_records(str(f))
    assert [(r.query, r.positives) for r in records] == [("q1", ["a"]), ("q2", ["b"]), ("q1", ["c"]),
                                                         ("q2", ["d"]), ("q1", ["e"]), ("q3", ["f"])]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "2 query text(s) occur in more than one record (3 repeat(s))" in warnings[0]
    assert f"'q1' at {f}:1 and {f}:3" in warnings[0] and f"'q2' at {f}:2 and {f}:4" in warnings[0]
    assert "false in-batch negatives" in warnings[0]


def test_written_run_with_ties_agrees_with_metrics_and_trec_eval(tmp_path):
    pytrec_eval = needs("pytrec_eval")
    run = {"q1": {"d1": 1.0, "d3": 1.0, "d2": 1.0, "d9": 0.5, "d10": 0.5}, "q2": {"a": 0.0, "b": 0.0, "c": 2.0}}
    qrels = {"q1": {"d1": 1, "d10": 2}, "q2": {"a": 1}}
    path = tmp_path / "run.trec"
    write_trec_run(run, path)
    rows = [line.split() for line in path.read_text().splitlines()]
    for qid, scores in run.items():
        mine = [row for row in rows if row[0] == qid]
        assert [row[2] for row in mine] == rank(scores) and [int(row[3]) for row in mine] == list(range(1, len(mine) + 1))
    with path.open() as handle:
        theirs = pytrec_eval.RelevanceEvaluator(qrels, {"map", "recip_rank", "ndcg_cut.3"}).evaluate(pytrec_eval.parse_run(handle))
    ours = evaluate_run(read_trec_run(path), qrels, k_values=(3,))
    for mine, key in (("map", "map"), ("mrr", "recip_rank"), ("ndcg@3", "ndcg_cut_3")):
        assert ours[mine] == pytest.approx(sum(v[key] for v in theirs.values()) / len(theirs), abs=1e-6), mine


def test_written_run_keeps_near_tied_scores_apart(tmp_path):
    """Scores 3e-7 apart (float32 cosines of two near-duplicates) once read back tied at 6 decimals, and the tie
    went to the doc id: MRR 0.5 from the file against 1.0 in memory."""
    run = {"q1": {"a": 0.80000040, "b": 0.80000010}, "q2": {"x": float(np.float32(0.1) + np.float32(1e-8)), "y": 0.1,
                                                            "z": 1e-300}}
    qrels = {"q1": {"a": 1}, "q2": {"x": 1}}
    path = tmp_path / "run.trec"
    write_trec_run(run, path)
    back = read_trec_run(path)
    assert back == run and all(rank(back[q]) == rank(run[q]) for q in run)
    assert evaluate_run(back, qrels, (1,)) == evaluate_run(run, qrels, (1,)) and evaluate_run(back, qrels, (1,))["mrr"] == 1.0
    pytrec_eval = needs("pytrec_eval")
    with path.open() as handle:
        theirs = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(pytrec_eval.parse_run(handle))
    assert {q: v["recip_rank"] for q, v in theirs.items()} == {"q1": 1.0, "q2": 1.0}


@PROPERTY
@given(scores=st.dictionaries(st.from_regex(r"d[0-9]{1,2}", fullmatch=True),
                              st.floats(allow_nan=False, allow_infinity=False) | st.floats(0.5, 0.500001),  # near-ties
                              min_size=1, max_size=8))
def test_property_trec_run_round_trip_is_exact(scores):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.trec"
        write_trec_run({"q": scores}, path)
        back = read_trec_run(path)
    assert back == {"q": scores} and rank(back["q"]) == rank(scores)


# --- properties -------------------------------------------------------------------------------------------

# Any unicode (surrogates excluded: not encodable), plus the characters that break naive readers.
_chars = st.characters(codec="utf-8") | st.sampled_from(['"', "\\", "\n", "\r", "\u2028", "\x85", "\ufeff", "\U0001f600"])
_text = st.text(_chars, min_size=1, max_size=20).filter(str.strip)
_record = st.fixed_dictionaries({"query": _text, "positive": st.lists(_text, min_size=1, max_size=3),
                                 "negative": st.lists(_text, max_size=3)})


def _encode(records, layout: str, bom: bool) -> bytes:
    if layout == "json":
        text = json.dumps(records, ensure_ascii=False, indent=1)
    else:
        newline = "\r\n" if layout == "jsonl-crlf" else "\n"
        text = "".join(json.dumps(r, ensure_ascii=False) + newline for r in records)
    return (BOM if bom else b"") + text.encode("utf-8")


@PROPERTY
@given(records=st.lists(_record, min_size=1, max_size=5), layout=st.sampled_from(["jsonl", "jsonl-crlf", "json"]), bom=st.booleans())
def test_property_valid_records_read_back_equal(records, layout, bom):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("d.json" if layout == "json" else "d.jsonl")
        path.write_bytes(_encode(records, layout, bom))
        got = load_records(str(path))
    # a negative that is one of its record's positives is dropped (a false negative), every other text read back as is
    assert [(r.query, r.positives, r.negatives) for r in got] == [
        (r["query"], r["positive"], [n for n in r["negative"] if n not in r["positive"]]) for r in records]


@PROPERTY
@given(records=st.lists(_record, min_size=1, max_size=5), data=st.data())
def test_property_invalid_byte_names_its_line(records, data):
    lines = _encode(records, "jsonl", bom=False).decode("utf-8").split("\n")[:-1]
    k = data.draw(st.integers(1, len(lines)), label="line")
    at = data.draw(st.integers(0, len(lines[k - 1])), label="column")  # a character boundary
    lines = [line.encode("utf-8") for line in lines]
    prefix = lines[k - 1].decode("utf-8")[:at].encode("utf-8")
    lines[k - 1] = prefix + b"\xff" + lines[k - 1][len(prefix):]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        with pytest.raises(DataError) as err:
            load_records(str(path))
    assert f"{path}:{k}: not UTF-8 text (byte 0xff at column {at + 1}" in str(err.value)


@PROPERTY
@given(records=st.lists(_record, min_size=1, max_size=4), bom=st.booleans(), data=st.data())
def test_property_truncated_json_array_is_a_data_error(records, bom, data):
    content = _encode(records, "json", bom)
    cut = data.draw(st.integers(0, len(content) - 1), label="cut")  # cuts bytes: may split a BOM or a character
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.json"
        path.write_bytes(content[:cut])
        with pytest.raises(DataError) as err:  # any other exception type fails the test
            load_records(str(path))
    assert str(path) in str(err.value)


_doc_id = st.from_regex(r"[A-Za-z0-9_.-]{1,6}", fullmatch=True)
_score = st.integers(-4, 4).map(lambda i: i / 4)  # few values: many ties; exact at 6 decimals


@PROPERTY
@given(run=st.dictionaries(st.from_regex(r"q[0-9]{1,2}", fullmatch=True), st.dictionaries(_doc_id, _score, min_size=1, max_size=8),
                           min_size=1, max_size=3))
def test_property_trec_run_round_trip_keeps_rank_order(run):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.trec"
        write_trec_run(run, path)
        rows = [line.split() for line in path.read_text().splitlines()]
        back = read_trec_run(path)
    assert back == run
    for qid, scores in run.items():
        assert [row[2] for row in rows if row[0] == qid] == rank(scores) == rank(back[qid])


# ---------------------------------------------------------------- evaluation files: ids, titles, judgments


@pytest.mark.parametrize("lines, words", [
    (['{"_id": "d1", "title": 5, "text": "x"}'], "field 'title' must be a string"),
    (['{"_id": "d1", "text": "x"}', '{"_id": "d1", "text": "y"}'], "'d1' was already used at"),  # one would be lost
    (['{"_id": null, "text": "x"}'], "field '_id' must be a non-empty string or integer"),
    (['{"_id": "", "text": "x"}'], "non-empty"),
    (['{"_id": {"a": 1}, "text": "x"}'], "non-empty string or integer"),
])
def test_corpus_ids_and_titles_are_checked(tmp_path, lines, words):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=words):
        read_jsonl_texts(path)


@pytest.mark.parametrize("text, words", [
    ("q1 0 d1 0.5\n", "whole number"),  # read as 0 before: not relevant
    ("q1 0 d1 inf\n", "whole number"),
    ("q1 0 d1 1e400\n", "whole number"),
    ("q1 0 d1 1\nq1 0 d1 0\n", r"qrels.txt:2: query 'q1', document 'd1' judged again"),
])
def test_qrels_judgments_are_whole_numbers_given_once(tmp_path, text, words):
    (tmp_path / "qrels.txt").write_text(text)
    with pytest.raises(DataError, match=words):
        read_qrels(tmp_path / "qrels.txt")
    (tmp_path / "same.txt").write_text("q1 0 d1 1\nq1 0 d1 1.0\n")  # the same judgment twice is harmless
    assert read_qrels(tmp_path / "same.txt") == {"q1": {"d1": 1}}


def test_collection_files_go_through_the_shared_reader(tmp_path):
    from retrievals.data.aia_bde import parse_aia_bde
    from retrievals.data.vaswani import load_vaswani

    faq = tmp_path / "faq.txt"
    faq.write_bytes(BOM + "P:Uma pergunta\nR:resposta\nVIN:uma\nP:Outra pergunta\nR:outra\n".encode())
    assert [f.question for f in parse_aia_bde(faq)] == ["Uma pergunta", "Outra pergunta"]  # the BOM hid the first
    faq.write_text("R:only an answer\n")
    with pytest.raises(DataError, match="no FAQ"):
        parse_aia_bde(faq)
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "doc-text.trec").write_bytes(b"<DOC> <DOCNO> 1 </DOCNO> caf\xe9 </DOC>\n")
    (tmp_path / "v" / "query-text.trec").write_text("<top> <num> 1 </num> <title> Q </title> </top>\n")
    (tmp_path / "v" / "qrels").write_text("1 0 1 1\n")
    with pytest.raises(DataError, match=r"doc-text.trec:1: not UTF-8"):
        load_vaswani(tmp_path / "v")


def test_a_folder_where_a_file_is_expected_is_named(tmp_path):
    with pytest.raises(DataError, match="is a folder; expected a file"):
        read_qrels(tmp_path)


def test_encode_text_files_keep_one_row_per_line(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("one\n\nthree\n")
    with pytest.raises(DataError, match=r"texts.txt:2: blank line"):
        read_texts(path, "text")
    path.write_text("one\ntwo")  # no final newline: fine
    assert read_texts(path, "text") == ["one", "two"]
    path.write_text("")
    with pytest.raises(DataError, match="no texts"):
        read_texts(path, "text")


def test_a_lone_surrogate_in_a_record_is_a_data_error_naming_line_and_field(tmp_path):
    # json.loads reads "\ud800" as a str; it passed every check and failed training at the first batch holding it,
    # in the tokenizer, with a TypeError naming neither the file nor the field
    file = tmp_path / "train.jsonl"
    file.write_text('{"query": "q", "positive": "p"}\n{"query": "q2", "positive": ["p", "bad \\udc80 text"]}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: field 'positive'\[1\] has a lone surrogate at character 4"):
        load_records(str(file))
    file.write_text('{"query": "\\ud800", "positive": "p"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:1: field 'query' has a lone surrogate"):
        load_records(str(file))
    file.write_text('{"query": "caf\\u00e9 \\ud83d\\ude00", "positive": "p"}\n')  # a surrogate pair is one character
    assert load_records(str(file))[0].query == "café 😀"


# ---------------------------------------------------------------- break-it review (2026-12-02)


def test_data_suffixes_are_read_in_any_case_and_ndjson_is_json_lines(tmp_path):
    # c.JSONL and c.ndjson were read as plain text by --do_encode: the raw JSON lines were embedded
    for name in ("c.JSONL", "c.ndjson", "c.Jsonl"):
        (tmp_path / name).write_text('{"text": "hello"}\n{"text": "world"}\n', encoding="utf-8")
        assert read_texts(str(tmp_path / name), "text") == ["hello", "world"], name
    (tmp_path / "A.JSON").write_text('[\n {"query": "a", "positive": "p"}\n]\n', encoding="utf-8")
    assert [r.query for r in load_records(str(tmp_path / "A.JSON"))] == ["a"]  # an array, not JSON Lines
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.NDJSON").write_text('{"query": "x", "positive": "p"}\n', encoding="utf-8")
    assert [r.query for r in load_records(str(folder))] == ["x"]


def test_an_empty_data_path_is_refused_not_read_as_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stray.jsonl").write_text('{"query": "stray", "positive": "p"}\n', encoding="utf-8")
    for source in ("", "  ", [""]):
        with pytest.raises(DataError, match="an empty data path"):
            load_records(source)


def test_the_three_keys_must_name_different_fields(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"query": "what", "positive": "ans", "negative": ["n"]}\n', encoding="utf-8")
    for keys in ({"positive_key": "query"}, {"negative_key": "query"}, {"negative_key": "positive"}):
        with pytest.raises(UsageError, match="must name different fields"):
            load_records(str(path), **keys)  # every positive was its own query, or the query its own negative
    assert load_records(str(path), negative_key=None)[0].negatives == []


def test_a_missing_negative_field_is_named_with_the_fields_found(tmp_path):
    path = tmp_path / "typo.jsonl"
    path.write_text('{"query": "q1", "positive": "p1", "negatives": ["n1", "n2"]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"typo.jsonl:1: field 'negative' is missing \(found fields: \['negatives', "
                                        r"'positive', 'query'\]\) but train_group_size needs 1"):
        load_records(str(path), min_negatives=1)
    path.write_text('{"query": "q1", "positive": "p1", "negative": []}\n', encoding="utf-8")
    with pytest.raises(DataError, match="field 'negative' is empty but --eval_data needs them"):
        load_records(str(path), min_negatives=1, needed_for="--eval_data needs them")


def test_fields_not_read_are_named_once(tmp_path, caplog):
    path = tmp_path / "fe.jsonl"
    path.write_text('{"query": "a", "pos": ["p"], "positive": "p", "neg_scores": [0.1]}\n'
                    '{"query": "b", "positive": "p", "neg_scores": [0.2], "prompt": "x"}\n', encoding="utf-8")
    with caplog.at_level("WARNING", logger="retrievals"):
        load_records(str(path))
    warnings = [r.getMessage() for r in caplog.records if "fields not read" in r.getMessage()]
    assert len(warnings) == 1
    assert "'pos' (first at" in warnings[0] and "'neg_scores' (first at" in warnings[0] and "fe.jsonl:2" in warnings[0]
    caplog.clear()
    path.write_text('{"query": "a", "pos": ["p"], "positive": "p"}\n', encoding="utf-8")
    with caplog.at_level("WARNING", logger="retrievals"):
        load_records(str(path), positive_key="pos")
    assert "'positive' (first at" in caplog.text and "'pos' (" not in caplog.text


def test_a_key_repeated_in_one_object_is_named(tmp_path):
    # json keeps the last value: {"query": "a", ..., "query": "b"} trained on "b", silently
    for name, text, where in (("d.jsonl", '{"query": "a", "positive": "p"}\n{"query": "a", "positive": "p", "query": "b"}\n', "d.jsonl:2"),
                              ("d.json", '[{"query": "a", "positive": "p", "positive": "q"}]', "d.json"),
                              ("o.json", '{"query": "a",\n "positive": "p", "positive": "q"}', "o.json")):
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=rf"{where}: field '(query|positive)' appears twice in one object"):
            load_records(str(tmp_path / name))
    (tmp_path / "n.jsonl").write_text('{"query": "a", "positive": "p", "meta": {"x": 1}, "other": {"x": 2}}\n', encoding="utf-8")
    assert load_records(str(tmp_path / "n.jsonl"))[0].query == "a"  # the same key in two objects is fine


def test_a_data_file_named_twice_is_refused(tmp_path):
    # --train_data a.jsonl a.jsonl (or a folder and a file in it) doubled every record silently
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"query": "a", "positive": "p"}\n', encoding="utf-8")
    (folder / "b.jsonl").write_text('{"query": "b", "positive": "p"}\n', encoding="utf-8")
    for source in ([str(folder / "a.jsonl"), str(folder / "a.jsonl")], [str(folder), str(folder / "b.jsonl")]):
        with pytest.raises(DataError, match="read twice"):
            load_records(source)
    assert [r.query for r in load_records([str(folder / "b.jsonl"), str(folder / "a.jsonl")])] == ["b", "a"]
    for bad in (None, 5, b"x.jsonl"):
        with pytest.raises(TypeError, match="data source must be a path"):
            load_records(bad)


def test_trec_run_lines_repeated_or_not_finite_are_named(tmp_path):
    path = tmp_path / "r.trec"
    path.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d1 2 0.1 t\n")
    with pytest.raises(DataError, match=r"r.trec:2: document 'd1' is listed twice for query 'q1'"):
        read_trec_run(path)
    for score in ("nan", "inf", "-inf"):
        path.write_text(f"q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 {score} t\n")
        with pytest.raises(DataError, match=rf"r.trec:2: score '{score}' is not a finite number"):
            read_trec_run(path)


def test_lone_surrogates_in_texts_to_encode_are_named_with_their_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "1", "text": "fine"}\n{"_id": "2", "text": "a\\ud800"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c.jsonl:2: field 'text' has a lone surrogate"):
        read_texts(str(path), "text")
    with pytest.raises(DataError, match=r"c.jsonl:2: field 'text' has a lone surrogate"):
        read_jsonl_texts(path)

"""write_report: a report set is whole (old or new, never mixed), valid JSON, and a table whose rows stay rows."""

import json

import pytest

from retrievals.evaluation.report import write_report

DATASET = {"name": "toy", "queries": 2, "documents": 3, "hash": "abc"}


def row(name, **metrics):
    return {"name": name, "kind": "dense", "path": "/m", "settings": {"pooling": "mean"},
            "metrics": metrics or {"ndcg@10": 0.5, "map": 0.4, "mrr@10": 0.45, "recall@100": 1.0}}


def test_bad_input_leaves_the_earlier_report_whole(tmp_path):
    write_report(tmp_path, DATASET, [row("old")], "first")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad_row = row("new")
    del bad_row["path"]  # report.json was replaced, then the Markdown failed: a new JSON beside the old table
    for dataset, rows, match in ((DATASET, [bad_row], r"rows\[0\] .* lacks \['path'\]"),
                                 (None, [row("new")], "dataset must be a dict"),
                                 (DATASET, [{**row("new"), "metrics": None}], r"rows\[0\]\['metrics'\] must be a dict")):
        with pytest.raises(TypeError, match=match):
            write_report(tmp_path, dataset, rows, "second")
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate fails before the first file is written
        write_report(tmp_path, DATASET, [row("bad \ud800")], "second")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_rows_from_a_generator_fill_the_json_and_the_table(tmp_path):
    write_report(tmp_path, DATASET, (row(n) for n in ("a", "b")), "t")
    assert [r["name"] for r in json.loads((tmp_path / "report.json").read_text())["results"]] == ["a", "b"]
    assert (tmp_path / "report.md").read_text().count("| dense |") == 2


def test_missing_and_nan_metrics_are_null_and_names_stay_in_their_cell(tmp_path):
    rows = [row("a|b\nc", **{"ndcg@10": float("nan"), "map": 0.25}), row("plain")]
    write_report(tmp_path, DATASET, rows, "a title\nwith a newline")
    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text  # not JSON: strict parsers (jq, browsers) refused the file
    metrics = json.loads(text)["results"][0]["metrics"]
    assert metrics == {"ndcg@10": None, "map": 0.25}
    md = (tmp_path / "report.md").read_text().splitlines()
    assert md[0] == "# a title with a newline"
    table = [line for line in md if line.startswith("| a")]
    assert table == ["| a\\|b c | dense | n/a | 0.2500 | n/a | n/a |"]


def test_the_chart_leaves_pyplots_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    previous = matplotlib.get_backend()
    try:
        matplotlib.use("svg")  # a user's choice (a notebook's inline backend, a desktop window)
        path = write_report(tmp_path, DATASET, [row("a"), row("b", map=0.3)], "t")["png"]
        assert matplotlib.get_backend() == "svg"  # it was switched to Agg for the whole process
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(previous)

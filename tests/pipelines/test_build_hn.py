"""build_hn: what it writes back, and settings that could only give a worse training file."""

import json

from retrievals.pipelines import build_hn


def test_other_fields_go_with_their_record_and_fields_about_old_negatives_do_not(tiny_bert, train_file, tmp_path, caplog):
    source = [json.loads(line) for line in open(train_file)]
    data = tmp_path / "with_fields.jsonl"
    data.write_text("".join(json.dumps({**r, "id": f"r{i}", "prompt": "p", "neg_scores": [0.1]}) + "\n"
                            for i, r in enumerate(source)))
    out = tmp_path / "hn.jsonl"
    with caplog.at_level("WARNING"):
        assert build_hn.main(["--model_name_or_path", tiny_bert, "--input_file", str(data), "--output_file", str(out),
                              "--range_for_sampling", "0-30", "--negative_number", "3", "--false_negative_ratio", "10"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"r{i}" for i in range(len(source))] and all(r["prompt"] == "p" for r in records)
    assert not any("neg_scores" in r for r in records) and "['neg_scores'] describe the input's negatives" in caplog.text
    assert "fields not read" not in caplog.text


def test_settings_no_record_could_meet_are_refused_before_encoding(tiny_bert, train_file, tmp_path, monkeypatch, capsys):
    from retrievals import AutoModelForEmbedding

    monkeypatch.setattr(AutoModelForEmbedding, "encode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoded")))
    base = ["--model_name_or_path", tiny_bert, "--input_file", train_file, "--output_file", str(tmp_path / "hn.jsonl")]
    assert build_hn.main([*base, "--negative_number", "2", "--min_negatives", "5"]) == 2
    assert "--min_negatives 5 is more than --negative_number 2" in capsys.readouterr().err
    assert build_hn.main([*base, "--range_for_sampling", "1000-2000"]) == 2
    assert "starts at rank 1000, past the candidate pool's" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(open(train_file).read())
    assert build_hn.main([*base, "--output_file", str(tmp_path / "data" / "hn.jsonl"), "--input_file",
                          str(tmp_path / "data")]) == 2  # a new file in the input folder is read as data next time
    assert "is in the --input_file" in capsys.readouterr().err
    assert not (tmp_path / "hn.jsonl").exists()


def test_a_query_never_gets_its_own_text_or_positive_as_a_negative(tiny_bert, tmp_path):
    # the pool's JSONL titles were dropped (the mined negatives were not the documents the model retrieves, and a
    # titled positive was not recognised as the query's own), a .txt pool's stripped line did not match a positive
    # with a trailing space, and the query's own text (another record's positive in pair data) could be mined
    from ..conftest import corpus_lines

    lines = corpus_lines(30)
    records = [{"query": lines[i], "positive": [lines[i + 10] + " "]} for i in range(5)]
    records += [{"query": lines[i + 20], "positive": [lines[i]]} for i in range(5)]  # queries 0-4 are positives here
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"title": "T", "text": t}) + "\n" for t in lines[:5])
                    + "".join(json.dumps({"text": t}) + "\n" for t in lines[5:]))
    txt_pool = tmp_path / "pool.txt"
    txt_pool.write_text("".join(t + "\n" for t in lines))
    for source in (pool, txt_pool):
        out = tmp_path / f"hn-{source.suffix[1:]}.jsonl"
        assert build_hn.main(["--model_name_or_path", tiny_bert, "--input_file", str(data), "--output_file", str(out),
                              "--candidate_pool", str(source), "--range_for_sampling", "0-30", "--negative_number", "29",
                              "--false_negative_ratio", "10"]) == 0
        mined = [json.loads(line) for line in out.read_text().splitlines()]
        for record in mined:
            own = {record["query"].strip(), *(p.strip() for p in record["positive"])}
            assert not own & {n.strip() for n in record["negative"]}, record["query"]
        if source == pool:  # titled pool entries come back as the documents the model retrieves
            assert any(n.startswith("T ") for r in mined for n in r["negative"])

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

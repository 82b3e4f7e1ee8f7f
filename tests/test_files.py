"""files: what may be written where (check_new_output, atomic writes) when the path is not a plain new file."""

import os

import pytest

from retrievals.files import OutputExistsError, atomic_write_text, check_new_output


def test_a_device_or_pipe_is_never_replaced_by_a_file(tmp_path):
    # --output /dev/null --overwrite replaced the device with a regular file (the write renames a file into place)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(OutputExistsError, match="not a regular file"):
        check_new_output(pipe, overwrite=True)
    with pytest.raises(OutputExistsError, match="not a regular file"):
        atomic_write_text(pipe, "run")
    assert not pipe.is_file() and pipe.exists()


def test_a_link_is_written_through_and_kept(tmp_path):
    target, link = tmp_path / "target.trec", tmp_path / "link.trec"
    target.write_text("old")
    link.symlink_to(target)
    check_new_output(link, overwrite=True)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_new_output_inside_a_folder_the_run_uses_is_refused(tmp_path):
    # checked only when the output existed: a new run file in the --input_file folder doubled every query next time,
    # and one in --index_dir replaced the index's ids.json
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    for path in (data / "hn.jsonl", data / "sub" / "hn.jsonl", tmp_path / "index" / "dense" / "ids.json"):
        with pytest.raises(OutputExistsError, match=r"is in the --(input_file|index_dir)"):
            check_new_output(path, overwrite=True, inputs={"--input_file": str(data), "--index_dir": str(tmp_path / "index")})
    assert check_new_output(tmp_path / "hn.jsonl", overwrite=False, inputs={"--input_file": str(data)}) == tmp_path / "hn.jsonl"


def test_a_users_file_inside_a_folder_a_save_replaces_is_kept(tmp_path):
    # a save replaced or removed its own folders whole: a user's file put inside one (sentence-transformers writes
    # its quantised onnx/model_qint8_avx512.onnx into onnx/) was deleted, while one at the top level was kept
    from retrievals.files import atomic_directory

    target = tmp_path / "model"
    with atomic_directory(target, "model") as scratch:
        (scratch / "onnx").mkdir()
        (scratch / "onnx" / "model.onnx").write_bytes(b"graph 1")
        (scratch / "1_Pooling").mkdir()
        (scratch / "1_Pooling" / "config.json").write_text("{}")
    (target / "onnx" / "model_qint8_avx512.onnx").write_bytes(b"the user's")
    for keeps_onnx in (True, False):  # a save that replaces onnx/, and one that removes it
        with pytest.raises(OutputExistsError, match=r"onnx/model_qint8_avx512\.onnx, which this library did not write"):
            with atomic_directory(target, "model") as scratch:
                if keeps_onnx:
                    (scratch / "onnx").mkdir()
                    (scratch / "onnx" / "model.onnx").write_bytes(b"graph 2")
        assert (target / "onnx" / "model_qint8_avx512.onnx").read_bytes() == b"the user's"
        assert (target / "onnx" / "model.onnx").read_bytes() == b"graph 1"
        assert not [p for p in target.iterdir() if p.name.startswith(".tmp")]  # the refused save's scratch is gone
    (target / "onnx" / "model_qint8_avx512.onnx").unlink()
    with atomic_directory(target, "model") as scratch:  # our own files alone: replaced as before
        (scratch / "onnx").mkdir()
        (scratch / "onnx" / "model.onnx").write_bytes(b"graph 2")
    assert (target / "onnx" / "model.onnx").read_bytes() == b"graph 2" and not (target / "1_Pooling").exists()


def test_a_home_relative_save_goes_where_loading_looks(tiny_bert, tmp_path, monkeypatch):
    # save_pretrained("~/m") wrote ./~/m (a folder named "~", an rm -rf ~ trap), from_pretrained("~/m") read $HOME/m
    from retrievals import AutoModelForEmbedding

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    model = AutoModelForEmbedding.from_pretrained(tiny_bert)
    model.save_pretrained("~/m")
    assert (tmp_path / "home" / "m" / "config.json").is_file() and not (tmp_path / "~").exists()
    assert AutoModelForEmbedding.from_pretrained("~/m").encode("tax").shape == model.encode("tax").shape


def _victims(tmp_path):
    """A user's folder and file beside the saved folder, which no record inside it may reach."""
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("years of work")
    (tmp_path / "notes.txt").write_text("keep me")
    return lambda: (tmp_path / "thesis" / "chapter1.tex").is_file() and (tmp_path / "notes.txt").is_file()


@pytest.mark.parametrize("journal", [
    {"scratch": ".", "move": [], "remove": ["{abs}"]},
    {"scratch": ".", "move": [], "remove": ["../notes.txt"]},
    {"scratch": ".tmp-save-x", "move": [], "remove": ["../thesis"]},
    {"scratch": ".tmp-save-x", "move": ["sub/../../notes.txt"], "remove": []},
    {"scratch": "../thesis", "move": ["chapter1.tex"], "remove": []},
    {"scratch": ".tmp-save-link", "move": ["chapter1.tex"], "remove": []},
    {"scratch": ".tmp-save-x", "move": "abc", "remove": []},
    "not json {",
])
def test_a_save_journal_never_reaches_outside_its_folder(tmp_path, journal):
    # a copied or downloaded index (or model) folder carrying a crafted journal: its first load ran the journal and
    # deleted the user's files beside it (an absolute path, "../", scratch "."), or moved them in (scratch a link)
    import json

    import numpy as np

    from retrievals.files import JOURNAL_NAME, CorruptFileError
    from retrievals.index import ExactIndex, Index

    intact = _victims(tmp_path)
    shared = tmp_path / "downloads" / "index"
    ExactIndex(np.eye(3, dtype=np.float32), ["a", "b", "c"]).save(shared)
    (shared / ".tmp-save-x").mkdir()
    (shared / ".tmp-save-link").symlink_to(tmp_path / "thesis")
    text = journal if isinstance(journal, str) else json.dumps(journal).replace("{abs}", str(tmp_path / "thesis"))
    (shared / JOURNAL_NAME).write_text(text)
    with pytest.raises(CorruptFileError, match=JOURNAL_NAME):
        Index.load(shared)
    assert intact()
    (shared / JOURNAL_NAME).unlink()  # what the message says to do: the folder is then the complete earlier save
    assert len(Index.load(shared)) == 3 and intact()


@pytest.mark.parametrize("field, name", [("entries", "{abs}"), ("entries", "../notes.txt"), ("entries", ".."),
                                         ("files", "../notes.txt"), ("files", "a/../../notes.txt")])
def test_a_save_record_never_reaches_outside_its_folder(tmp_path, field, name):
    # the previous save's retrievals_files.json names what the next save removes as stale (and a load checks)
    import json

    import numpy as np

    from retrievals.files import FILES_NAME, CorruptFileError
    from retrievals.index import ExactIndex, Index

    intact = _victims(tmp_path)
    target = tmp_path / "out" / "index"
    ExactIndex(np.eye(2, dtype=np.float32), ["x", "y"]).save(target)
    record = json.loads((target / FILES_NAME).read_text())
    name = name.replace("{abs}", str(tmp_path / "notes.txt"))
    if field == "files":
        record["files"][name] = {"size": 7, "sha256": "0" * 64}
    else:
        record["entries"].append(name)
    (target / FILES_NAME).write_text(json.dumps(record))
    with pytest.raises(CorruptFileError, match=FILES_NAME):
        ExactIndex(np.eye(2, dtype=np.float32), ["x", "y"]).save(target)
    if field == "files":  # a load checks every listed file (the entries are only what a save replaces)
        with pytest.raises(CorruptFileError, match=FILES_NAME):
            Index.load(target)
    assert intact()

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

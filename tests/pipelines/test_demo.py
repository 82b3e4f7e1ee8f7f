"""The README's main job (``retrievals.pipelines.demo``) end to end on the real AIA-BDE data, with the tiny model so
it takes seconds: data split, zero-shot evaluation, mined negatives, training, reload, results, rerun rules."""

import json

import pytest

from retrievals.pipelines import demo

from ..conftest import asset

pytestmark = pytest.mark.slow


def test_demo_runs_and_respects_its_output_folder(tiny_bert, tmp_path, capsys):
    data = asset("aia-bde")
    out = tmp_path / "demo"
    argv = ["--model_name_or_path", tiny_bert, "--data_file", data, "--output_dir", str(out), "--num_train_epochs", "0.2",
            "--per_device_train_batch_size", "16", "--query_max_length", "16", "--document_max_length", "32"]
    assert demo.main(argv + ["--mask_duplicate_positives"]) == 0  # FAQ data: queries share positives in a batch
    results = json.loads((out / "results.json").read_text())
    assert set(results["before"]) == set(results["after"]) and "ndcg@10" in results["after"]
    assert results["settings"]["train_queries"] > 1000 and results["settings"]["test_queries"] > 500
    manifest = json.loads((out / "retrievals_run.json").read_text())
    assert manifest["status"] == "finished" and "results.json" in manifest["written"]
    assert manifest["fingerprint"]["mask_duplicate_positives"] is True
    assert not (out / "data").exists()  # the training file went to a scratch folder
    assert "AIA-BDE held-out FAQs" in capsys.readouterr().out
    (out / "NOTES.md").write_text("mine\n")
    assert demo.main(argv + ["--overwrite_output_dir"]) == 0  # README's command reruns over its own output
    assert (out / "NOTES.md").read_text() == "mine\n"


def test_demo_llm_recipe_keeps_its_pooling(tiny_qwen, tmp_path):
    """The LLM embedder recipe (LoRA, mean pooling, in-batch negatives) trains, and the saved model pools as trained."""
    from retrievals import AutoModelForEmbedding

    out = tmp_path / "llm"
    argv = ["--model_name_or_path", tiny_qwen, "--data_file", asset("aia-bde"), "--output_dir", str(out),
            "--num_train_epochs", "0.1", "--per_device_train_batch_size", "16", "--query_max_length", "16",
            "--document_max_length", "32", "--use_lora", "--pooling_method", "mean", "--hard_negatives", "0"]
    assert demo.main(argv) == 0
    assert json.loads((out / "results.json").read_text())["settings"]["pooling"] == "mean"
    config = AutoModelForEmbedding.from_pretrained(str(out)).retrieval_config
    assert config.pooling_method == "mean" and not config.append_eos and config.lora_base


def test_demo_with_a_teacher_and_its_refusals(tiny_bert, tiny_qwen, tmp_path, capsys):
    """``--teacher_model`` reaches the training run (recorded in its fingerprint); a teacher that is not there fails
    in one line before the zero-shot evaluation starts."""
    data = asset("aia-bde")
    base = ["--model_name_or_path", tiny_bert, "--data_file", data, "--num_train_epochs", "0.05",
            "--per_device_train_batch_size", "16", "--query_max_length", "16", "--document_max_length", "32"]
    assert demo.main(base + ["--output_dir", str(tmp_path / "missing"), "--teacher_model", str(tmp_path / "nowhere")]) == 2
    assert "no such teacher model folder" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()
    out = tmp_path / "taught"
    assert demo.main(base + ["--output_dir", str(out), "--teacher_model", tiny_qwen, "--teacher_temperature", "0.02"]) == 0
    record = json.loads((out / "retrievals_fingerprint.json").read_text())
    assert record["loss"]["name"] == "teacher_distill" and record["loss"]["teacher_temperature"] == 0.02
    assert json.loads((out / "results.json").read_text())["settings"]["teacher_model"] == tiny_qwen


class Stop(Exception):
    pass


def test_demo_checks_every_flag_and_its_output_folder_before_any_work(tiny_bert, tmp_path, capsys, monkeypatch):
    # the training flags and the output folder were checked only after the zero-shot evaluation and the mining
    # (minutes on this CPU, far more for an LLM); --test_fraction was not checked at all (-0.3 swapped the sides, 0
    # crashed with a traceback)
    calls = []
    monkeypatch.setattr(demo, "evaluate_embedder", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(Stop()))
    base = ["--model_name_or_path", tiny_bert, "--data_file", asset("aia-bde"), "--output_dir", str(tmp_path / "out")]
    for flags, named in [(("--temperature", "0"), "--temperature must be a finite number > 0"),
                         (("--learning_rate", "0"), "--learning_rate must be > 0"),
                         (("--per_device_train_batch_size", "0"), "--per_device_train_batch_size must be >= 1"),
                         (("--train_group_size", "0"), "--train_group_size must be >= 1"),
                         (("--test_fraction", "0"), "test_fraction must be a number in (0, 1), got 0.0"),
                         (("--test_fraction", "-0.3"), "test_fraction must be a number in (0, 1), got -0.3"),
                         (("--test_fraction", "1.5"), "test_fraction must be a number in (0, 1)"),
                         (("--test_fraction", "nan"), "test_fraction must be a number in (0, 1), got nan"),
                         (("--test_fraction", "0.0001"), "holds out 0: each side needs at least one FAQ")]:
        assert demo.main(base + list(flags)) == 2, flags
        assert named in capsys.readouterr().err
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "retrievals_run.json").write_text(json.dumps({"status": "finished", "written": [], "this_run": []}))
    assert demo.main(base[:-1] + [str(finished)]) == 2
    assert "already holds a finished model" in capsys.readouterr().err
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "config.json").write_text("{}")
    assert demo.main(base[:-1] + [str(tmp_path / "theirs")]) == 2
    assert "holds no run of ours" in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "out").exists()


def test_demo_zero_shot_model_gets_the_instructions_the_trained_one_gets(tiny_bert, tmp_path, monkeypatch):
    # a typed "\n" became a newline for the trained model only: the zero-shot row and the mined negatives came from
    # another model than the one trained
    seen = []

    def spy(model, *args, **kwargs):
        seen.append((model.retrieval_config.query_instruction, model.retrieval_config.document_instruction))
        raise Stop()

    monkeypatch.setattr(demo, "evaluate_embedder", spy)
    with pytest.raises(Stop):
        demo.main(["--model_name_or_path", tiny_bert, "--data_file", asset("aia-bde"), "--output_dir",
                   str(tmp_path / "out"), "--query_instruction", "Instruct: find the FAQ\\nQuery: ",
                   "--document_instruction", "FAQ:\\t"])
    assert seen == [("Instruct: find the FAQ\nQuery: ", "FAQ:\t")]

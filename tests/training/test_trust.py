"""Issue 11's trust classes, one test (or a few) per class, on tiny models in the quick loop:
output folders, folder-level atomic saves, resume fingerprints and caches, useless runs and numeric
flags, model paths and weights checksums."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from retrievals import AutoModelForEmbedding
from retrievals.files import FILES_NAME, JOURNAL_NAME, SCRATCH_PREFIX
from retrievals.pipelines import build_hn, embed, evaluate, retrieve
from retrievals.training.output_dir import MANIFEST_NAME
from retrievals.utils import UsageError

from ..conftest import corpus_lines
from ..training.test_training import Killed, cli, kill_at_step

TEXTS = corpus_lines(5)


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (to prove a user's files stay byte-identical)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("my notes\n")
    (folder / "notes").mkdir()
    (folder / "notes" / "plan.txt").write_text("keep me\n")


# ---------------------------------------------------------------- 1. output folders are ours only where we wrote


def test_foreign_folder_refused_without_overwrite(tiny_bert, train_file, tmp_path, capsys):
    out = tmp_path / "out"
    user_files(out)
    before = snapshot(out)
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1")) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no run of ours (README.md, notes)" in err
    assert snapshot(out) == before


def test_overwrite_writes_beside_user_files_and_never_touches_them(tiny_bert, train_file, tmp_path, caplog):
    out = tmp_path / "out"
    user_files(out)
    before = snapshot(out)
    flags = ("--max_steps", "2", "--overwrite_output_dir", "--save_strategy", "steps", "--save_steps", "1")
    assert embed.main(cli(tiny_bert, train_file, out, *flags)) == 0
    assert "which stay untouched: README.md, notes" in caplog.text
    assert (out / "checkpoint-2").is_dir()
    # a second run replaces what the first wrote (its checkpoints go), the user's files stay byte-identical
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", "--overwrite_output_dir")) == 0
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not (out / "checkpoint-1").exists() and not (out / "checkpoint-2").exists()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["status"] == "finished" and "README.md" not in manifest["written"]
    assert "model.safetensors" in manifest["written"]
    AutoModelForEmbedding.from_pretrained(str(out))


def test_overwrite_refuses_a_foreign_model_it_would_replace(tiny_bert, train_file, tmp_path, capsys):
    out = tmp_path / "theirs"
    shutil.copytree(tiny_bert, out)  # someone else's model, no manifest of ours
    before = snapshot(out)
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", "--overwrite_output_dir")) == 2
    assert "never rewrites files it did not write" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_lora_run_leaves_a_users_readme_alone(tiny_bert, train_file, tmp_path):
    # peft writes a model card (README.md) beside every adapter: it replaced the user's notes
    out = tmp_path / "out"
    user_files(out)
    before = snapshot(out)
    lora = ("--use_lora", "true", "--lora_target_modules", "query", "value")
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", "--overwrite_output_dir", *lora)) == 0
    assert {k: v for k, v in snapshot(out).items() if k in before} == before
    assert "README.md" not in json.loads((out / MANIFEST_NAME).read_text())["written"]
    AutoModelForEmbedding.from_pretrained(str(out))


@pytest.mark.parametrize("name", ["training_curve.png", "2_Dense", "query_weights.safetensors", "onnx"])
def test_names_a_run_may_write_are_refused_in_a_foreign_folder(tiny_bert, train_file, tmp_path, capsys, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("mine\n")
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", "--overwrite_output_dir")) == 2
    assert "never rewrites files it did not write" in capsys.readouterr().err
    assert (out / name).read_text() == "mine\n"


def test_a_file_added_to_our_folder_is_not_overwritten_by_a_rerun(tiny_bert, train_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1")) == 0
    (out / "onnx").mkdir()  # added by hand after the run: a name a save with backend="onnx" writes
    (out / "onnx" / "model.onnx").write_text("mine\n")
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", "--overwrite_output_dir")) == 2
    assert "holds onnx, which a run would overwrite" in capsys.readouterr().err
    assert (out / "onnx" / "model.onnx").read_text() == "mine\n"
    # a folder saved before empty folders were listed: its 2_Normalize is unlisted but empty, nothing to lose
    shutil.rmtree(out / "onnx")
    files = json.loads((out / FILES_NAME).read_text())
    files.pop("entries")
    (out / FILES_NAME).write_text(json.dumps(files))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["written"] = [n for n in manifest["written"] if n != "2_Normalize"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", "--overwrite_output_dir")) == 0


def test_other_outputs_are_never_replaced_unasked(tiny_bert, train_file, tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "enc"
    out.mkdir()
    (out / "embeddings.npy").write_bytes(b"mine")
    assert embed.main(["--model_name_or_path", tiny_bert, "--output_dir", str(out), "--do_encode", "--encode_data", str(data)]) == 2
    assert "embeddings.npy exists; pass --overwrite_output_dir" in capsys.readouterr().err
    assert (out / "embeddings.npy").read_bytes() == b"mine"
    hn = tmp_path / "hn.jsonl"
    hn.write_text("mine\n")
    assert build_hn.main(["--model_name_or_path", tiny_bert, "--input_file", train_file, "--output_file", str(hn)]) == 2
    assert hn.read_text() == "mine\n"
    assert build_hn.main(["--model_name_or_path", tiny_bert, "--input_file", train_file, "--output_file", train_file,
                          "--overwrite"]) == 2
    assert "is the --input_file" in capsys.readouterr().err
    run = tmp_path / "run.trec"
    run.write_text("mine\n")
    assert retrieve.main(["--output", str(run), "--corpus", "x.jsonl", "--queries", "y.jsonl"]) == 2
    assert run.read_text() == "mine\n"
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("mine\n")
    assert evaluate.main(["--dataset", "aia-bde", "--output_dir", str(report), "--models", f"m={tiny_bert}"]) == 2
    assert (report / "report.md").read_text() == "mine\n"


# ---------------------------------------------------------------- 2. saves are atomic at the folder level


class FaultInjector:
    """Counts the file operations of a save and fails the n-th and every later one, as a kill would:
    after the fault nothing of the process runs (cleanup code included)."""

    OPS = [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "remove"), (os, "mkdir"), (os, "rmdir"),
           (shutil, "rmtree"), (shutil, "move")]

    def __init__(self, monkeypatch, fail_at: int) -> None:
        self.count, self.fail_at = 0, fail_at
        for module, name in self.OPS:
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name)))
        monkeypatch.setattr(torch, "save", self._wrap(torch.save))

    def _wrap(self, fn):
        def op(*args, **kwargs):
            self.count += 1
            if self.count >= self.fail_at:
                raise Killed(f"killed at file operation {self.count}")
            return fn(*args, **kwargs)
        return op


@pytest.mark.parametrize("kind", ["embedder", "colbert"])
def test_save_killed_at_every_file_operation_leaves_old_or_new(kind, tiny_bert, tmp_path, monkeypatch):
    from retrievals import AutoModelForRanking

    def load(path):
        if kind == "embedder":
            return AutoModelForEmbedding.from_pretrained(str(path))
        return AutoModelForRanking.from_pretrained(str(path), model_type="colbert")

    def output(model):
        if kind == "embedder":
            return model.encode(TEXTS)
        return np.array(model.compute_score([(t, u) for t in TEXTS[:2] for u in TEXTS]))

    old = load(tiny_bert)
    new = load(tiny_bert)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if kind == "embedder":
        new.retrieval_config.pooling_method = "mean"  # config changes too: a mix would be detected
    old_out, new_out = output(old), output(new)
    outcomes, n = [], 1
    while True:
        folder = tmp_path / f"m{n}"
        old.save_pretrained(folder)
        (folder / "README.md").write_text("user file\n")
        with monkeypatch.context() as patch:
            injector = FaultInjector(patch, n)
            try:
                new.save_pretrained(folder)
                finished = True
            except Killed:
                finished = False
        got = output(load(folder))
        if np.allclose(got, old_out, atol=1e-6):
            outcomes.append("old")
        else:
            np.testing.assert_allclose(got, new_out, atol=1e-6)
            outcomes.append("new")
        assert (folder / "README.md").read_text() == "user file\n"
        assert not any(e.name.startswith(SCRATCH_PREFIX) for e in folder.iterdir()) and not (folder / JOURNAL_NAME).exists()
        if finished:
            break
        n += 1
    assert injector.count >= 3 and outcomes[0] == "old" and outcomes[-1] == "new", outcomes


def test_corrupted_weights_are_named_at_load(tiny_bert, tmp_path, capsys):
    model = AutoModelForEmbedding.from_pretrained(tiny_bert)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # a zeroed tail: same size, safetensors' header still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(OSError, match="model.safetensors: checksum does not match"):
        AutoModelForEmbedding.from_pretrained(str(folder))
    weights.write_bytes(bytes(data[:-100]))
    with pytest.raises(OSError, match="model.safetensors: .* bytes, but .* were saved"):
        AutoModelForEmbedding.from_pretrained(str(folder))
    assert embed.main(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "o"), "--do_encode",
                       "--encode_data", str(folder / "README.md")]) == 2
    assert "model.safetensors" in capsys.readouterr().err


# ---------------------------------------------------------------- 3. resume only the same run; caches keyed by weights


def test_rerun_with_other_settings_is_refused_before_loading(tiny_bert, train_file, tmp_path, monkeypatch, capsys):
    args = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--seed", "7")
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        kill_at_step(patch, 3)
        with pytest.raises(Killed):
            embed.main(cli(tiny_bert, train_file, out, *args))
    other_data = tmp_path / "other.jsonl"
    other_data.write_text(Path(train_file).read_text().replace("tax", "fee"))
    loads = []
    monkeypatch.setattr(AutoModelForEmbedding, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a)))
    assert embed.main(cli(tiny_bert, train_file, out, *args, "--learning_rate", "5e-4")) == 2
    err = capsys.readouterr().err
    assert "learning_rate 0.001 -> 0.0005" in err and "--resume false" in err
    assert embed.main(cli(tiny_bert, str(other_data), out, *args)) == 2
    assert "train_data (content changed)" in capsys.readouterr().err
    assert embed.main(cli(tiny_bert, train_file, out, *args, "--temperature", "0.05", "--overwrite_output_dir")) == 2
    assert "temperature" in capsys.readouterr().err
    assert loads == []  # refused before any weights were loaded
    monkeypatch.undo()
    # --resume false starts over and retires the old checkpoints: a later plain rerun cannot resume them
    with monkeypatch.context() as patch:
        kill_at_step(patch, 1)
        with pytest.raises(Killed):
            embed.main(cli(tiny_bert, train_file, out, *args, "--learning_rate", "5e-4", "--resume", "false"))
    assert not (out / "checkpoint-2").exists()
    assert embed.main(cli(tiny_bert, train_file, out, *args)) == 0  # the original settings start afresh
    assert (out / "model.safetensors").is_file()


def test_a_named_checkpoint_is_resumed_only_as_the_folders_own_would_be(tiny_bert, train_file, tmp_path, monkeypatch,
                                                                        capsys):
    # --resume false --resume_from_checkpoint OUT/checkpoint-2 deleted the named checkpoint (retired with the
    # folder's), then failed on it; a checkpoint trained with other settings was resumed under the new ones
    args = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--seed", "7")
    out, checkpoint = tmp_path / "out", tmp_path / "out" / "checkpoint-2"
    with monkeypatch.context() as patch:
        kill_at_step(patch, 3)
        with pytest.raises(Killed):
            embed.main(cli(tiny_bert, train_file, out, *args))
    named = ("--resume_from_checkpoint", str(checkpoint))
    assert embed.main(cli(tiny_bert, train_file, out, *args, "--resume", "false", *named)) == 2
    assert "pass one of them" in capsys.readouterr().err and checkpoint.is_dir()
    elsewhere = tmp_path / "elsewhere"
    assert embed.main(cli(tiny_bert, train_file, elsewhere, *args, "--learning_rate", "5e-4", *named)) == 2
    assert "trained with other settings: learning_rate 0.001 -> 0.0005" in capsys.readouterr().err
    assert embed.main(cli(tiny_bert, train_file, elsewhere, *args, "--resume_from_checkpoint", str(tmp_path))) == 2
    assert "not a complete checkpoint" in capsys.readouterr().err
    assert embed.main(cli(tiny_bert, train_file, elsewhere, *args, *named)) == 0  # the same settings: resumed
    assert (elsewhere / "model.safetensors").is_file() and checkpoint.is_dir()
    assert embed.main(cli(tiny_bert, train_file, out, *args)) == 0  # the folder's own run, resumed and finished
    assert embed.main(cli(tiny_bert, train_file, out, *args, "--overwrite_output_dir", *named)) == 2
    assert "copy it out of the folder" in capsys.readouterr().err


def test_embedding_cache_never_serves_another_models_vectors(tiny_bert, tmp_path):
    from retrievals.index.sharded import encode_sharded

    texts = corpus_lines(9)
    a = AutoModelForEmbedding.from_pretrained(tiny_bert)
    b = AutoModelForEmbedding.from_pretrained(tiny_bert)
    with torch.no_grad():
        next(b.parameters()).add_(0.5 * torch.randn_like(next(b.parameters())))  # same path and config, other weights
    cache = tmp_path / "cache"
    va = encode_sharded(a, texts, cache, shard_size=4)
    vb = encode_sharded(b, texts, cache, shard_size=4)
    np.testing.assert_allclose(va, a.encode(texts), atol=1e-6)
    np.testing.assert_allclose(vb, b.encode(texts), atol=1e-6)
    assert not np.allclose(va, vb)
    # same model again: served from the cache (shards are not rewritten)
    shard = next(cache.rglob("shard-00000.npy"))
    stamp = shard.stat().st_mtime_ns
    np.testing.assert_allclose(encode_sharded(a, texts, cache, shard_size=4), va)
    assert {p.stat().st_mtime_ns for p in cache.rglob("shard-00000.npy") if p == shard} == {stamp}


# ---------------------------------------------------------------- 4. no silently useless model; numbers checked at parse


def test_zero_step_runs_fail_before_loading(tiny_bert, train_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = cli(tiny_bert, train_file, out, "--per_device_train_batch_size", "64", "--dataloader_drop_last", "True")
    assert embed.main(args) == 2
    assert "make no full batch of 64" in capsys.readouterr().err
    assert not out.exists()
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "0")) == 2
    assert "--max_steps must be >= 1" in capsys.readouterr().err


def test_nan_weights_fail_loudly_and_keep_the_good_model(tiny_bert, train_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1")) == 0
    good = snapshot(out)
    from transformers import Trainer

    step = Trainer.training_step

    def poison(self, model, *args, **kwargs):
        loss = step(self, model, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(Trainer, "training_step", poison)
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "2", "--overwrite_output_dir")) == 2
    assert "became nan/inf during training, so the model was not saved" in capsys.readouterr().err
    after = snapshot(out)
    assert {k: after[k] for k in good if k not in {MANIFEST_NAME}} == {k: v for k, v in good.items() if k != MANIFEST_NAME}
    assert "training_curve.png" in good  # the kept model's curve is kept with it


@pytest.mark.parametrize("flags, named", [
    (("--query_max_length", "0"), "--query_max_length must be >= 1"),
    (("--max_length", "-3"), "--max_length must be >= 1"),
    (("--per_device_train_batch_size", "0"), "--per_device_train_batch_size must be >= 1"),
    (("--train_group_size", "0"), "--train_group_size must be >= 1"),
    (("--temperature", "0"), "--temperature must be a finite number > 0, got 0.0"),
    (("--temperature", "inf"), "--temperature must be a finite number > 0, got inf"),  # it learned nothing and exited 0
    (("--use_inbatch_neg", "false", "--negatives_cross_device", "true"),
     "--negatives_cross_device shares in-batch negatives"),  # it was ignored
    (("--eval_data", "EVAL"), "--eval_data is scored only with --eval_strategy"),  # it was read, then never scored
    (("--dataloader_num_workers", "1", "--dataloader_persistent_workers", "true"),
     "--dataloader_persistent_workers is not supported"),  # every epoch sampled epoch 0's negatives
    (("--margin", "-1", "--loss_fn", "triplet"), "--margin must be a finite number >= 0, got -1.0"),
    (("--margin", "0.5"), "--margin does not apply to --loss_fn infonce"),
    (("--loss_fn", "triplet", "--temperature", "0.1"), "--temperature does not apply to --loss_fn triplet"),
    (("--loss_fn", "triplet", "--temperature", "0.02"), "--temperature does not apply to --loss_fn triplet"),  # the
    # default's value was taken for "not given"
    (("--use_lora", "True", "--lora_r", "0"), "--lora_r must be >= 1"),
    (("--lora_dropout", "1.5"), "--lora_dropout must be in [0, 1)"),
    (("--learning_rate", "0"), "--learning_rate must be > 0"),
    (("--num_train_epochs", "0"), "--num_train_epochs must be > 0"),
    # transformers' own numbers: inf epochs overflowed after the model loaded; a nan rate, decay or clip norm trained
    # the whole run into nan weights; a negative decay grew the weights; numpy refused the seed after the folder was set
    (("--num_train_epochs", "inf"), "--num_train_epochs must be a finite number > 0, got inf"),
    (("--learning_rate", "inf"), "--learning_rate must be a finite number > 0, got inf"),
    (("--warmup_steps", "inf"), "--warmup_steps must be a finite number >= 0, got inf"),
    (("--weight_decay", "nan"), "--weight_decay must be a finite number >= 0, got nan"),
    (("--weight_decay", "-1"), "--weight_decay must be a finite number >= 0, got -1.0"),
    (("--max_grad_norm", "nan"), "--max_grad_norm must be a finite number >= 0, got nan"),
    (("--adam_epsilon", "nan"), "--adam_epsilon must be a finite number > 0, got nan"),
    (("--adam_beta1", "2"), "--adam_beta1 must be in [0, 1), got 2.0"),
    (("--seed", "-1"), "--seed must be in [0, 2**32), got -1"),
    (("--seed", "4294967296"), "--seed must be in [0, 2**32), got 4294967296"),
    (("--trian_data", "x"), "--trian_data: did you mean --train_data?"),  # was transformers' ValueError traceback
    (("--logging_steps", "0"), "requires non-zero --logging_steps"),  # transformers' own check: one line, exit 2
])
def test_numeric_flags_checked_before_loading(flags, named, tiny_bert, train_file, tmp_path, capsys):
    out = tmp_path / "out"
    flags = [train_file if f == "EVAL" else f for f in flags]
    assert embed.main(cli(tiny_bert, train_file, out, *flags)) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_a_mistyped_model_path_fails_before_the_output_folder_is_touched(tiny_bert, train_file, tmp_path, capsys):
    # --overwrite_output_dir with a wrong --model_name_or_path retired the finished run's checkpoints and marked it
    # running before the path was checked, so no training happened and the next run needed no --overwrite_output_dir
    out = tmp_path / "out"
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1")) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert any(name.startswith("checkpoint-") for name in before)
    assert embed.main(cli(str(tmp_path / "nomodl"), train_file, out, "--overwrite_output_dir")) == 2
    assert "nomodl: no such model folder" in capsys.readouterr().err
    assert snapshot(out) == before


def test_eval_records_without_negatives_are_refused_before_loading(tiny_bert, train_file, tmp_path, capsys):
    # their positives ranked first among themselves: every model scored 1.0, and the best checkpoint was arbitrary
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text('{"query": "q1", "positive": "p1", "negative": ["n1"]}\n{"query": "q2", "positive": ["p2", "p3"]}\n')
    out = tmp_path / "out"
    assert embed.main(cli(tiny_bert, train_file, out, "--eval_data", str(eval_file), "--eval_strategy", "steps")) == 2
    err = capsys.readouterr().err
    assert "eval.jsonl:2: field 'negative' is missing" in err and "any model scores 1.0" in err
    assert not out.exists()
    from retrievals.data import load_records
    from retrievals.evaluation import evaluate_reranking

    records = load_records(str(eval_file))
    with pytest.raises(UsageError, match="eval.jsonl:2: no negatives to rank its positives among"):
        evaluate_reranking(AutoModelForEmbedding.from_pretrained(tiny_bert), records)


def test_eval_queries_that_are_training_queries_are_warned_of(tiny_bert, train_file, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="retrievals"):
        assert embed.main(cli(tiny_bert, train_file, out, "--eval_data", train_file, "--eval_strategy", "steps",
                              "--eval_steps", "1", "--max_steps", "1")) == 0
    assert "32 of 32 --eval_data queries are also training queries (e.g. " in caplog.text
    assert "train.jsonl:1)" in caplog.text


def test_encode_output_never_replaces_the_training_or_eval_data(tiny_bert, train_file, tmp_path, capsys):
    # --overwrite_output_dir (given to retrain) let --encode_output replace the training file with the vectors' bytes
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    before = Path(train_file).read_bytes()
    for target in (train_file, str(Path(train_file).parent)):  # the file, or a file inside a --train_data folder
        argv = cli(tiny_bert, target, tmp_path / "o", "--overwrite_output_dir", "--do_encode", "--encode_data", str(data),
                   "--encode_output", train_file)
        assert embed.main(argv) == 2
        assert "this run uses; write the output to another file" in capsys.readouterr().err
    assert Path(train_file).read_bytes() == before and not (tmp_path / "o").exists()


def test_rerank_flags_checked(tiny_bert, train_file, tmp_path, capsys):
    from retrievals.pipelines import rerank

    base = ["--model_name_or_path", tiny_bert, "--train_data", train_file, "--output_dir", str(tmp_path / "r"), "--do_train"]
    assert rerank.main(base + ["--loss_fn", "bce", "--temperature", "0"]) == 2
    assert "--temperature must be a finite number > 0, got 0.0" in capsys.readouterr().err
    assert rerank.main(base + ["--margin", "0.3"]) == 2
    assert "--margin does not apply to --loss_fn ce" in capsys.readouterr().err
    # a reranker's input is the pair: --document_max_length 128 was dropped for --max_length 512, silently
    assert rerank.main(base + ["--max_length", "512", "--document_max_length", "128"]) == 2
    assert "--max_length 512 and --document_max_length 128: a reranker reads query and document as one input" in \
        capsys.readouterr().err
    # one candidate per query and no in-batch ones: every label is the positive's (bce learned to score all high)
    for loss in ("bce", "CE"):
        assert rerank.main(base + ["--loss_fn", loss, "--train_group_size", "1"]) == 2
        assert "needs --train_group_size >= 2" in capsys.readouterr().err
    assert rerank.main(base + ["--model_type", "colbert", "--negatives_cross_device", "true"]) == 2
    assert "--negatives_cross_device shares in-batch negatives" in capsys.readouterr().err
    assert retrieve.main(["--output", str(tmp_path / "r.trec"), "--top_k", "-1"]) == 2
    assert "--top_k must be >= 1" in capsys.readouterr().err
    assert build_hn.main(["--model_name_or_path", tiny_bert, "--input_file", train_file, "--output_file",
                          str(tmp_path / "hn.jsonl"), "--negative_number", "0"]) == 2
    assert "--negative_number must be >= 1" in capsys.readouterr().err
    from retrievals.pipelines import serve

    assert serve.main(["--model_name_or_path", tiny_bert, "--model_batch_size", "0"]) == 2
    assert "--model_batch_size must be >= 1" in capsys.readouterr().err
    assert embed.main(["--model_name_or_path", tiny_bert, "--output_dir", str(tmp_path / "e"), "--do_encode",
                       "--encode_data", train_file, "--encode_batch_size", "0"]) == 2
    assert "--encode_batch_size must be >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------- 5. model paths and weights


def test_bad_model_paths_are_named_in_one_line(tiny_bert, train_file, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(Path(tiny_bert, "config.json").read_text())
    classic = tmp_path / "classic"  # an older sentence-transformers layout: the transformer in a subfolder
    classic.mkdir()
    (classic / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "0_Transformer",
                                                       "type": "sentence_transformers.models.Transformer"}]))
    cases = {
        str(classic): "no config.json; not a transformers model folder (its modules.json puts the transformer in 0_Transformer/",
        str(tmp_path / "nope"): "nope: no such model folder",
        "outputs/missing-model": "outputs/missing-model: no such model folder (hub ids are not tried",
        train_file: "is a file; a model is a folder",
        str(empty): "no weights (model.safetensors or pytorch_model.bin)",
    }
    for path, message in cases.items():
        assert embed.main(cli(path, train_file, tmp_path / "o", "--max_steps", "1")) == 2, path
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        with pytest.raises(FileNotFoundError, match="no such|is a file|no weights|no config.json"):
            AutoModelForEmbedding.from_pretrained(path)


def test_lora_adapter_loads_from_any_working_directory(tiny_qwen, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    monkeypatch.chdir(Path(tiny_qwen).parent)
    model = AutoModelForEmbedding.from_pretrained(Path(tiny_qwen).name, use_lora=True)  # a relative base path
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    model.save_pretrained(tmp_path / "adapter")
    expected = model.encode(TEXTS)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert os.path.isabs(saved["base_model_name_or_path"])
    monkeypatch.chdir(tmp_path)
    np.testing.assert_allclose(AutoModelForEmbedding.from_pretrained(str(tmp_path / "adapter")).encode(TEXTS), expected, atol=1e-6)
    assert (tmp_path / "adapter" / FILES_NAME).is_file()


def unfinished_run(folder: Path, steps=(2, 4), optimizer=True) -> dict:
    """A killed run's folder as our runs leave it: the manifest, and a checkpoint per step."""
    from retrievals.training.output_dir import prepare_output_dir

    fingerprint = {"model": "m", "max_steps": 8}
    prepare_output_dir(str(folder), False, True, fingerprint)
    for step in steps:
        checkpoint = folder / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "retrievals_config.json").write_text("{}")
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if optimizer:
            (checkpoint / "optimizer.pt").write_bytes(b"o")
            (checkpoint / "scheduler.pt").write_bytes(b"s")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["written"] = manifest["this_run"] = [f"checkpoint-{s}" for s in steps]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return fingerprint


def test_a_checkpoint_whose_trainer_state_is_cut_short_is_not_resumed(tmp_path):
    # transformers writes trainer_state.json last but not atomically: a kill mid-write left a checkpoint every rerun
    # resumed, then crashed on (a bare JSONDecodeError naming no file)
    from retrievals.training.output_dir import prepare_output_dir

    fingerprint = unfinished_run(tmp_path / "out")
    (tmp_path / "out" / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')
    run = prepare_output_dir(str(tmp_path / "out"), False, True, fingerprint)
    assert Path(run.resume_from).name == "checkpoint-2" and not (tmp_path / "out" / "checkpoint-4").exists()


def test_a_weights_only_checkpoint_is_not_resumed_silently(tmp_path):
    # --save_only_model: no optimizer or scheduler state, so a "resumed" run restarted both (another run)
    from retrievals.training.output_dir import OutputDirError, prepare_output_dir

    fingerprint = unfinished_run(tmp_path / "out", optimizer=False)
    with pytest.raises(OutputDirError, match=r"checkpoint-4.*save_only_model.*--resume false"):
        prepare_output_dir(str(tmp_path / "out"), False, True, fingerprint)
    assert (tmp_path / "out" / "checkpoint-4").is_dir()  # nothing retired unasked
    run = prepare_output_dir(str(tmp_path / "out"), False, False, fingerprint)
    assert run.resume_from is None and not (tmp_path / "out" / "checkpoint-4").exists()


def test_fingerprint_covers_the_tokenizer_and_a_starting_adapter(tiny_bert, tmp_path):
    # --tokenizer_name and --lora_path were fingerprinted by path (or not at all): a rerun with another vocabulary,
    # or with the adapter folder's contents replaced, resumed the killed run
    from types import SimpleNamespace

    from retrievals.data.readers import Record
    from retrievals.training.fingerprint import describe_changes, run_fingerprint

    records, args = [Record("q", ["p"])], SimpleNamespace(learning_rate=1e-3)
    tok = tmp_path / "tok"
    shutil.copytree(tiny_bert, tok)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"one")

    def fingerprint():
        return run_fingerprint(tiny_bert, records, args, {"tokenizer_name": str(tok), "lora_path": str(adapter)})

    before = fingerprint()
    assert fingerprint() == before
    (tok / "tokenizer.json").write_text((tok / "tokenizer.json").read_text().replace("[UNK]", "[UNKNOWN]"))
    assert describe_changes(before, fingerprint()) == "tokenizer (content changed)"
    before = fingerprint()
    (adapter / "adapter_model.safetensors").write_bytes(b"two")
    assert describe_changes(before, fingerprint()) == "lora_weights (content changed)"
    older = {k: v for k, v in before.items() if k != "tokenizer"}  # a run started before tokenizers were recorded
    assert "tokenizer (not recorded by the run in that folder)" in describe_changes(older, fingerprint())
    # no --tokenizer_name: the model folder's own tokenizer files
    plain = run_fingerprint(tiny_bert, records, args)
    assert plain["tokenizer"] not in ("", None) and not plain["tokenizer"].startswith("not a local folder")


def test_an_adapter_trains_only_with_use_lora(tiny_bert, train_file, tmp_path, capsys):
    # without --use_lora the adapter loaded frozen: the run crashed at its first backward ("does not require grad"),
    # after setting up the output folder
    adapter = tmp_path / "adapter"
    lora = ("--use_lora", "true", "--lora_target_modules", "query", "value")
    assert embed.main(cli(tiny_bert, train_file, adapter, "--max_steps", "1", *lora)) == 0
    for flags in ((), ("--lora_path", str(adapter))):
        start = str(adapter) if not flags else tiny_bert
        assert embed.main(cli(start, train_file, tmp_path / "more", "--max_steps", "1", *flags)) == 2
        assert "is a LoRA adapter: pass --use_lora true" in capsys.readouterr().err
        assert not (tmp_path / "more").exists()
    assert embed.main(cli(str(adapter), train_file, tmp_path / "more", "--max_steps", "1", "--use_lora", "true")) == 0


def test_vectors_encoded_after_training_belong_to_the_run(tiny_bert, train_file, tmp_path):
    # embeddings.npy was left out of the manifest: a retrain with --overwrite_output_dir kept the old model's vectors
    # beside the new model, calling them "not written by this library"
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "out"
    encode = ("--do_encode", "--encode_data", str(data))
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", *encode)) == 0
    assert "embeddings.npy" in json.loads((out / MANIFEST_NAME).read_text())["written"]
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", "--overwrite_output_dir")) == 0
    assert not (out / "embeddings.npy").exists()  # the earlier run's vectors went with its model


def test_unfolded_positives_warn_of_false_in_batch_negatives(tiny_bert, tmp_path, caplog):
    # the same pairs as separate records warned; unfolded from one record they did not
    data = tmp_path / "multi.jsonl"
    data.write_text("".join(json.dumps({"query": t, "positive": [TEXTS[(i + 1) % 5], TEXTS[(i + 2) % 5]]}) + "\n"
                            for i, t in enumerate(TEXTS)))
    with caplog.at_level("WARNING"):
        assert embed.main(cli(tiny_bert, str(data), tmp_path / "out", "--max_steps", "1", "--train_group_size", "1",
                              "--unfold_each_positive", "true")) == 0
    assert "5 queries have several positives" in caplog.text and "false in-batch negatives" in caplog.text

import json
from pathlib import Path

import numpy as np
import pytest

from retrievals import AutoModelForEmbedding
from retrievals.pipelines import embed
from retrievals.training.output_dir import last_complete_checkpoint

from ..conftest import corpus_lines, needs


def cli(model, data, out, *extra):
    return ["--model_name_or_path", model, "--train_data", data, "--output_dir", str(out), "--do_train",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--train_group_size", "2", "--query_max_length", "16", "--document_max_length", "32",
            "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", *extra]


def final_loss(out):
    state = json.loads((Path(out) / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    return losses[0], losses[-1], state["global_step"]


def test_train_lowers_loss_saves_and_reloads(tiny_bert, train_file, tmp_path, caplog):
    out = tmp_path / "out"
    code = embed.main(cli(tiny_bert, train_file, out, "--num_train_epochs", "4", "--fp16", "--temperature", "0.05"))
    assert code == 0
    assert "no CUDA GPU is available: training in float32" in caplog.text
    first, last, steps = final_loss(out)
    assert steps == 32 and last < first
    model = AutoModelForEmbedding.from_pretrained(str(out))
    assert model.retrieval_config.query_max_length == 16
    base = AutoModelForEmbedding.from_pretrained(tiny_bert)
    texts = corpus_lines(5)
    assert not np.allclose(model.encode(texts), base.encode(texts))  # weights changed and were saved
    # sentence-transformers loads the same folder with identical output
    st = needs("sentence_transformers")
    np.testing.assert_allclose(st.SentenceTransformer(str(out), device="cpu").encode(texts), model.encode(texts), atol=1e-5)


def test_refuses_to_overwrite_a_model_unless_asked(tiny_bert, train_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1")) == 0
    before = (out / "model.safetensors").read_bytes()
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1")) == 2
    assert "already holds a finished model (retrievals_run.json); pass --overwrite_output_dir" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", "--overwrite_output_dir")) == 0


class Killed(BaseException):
    """Stands in for SIGKILL: a BaseException, so no ``except Exception`` cleanup of ours runs."""


def kill_at_step(monkeypatch, step):
    from transformers import Trainer

    original = Trainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step == step:
            raise Killed(f"killed at step {step}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)


def test_killed_run_resumes_to_the_same_weights(tiny_bert, train_file, tmp_path, caplog, monkeypatch):
    args = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--seed", "7")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert embed.main(cli(tiny_bert, train_file, straight, *args)) == 0
    with monkeypatch.context() as patch:
        kill_at_step(patch, 3)  # after checkpoint-2 was saved
        with pytest.raises(Killed):
            embed.main(cli(tiny_bert, train_file, killed, *args))
    assert last_complete_checkpoint(killed).endswith("checkpoint-2") and not (killed / "model.safetensors").exists()
    assert embed.main(cli(tiny_bert, train_file, killed, *args)) == 0
    assert "Resuming from" in caplog.text and "checkpoint-2" in caplog.text
    texts = corpus_lines(6)
    a = AutoModelForEmbedding.from_pretrained(str(straight)).encode(texts)
    b = AutoModelForEmbedding.from_pretrained(str(killed)).encode(texts)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_unknown_loss_and_bad_data_fail_before_training(tiny_bert, train_file, tmp_path, capsys):
    assert embed.main(cli(tiny_bert, train_file, tmp_path / "o1", "--loss_fn", "nope")) == 2
    assert "Unknown loss 'nope'; choose one of ['infonce', 'triplet']" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": ["p"], "negative": ["n"]}\n{"query": "q2", "negative": ["n"]}\n')
    assert embed.main(cli(tiny_bert, str(bad), tmp_path / "o2")) == 2
    assert "bad.jsonl:2: missing field 'positive'" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_lora_decoder_training_and_merged(tiny_qwen, train_file, tmp_path):
    needs("peft")
    out = tmp_path / "lora"
    args = cli(tiny_qwen, train_file, out, "--max_steps", "3", "--use_lora", "True", "--save_merged", "True",
               "--query_instruction", "Given a query\\nQuery: ", "--document_instruction", "# Document: ")
    assert embed.main(args) == 0
    assert (out / "adapter_config.json").is_file() and (out / "merged" / "model.safetensors").is_file()
    adapter = AutoModelForEmbedding.from_pretrained(str(out))
    merged = AutoModelForEmbedding.from_pretrained(str(out / "merged"))
    assert adapter.retrieval_config.query_instruction == "Given a query\nQuery: "  # \n typed in a shell is a newline
    texts = corpus_lines(5)
    np.testing.assert_allclose(adapter.encode_queries(texts), merged.encode_queries(texts), atol=1e-5)


def test_do_encode_writes_embeddings(tiny_bert, tmp_path):
    data = tmp_path / "corpus.jsonl"
    texts = corpus_lines(7)
    data.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    out = tmp_path / "enc"
    assert embed.main(["--model_name_or_path", tiny_bert, "--output_dir", str(out), "--do_encode", "--encode_data", str(data)]) == 0
    emb = np.load(out / "embeddings.npy")
    np.testing.assert_allclose(emb, AutoModelForEmbedding.from_pretrained(tiny_bert).encode(texts), atol=1e-6)


@pytest.mark.parametrize("kind, extra", [("bert", ()), ("qwen", ("--use_lora", "True"))])
def test_gradient_checkpointing_trains(kind, extra, tiny_bert, tiny_qwen, train_file, tmp_path):
    if extra:
        needs("peft")
    out = tmp_path / "gc"
    path = tiny_bert if kind == "bert" else tiny_qwen
    assert embed.main(cli(path, train_file, out, "--max_steps", "3", "--gradient_checkpointing", "true", *extra)) == 0
    first, last, steps = final_loss(out)
    assert steps == 3 and np.isfinite(last)
    texts = corpus_lines(4)
    assert not np.allclose(AutoModelForEmbedding.from_pretrained(str(out)).encode(texts),
                           AutoModelForEmbedding.from_pretrained(path).encode(texts))


@pytest.mark.parametrize("use_lora", [False, True])
def test_checkpointing_accepts_both_trainer_calls(use_lora, tiny_qwen):
    """transformers' Trainer calls ``activation_checkpointing_enable`` (newer) or ``gradient_checkpointing_enable``
    (older releases), both with ``every_n_layers`` and ``offload``."""
    if use_lora:
        needs("peft")
    for call in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
        model = AutoModelForEmbedding.from_pretrained(tiny_qwen, use_lora=use_lora)
        getattr(model, call)(None, every_n_layers=1, offload=False)
        base = model.backbone.get_base_model() if use_lora else model.backbone
        assert any(getattr(m, "gradient_checkpointing", False) for m in base.modules())


def test_dataloader_workers_default(monkeypatch):
    import torch

    from retrievals.training import RetrievalTrainingArguments

    assert RetrievalTrainingArguments("out").dataloader_num_workers == (4 if torch.cuda.is_available() else 0)
    assert RetrievalTrainingArguments("out", dataloader_num_workers=2).dataloader_num_workers == 2
    assert RetrievalTrainingArguments("out", dataloader_num_workers=0).dataloader_num_workers == 0
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert RetrievalTrainingArguments("out").dataloader_num_workers == 0  # too few cores to spare any


@pytest.mark.parametrize("nan_filter", [False, True])
def test_non_finite_step_loss_is_left_out_of_the_log(nan_filter, tiny_bert, train_file, tmp_path, caplog, monkeypatch):
    """A nan step loss (as when fp16 overflows and the step is skipped) neither shows in the logged loss nor
    poisons later logs. Default: handled on the device (no per-step host sync) and warned; with
    ``--logging_nan_inf_filter true``: transformers' own filter."""
    from transformers import Trainer

    step = Trainer.training_step

    def nan_in_step_4(self, *args, **kwargs):  # only the reported loss: the weights stay finite
        loss = step(self, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 3 else loss

    monkeypatch.setattr(Trainer, "training_step", nan_in_step_4)
    flags = ["--max_steps", "6", "--optim", "sgd"] + (["--logging_nan_inf_filter", "true"] if nan_filter else [])
    assert embed.main(cli(tiny_bert, train_file, tmp_path / "out", *flags)) == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 6 and all(np.isfinite(losses))
    if not nan_filter:
        assert losses[3] == losses[2]  # the last finite loss stands in
    assert ("1 training step(s) up to step 4 had a nan/inf loss" in caplog.text) != nan_filter


def test_matryoshka_training_serves_every_trained_size(tiny_bert, train_file, tmp_path, capsys):
    out = tmp_path / "mrl"
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "3", "--matryoshka_dims", "32", "16", "8")) == 0
    model = AutoModelForEmbedding.from_pretrained(str(out))
    assert model.retrieval_config.matryoshka_dims == [32, 16, 8]
    texts = corpus_lines(4)
    full = model.encode(texts)
    short = model.encode(texts, truncate_dim=8)
    assert short.shape == (4, 8)
    np.testing.assert_allclose(short, full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True), atol=1e-5)
    record = json.loads((out / "retrievals_fingerprint.json").read_text())
    assert record["loss"]["name"] == "matryoshka" and record["loss"]["dims"] == [32, 16, 8]
    assert embed.main(cli(tiny_bert, train_file, tmp_path / "too_big", "--max_steps", "1", "--matryoshka_dims", "64")) == 2
    assert "embeddings have 32 dimensions" in capsys.readouterr().err
    assert embed.main(cli(tiny_bert, train_file, tmp_path / "w", "--matryoshka_dims", "16", "--matryoshka_weights", "1", "2")) == 2
    assert "one weight per --matryoshka_dims" in capsys.readouterr().err
    assert embed.main(cli(tiny_bert, train_file, tmp_path / "d", "--matryoshka_distill", "1")) == 2
    assert "--matryoshka_distill needs --matryoshka_dims" in capsys.readouterr().err
    assert embed.main(cli(tiny_bert, train_file, tmp_path / "d", "--matryoshka_dims", "16", "--matryoshka_distill", "-1")) == 2
    assert "--matryoshka_distill must be a finite number >= 0" in capsys.readouterr().err


def test_matryoshka_distillation_trains_and_is_recorded(tiny_bert, train_file, tmp_path):
    out = tmp_path / "mrl"
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "2", "--matryoshka_dims", "32", "8",
                          "--matryoshka_distill", "0.5")) == 0
    record = json.loads((out / "retrievals_fingerprint.json").read_text())
    assert record["loss"]["distill"] == 0.5


def test_pca_rotation_trains_saves_and_resumes(tiny_bert, train_file, tmp_path, caplog, monkeypatch, capsys):
    args = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--seed", "7", "--pca_rotation", "true",
            "--matryoshka_dims", "32", "8")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert embed.main(cli(tiny_bert, train_file, straight, *args)) == 0
    assert "--pca_rotation: principal axes of" in caplog.text
    model = AutoModelForEmbedding.from_pretrained(str(straight))
    assert model.dense is not None and model.retrieval_config.dense_dim == 32
    assert json.loads((straight / "retrievals_fingerprint.json").read_text())["pca_rotation"] is True
    texts = corpus_lines(6)
    st = needs("sentence_transformers")
    np.testing.assert_allclose(st.SentenceTransformer(str(straight), device="cpu").encode(texts), model.encode(texts), atol=1e-5)
    with monkeypatch.context() as patch:  # the resumed run takes the checkpoint's Dense weights, not a fresh PCA
        kill_at_step(patch, 3)
        with pytest.raises(Killed):
            embed.main(cli(tiny_bert, train_file, killed, *args))
    assert embed.main(cli(tiny_bert, train_file, killed, *args)) == 0
    np.testing.assert_allclose(AutoModelForEmbedding.from_pretrained(str(killed)).encode(texts), model.encode(texts),
                               atol=1e-5)
    # a model that has its Dense layer already, and the sparse kind, refuse the flag
    assert embed.main(cli(str(straight), train_file, tmp_path / "again", "--max_steps", "1", "--pca_rotation", "true")) == 2
    assert "the model already has a Dense layer" in capsys.readouterr().err
    assert embed.main(cli(tiny_bert, train_file, tmp_path / "sp", "--model_type", "sparse", "--pca_rotation", "true")) == 2
    assert "--pca_rotation is for dense embedders" in capsys.readouterr().err

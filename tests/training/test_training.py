import json
from pathlib import Path

import numpy as np
import pytest
import torch

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


@pytest.mark.parametrize("native", [True, False])
def test_bf16_without_a_gpu_trains_under_autocast_only_on_bf16_hardware(native, tiny_bert, train_file, tmp_path,
                                                                       monkeypatch, caplog):
    """``--bf16`` without a GPU: bf16 autocast where the CPU computes bf16 in hardware (2.5x float32's speed there),
    float32 with a warning where torch would emulate it; either way float32 weights are saved and reload."""
    from retrievals.training import arguments

    monkeypatch.setattr(arguments, "cpu_has_native_bf16", lambda: native)
    dtypes = set()

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Linear) and module.training:
            dtypes.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        assert embed.main(cli(tiny_bert, train_file, tmp_path / "out", "--max_steps", "2", "--bf16")) == 0
    finally:
        hook.remove()
    assert dtypes == ({torch.bfloat16} if native else {torch.float32})
    assert ("training in float32 instead" in caplog.text) is not native
    from safetensors import safe_open
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as saved:
        assert {saved.get_tensor(k).dtype for k in saved.keys()} == {torch.float32}
    assert np.isfinite(AutoModelForEmbedding.from_pretrained(str(tmp_path / "out")).encode(corpus_lines(3))).all()


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
    assert "--matryoshka_distill must be a finite number >= 0, got -1.0" in capsys.readouterr().err


def test_matryoshka_distillation_trains_and_is_recorded(tiny_bert, train_file, tmp_path):
    out = tmp_path / "mrl"
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "2", "--matryoshka_dims", "32", "8",
                          "--matryoshka_distill", "0.5")) == 0
    record = json.loads((out / "retrievals_fingerprint.json").read_text())
    assert record["loss"]["distill"] == 0.5


def test_unnormalised_embeddings_train_raw_dot_products_at_temperature_1(tiny_bert, train_file, tmp_path, capsys, caplog):
    # the cosine default 0.02 divided raw dot products too (a first loss of ~90 on a small model); and the Matryoshka
    # sizes' truncation (renormalised or sliced, as the model serves them) was set after the run's record was taken
    def loss_of(out, *extra):
        assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", "--matryoshka_dims", "32", "16", *extra)) == 0
        return json.loads((out / "retrievals_fingerprint.json").read_text())["loss"]

    raw = loss_of(tmp_path / "dot", "--normalize_embeddings", "false")
    assert raw["normalize"] is False and raw["loss"]["temperature"] == 1.0
    assert "not normalised: the loss divides raw dot products by --temperature 1" in caplog.text
    cosine = loss_of(tmp_path / "cos")
    assert cosine["normalize"] is True and cosine["loss"]["temperature"] == 0.02
    assert loss_of(tmp_path / "given", "--normalize_embeddings", "false", "--temperature", "0.05")["loss"]["temperature"] == 0.05
    # a margin loss has no temperature: a softmax to distil into would be near uniform, so it is refused up front
    for extra in (["--matryoshka_dims", "16", "--matryoshka_distill", "1"], ["--teacher_model", tiny_bert]):
        assert embed.main(cli(tiny_bert, train_file, tmp_path / "t", "--loss_fn", "triplet", *extra)) == 2
        assert "needs a loss with a temperature; 'triplet' has none" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


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


def teacher_divergence(student, teacher, records, teacher_temperature):
    """KL(teacher || student) of each training query's softmax over every training document (the student's
    scores at temperature 0.05)."""
    import torch

    from retrievals.losses import InfoNCELoss, TeacherDistillLoss

    queries = [r["query"] for r in records]
    documents = list(dict.fromkeys(d for r in records for d in (*r["positive"], *r["negative"])))
    vec = lambda m, texts, q: torch.from_numpy(m.encode(texts, is_query=q))  # noqa: E731
    return TeacherDistillLoss(InfoNCELoss(temperature=0.05), teacher_temperature=teacher_temperature).divergence(
        vec(student, queries, True), vec(student, documents, False), vec(teacher, queries, True),
        vec(teacher, documents, False)).item()


def test_teacher_distillation_trains_toward_the_teacher(tiny_bert, tiny_qwen, train_file, tmp_path, caplog, monkeypatch,
                                                        capsys):
    """A teacher of another family (a decoder with its own tokenizer): the student trained on the KL term alone
    (``--distill_weight`` large against InfoNCE) ranks the training documents closer to the teacher's way; the
    teacher's identity is part of the run, a killed run resumes to the same weights."""
    records = [json.loads(line) for line in Path(train_file).read_text().splitlines()]
    args = ("--max_steps", "16", "--learning_rate", "1e-2", "--temperature", "0.05", "--teacher_model", tiny_qwen, "--distill_weight", "20",
            "--teacher_temperature", "0.002",
            "--save_strategy", "steps", "--save_steps", "8", "--seed", "3")
    out = tmp_path / "distilled"
    assert embed.main(cli(tiny_bert, train_file, out, *args)) == 0
    documents = {d for r in records for d in (*r["positive"], *r["negative"])}
    assert f"--teacher_model: encoding {len({r['query'] for r in records})} queries and {len(documents)} documents" \
        in caplog.text  # each distinct text once
    teacher, start = AutoModelForEmbedding.from_pretrained(tiny_qwen), AutoModelForEmbedding.from_pretrained(tiny_bert)
    student = AutoModelForEmbedding.from_pretrained(str(out))
    before, after = (teacher_divergence(m, teacher, records, 0.002) for m in (start, student))
    control = tmp_path / "control"  # the same run, the KL term weighted 0: InfoNCE alone does not do it
    assert embed.main(cli(tiny_bert, train_file, control, *args, "--distill_weight", "0")) == 0
    alone = teacher_divergence(AutoModelForEmbedding.from_pretrained(str(control)), teacher, records, 0.002)
    assert after < 0.9 * before and after < alone - 0.1, (before, after, alone)
    record = json.loads((out / "retrievals_fingerprint.json").read_text())
    assert record["loss"]["name"] == "teacher_distill" and record["loss"]["weight"] == 20.0
    assert record["teacher_model"] and record["teacher_weights"] and record["distill_weight"] == 20.0
    # killed after its first checkpoint, then rerun: the same weights as straight through
    killed = tmp_path / "killed"
    with monkeypatch.context() as patch:
        kill_at_step(patch, 10)
        with pytest.raises(Killed):
            embed.main(cli(tiny_bert, train_file, killed, *args))
    assert embed.main(cli(tiny_bert, train_file, killed, *args, "--distill_weight", "5")) == 2
    assert "distill_weight 20.0 -> 5.0" in capsys.readouterr().err  # another teacher setting: not this run
    assert embed.main(cli(tiny_bert, train_file, killed, *args)) == 0
    texts = corpus_lines(6)
    np.testing.assert_allclose(AutoModelForEmbedding.from_pretrained(str(killed)).encode(texts), student.encode(texts),
                               atol=1e-5)
    # with Matryoshka, every size learns from the teacher
    mrl = tmp_path / "mrl"
    assert embed.main(cli(tiny_bert, train_file, mrl, "--max_steps", "2", "--teacher_model", tiny_qwen,
                          "--matryoshka_dims", "32", "8")) == 0
    loss = json.loads((mrl / "retrievals_fingerprint.json").read_text())["loss"]
    assert loss["name"] == "matryoshka" and loss["loss"]["name"] == "teacher_distill"


def test_teacher_flags_are_checked_before_anything_loads(tiny_bert, train_file, tmp_path, capsys, monkeypatch):
    def refused(*extra):
        out = tmp_path / "refused"
        assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", *extra)) == 2
        assert not out.exists()
        return capsys.readouterr().err

    assert "no such teacher model folder" in refused("--teacher_model", str(tmp_path / "nowhere"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one text\nanother\n")
    for flags in (["--teacher_model", tiny_bert], ["--pca_rotation", "true"]):  # encoding only: they would do nothing
        assert embed.main(["--model_name_or_path", tiny_bert, "--output_dir", str(tmp_path / "enc"), "--do_encode",
                           "--encode_data", str(corpus), *flags]) == 2
        assert f"{flags[0]} apply to training" in capsys.readouterr().err and not (tmp_path / "enc").exists()
    assert "--distill_weight and --teacher_temperature need --teacher_model" in refused("--distill_weight", "2")
    assert "--distill_weight and --teacher_temperature need --teacher_model" in refused("--teacher_temperature", "0.1")
    assert "--distill_weight must be a finite number >= 0, got -1.0" in refused("--teacher_model", tiny_bert, "--distill_weight", "-1")
    assert "--teacher_temperature must be a finite number > 0, got 0.0" in refused("--teacher_model", tiny_bert,
                                                                          "--teacher_temperature", "0")
    ranker = tmp_path / "ranker"
    from retrievals import AutoModelForRanking

    AutoModelForRanking.from_pretrained(tiny_bert, model_type="cross-encoder").save_pretrained(ranker)
    assert "a cross-encoder model; the teacher must be a dense embedder" in refused("--teacher_model", str(ranker))
    sparse = tmp_path / "sparse"
    from retrievals.models.sparse import SparseEmbedder

    SparseEmbedder.from_pretrained(tiny_bert).save_pretrained(sparse)
    assert "a sparse model; the teacher must be a dense embedder" in refused("--teacher_model", str(sparse))
    # a teacher's weights changed in place: the killed run is not resumed by a rerun with that teacher
    teacher = tmp_path / "teacher"
    AutoModelForEmbedding.from_pretrained(tiny_bert).save_pretrained(teacher)
    out = tmp_path / "run"
    base = cli(tiny_bert, train_file, out, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1",
               "--teacher_model", str(teacher))
    with monkeypatch.context() as patch:
        kill_at_step(patch, 2)
        with pytest.raises(Killed):
            embed.main(base)
    changed = AutoModelForEmbedding.from_pretrained(str(teacher))
    with __import__("torch").no_grad():
        next(changed.parameters()).add_(0.1)
    changed.save_pretrained(teacher)
    assert embed.main(base) == 2
    err = capsys.readouterr().err
    assert "teacher_weights (content changed)" in err, err[-700:]


def test_teacher_confidence_is_the_mean_softmax_of_the_positive():
    import math

    import torch

    from retrievals.data import Record, TeacherVectors
    from retrievals.training.teacher import teacher_confidence

    teacher = TeacherVectors(["q1", "q2"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ["a", "b", "c"],
                             torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    records = [Record("q1", ["a"], ["b", "c"]), Record("q2", ["b"], ["a"]), Record("q2", ["c"], [])]  # the last: no negatives
    by_hand = [math.exp(1 / 0.5) / (math.exp(1 / 0.5) + math.exp(0) + math.exp(0.6 / 0.5)),
               math.exp(1 / 0.5) / (math.exp(1 / 0.5) + math.exp(0))]
    assert teacher_confidence(teacher, records, 0.5) == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    assert teacher_confidence(teacher, records[2:], 0.5) is None


def test_collator_gives_each_row_its_teachers_vector():
    import torch

    from retrievals.data import EmbeddingCollator, TeacherCollator, TeacherVectors

    class Processor:  # the collator's processor contract, reduced to what the teacher part needs
        def tokenize(self, texts, is_query):
            return texts

        def pad(self, texts):
            return {"n": torch.tensor(len(texts))}

    teacher = TeacherVectors(["q1", "q2"], torch.tensor([[1.0], [2.0]]), ["a", "b", "q1"], torch.tensor([[10.0], [20.0], [30.0]]))
    batch = TeacherCollator(EmbeddingCollator(Processor()), teacher)([{"query": "q2", "documents": ["b", "q1"]},
                                                                      {"query": "q1", "documents": ["a", "b"]}])
    assert batch["query"] == {"n": torch.tensor(2)} and batch["document"] == {"n": torch.tensor(4)}  # the wrapped one's
    assert batch["teacher_query_embeddings"].tolist() == [[2.0], [1.0]]
    assert batch["teacher_document_embeddings"].tolist() == [[20.0], [30.0], [10.0], [20.0]]  # "q1" as a document
    with pytest.raises(RuntimeError, match="no vector of the training query"):
        teacher.rows(["unknown"], [])
    with pytest.raises(ValueError, match="vectors"):
        TeacherVectors(["q"], torch.zeros(2, 1), [], torch.zeros(0, 1))


def test_load_best_model_at_end_saves_the_best_checkpoint(tiny_bert, train_file, tmp_path):
    # transformers' own loader matched the bare backbone's key names: the run crashed at its end, every rerun too
    out = tmp_path / "out"
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "4", "--eval_data", train_file, "--eval_strategy",
                          "steps", "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
                          "--load_best_model_at_end", "true", "--metric_for_best_model", "ndcg@10")) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"]).name
    final = AutoModelForEmbedding.from_pretrained(str(out)).state_dict()
    chosen = AutoModelForEmbedding.from_pretrained(str(out / best)).state_dict()
    assert final.keys() == chosen.keys() and all(torch.equal(final[k], chosen[k]) for k in final)


def test_mask_duplicate_positives_reaches_the_loss(tiny_bert, tmp_path):
    """FAQ data (queries sharing an answer): with the flag, another query's copy of a positive leaves the softmax,
    so the run trains otherwise than without it; the fingerprint tells the two runs apart."""
    lines = corpus_lines(40)
    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps({"query": lines[i], "positive": [lines[30 + i % 2]], "negative": [lines[20 + i]]})
                            + "\n" for i in range(8)))
    weights = []
    for flag in ("true", "false"):
        out = tmp_path / flag
        assert embed.main(cli(tiny_bert, str(data), out, "--max_steps", "2", "--mask_duplicate_positives", flag)) == 0
        weights.append(AutoModelForEmbedding.from_pretrained(str(out)).encode(lines[:3]))
        fingerprint = json.loads((out / "retrievals_run.json").read_text())["fingerprint"]
        assert fingerprint["mask_duplicate_positives"] is (flag == "true")
    assert not np.allclose(weights[0], weights[1], atol=1e-6)


def test_mask_duplicate_positives_reaches_colbert_and_is_refused_without_an_inbatch_softmax(tiny_bert, tmp_path, capsys):
    """ColBERT with in-batch negatives gets the documents' text ids too (the run trains otherwise than without the
    flag); a cross-encoder, whose queries score their own group only, refuses the flag before loading."""
    from retrievals import AutoModelForRanking
    from retrievals.pipelines import rerank

    lines = corpus_lines(40)
    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps({"query": lines[i], "positive": [lines[30 + i % 2]], "negative": [lines[20 + i]]})
                            + "\n" for i in range(8)))
    pairs = [(lines[0], lines[30]), (lines[1], lines[25])]
    scores = []
    for flag in ("true", "false"):
        out = tmp_path / flag
        argv = cli(tiny_bert, str(data), out, "--max_steps", "2", "--model_type", "colbert", "--use_inbatch_neg", "true",
                   "--mask_duplicate_positives", flag)
        argv = [a for a in argv if a not in ("--query_max_length", "16", "--document_max_length", "32")] + ["--max_len", "32"]
        assert rerank.main(argv) == 0
        scores.append(AutoModelForRanking.from_pretrained(str(out)).compute_score(pairs))
        assert json.loads((out / "retrievals_run.json").read_text())["fingerprint"]["mask_duplicate_positives"] is (flag == "true")
    assert not np.allclose(scores[0], scores[1], atol=1e-6)
    argv = cli(tiny_bert, str(data), tmp_path / "ce", "--max_steps", "2", "--model_type", "cross-encoder",
               "--mask_duplicate_positives", "true")
    assert rerank.main([a for a in argv if a not in ("--query_max_length", "16", "--document_max_length", "32")]) == 2
    assert "--mask_duplicate_positives: --loss_fn ce of this model kind has no softmax" in capsys.readouterr().err
    assert not (tmp_path / "ce").exists()
    # nor without in-batch negatives (ColBERT's default; an embedder's --use_inbatch_neg false): it was accepted, did
    # nothing, and only kept an identical rerun without it from resuming
    argv = cli(tiny_bert, str(data), tmp_path / "cb", "--max_steps", "2", "--model_type", "colbert",
               "--mask_duplicate_positives", "true")
    assert rerank.main([a for a in argv if a not in ("--query_max_length", "16", "--document_max_length", "32")]) == 2
    assert "--loss_fn ce with --use_inbatch_neg false of this model kind has no softmax" in capsys.readouterr().err
    assert embed.main(cli(tiny_bert, str(data), tmp_path / "emb", "--max_steps", "2", "--use_inbatch_neg", "false",
                          "--mask_duplicate_positives", "true")) == 2
    assert "--loss_fn infonce with --use_inbatch_neg false of this model kind" in capsys.readouterr().err
    assert not (tmp_path / "cb").exists() and not (tmp_path / "emb").exists()

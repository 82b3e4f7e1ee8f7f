"""Training flags that trained nothing, were ignored, or crashed after the output folder was set up: each is refused
up front (exit code 2, a message naming the flag, no output folder), or now does what it says."""

import json
from types import SimpleNamespace

import pytest

from retrievals.data.readers import Record
from retrievals.files import folder_lock
from retrievals.pipelines import embed, rerank
from retrievals.training.output_dir import MANIFEST_NAME, run_lock

from ..conftest import corpus_lines
from ..training.test_training import cli


@pytest.mark.parametrize("flags, named", [
    # one candidate per query: the softmax over it is 1, loss 0, the base model saved unchanged (exit 0)
    (("--per_device_train_batch_size", "1", "--train_group_size", "1"),
     "--per_device_train_batch_size 1 with --train_group_size 1: each query's only candidate is its positive"),
    # a group-only loss without negatives failed at the first step, after the folder was set up
    (("--use_inbatch_neg", "false", "--train_group_size", "1"),
     "--loss_fn infonce with --use_inbatch_neg false scores each query against its own group only"),
    (("--loss_fn", "triplet", "--train_group_size", "1"), "--loss_fn triplet scores each query against its own group only"),
    # half-precision weights: most updates rounded away
    (("--dtype", "bfloat16"), "--dtype bfloat16 would train the weights themselves in bfloat16"),
    (("--model_dtype", "float16"), "pass --fp16 instead"),
    (("--save_merged", "true"), "--save_merged saves a LoRA run's adapter merged"),  # it did nothing
    (("--fp16", "--bf16"), "--fp16 and --bf16 ask for two mixed precisions: pass one"),  # a traceback on a bf16 CPU
    # the best checkpoint is picked by a score on --eval_data: without it, a crash after the first evaluation
    (("--load_best_model_at_end", "true"), "--load_best_model_at_end picks checkpoints by their --metric_for_best_model"),
    (("--save_strategy", "best"), "--save_strategy best picks checkpoints"),
    (("--eval_data", "EVAL", "--eval_strategy", "steps", "--metric_for_best_model", "loss"),
     "--metric_for_best_model loss: the evaluation of --eval_data scores map, mrr@10, ndcg@10"),
    (("--eval_strategy", "steps"), "--eval_strategy steps scores held-out records: pass --eval_data"),  # a ValueError
    (("--label_smoothing_factor", "0.3"), "--label_smoothing_factor 0.3 is not supported"),  # ignored
    (("--neftune_noise_alpha", "5"), "--neftune_noise_alpha 5.0 is not supported"),  # crashed
    (("--train_sampling_strategy", "group_by_length"), "--train_sampling_strategy group_by_length is not supported"),
    (("--train_sampling_strategy", "batch_rebalance"), "--train_sampling_strategy batch_rebalance is not supported"),
    # nan/inf weights made every step's loss nan/inf
    (("--matryoshka_dims", "16", "--matryoshka_weights", "inf"), "--matryoshka_weights must be a finite number > 0, got inf"),
    (("--matryoshka_dims", "16", "--matryoshka_weights", "0"), "--matryoshka_weights must be a finite number > 0, got 0.0"),
    (("--model_type", "sparse", "--query_flops_weight", "nan"), "--query_flops_weight must be a finite number >= 0, got nan"),
    (("--model_type", "sparse", "--document_flops_weight", "inf"), "--document_flops_weight must be a finite number >= 0"),
    # only >= 0 was checked: an inf margin made every triplet's hinge, so every step's loss, inf
    (("--loss_fn", "triplet", "--margin", "inf"), "--margin must be a finite number >= 0, got inf"),
])
def test_flags_that_would_waste_the_run_are_refused_before_loading(flags, named, tiny_bert, train_file, tmp_path, capsys,
                                                                   monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded before the flags were checked")

    monkeypatch.setattr(embed, "build_model", no_loading)
    out = tmp_path / "out"
    flags = [train_file if f == "EVAL" else f for f in flags]
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", *flags)) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_dtype_auto_over_a_half_checkpoint_is_refused_before_loading(tiny_bert, train_file, tmp_path, capsys, monkeypatch):
    """``--dtype auto`` keeps the stored dtype: over a bfloat16 checkpoint a full fine-tune would train bfloat16
    weights (most updates round away); over a float32 one, or with LoRA, it trains."""
    import shutil

    half = tmp_path / "half"
    shutil.copytree(tiny_bert, half)
    config = json.loads((half / "config.json").read_text())
    (half / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    monkeypatch.setattr(embed, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    out = tmp_path / "out"
    assert embed.main(cli(str(half), train_file, out, "--max_steps", "1", "--dtype", "auto")) == 2
    err = capsys.readouterr().err
    assert f"--dtype auto keeps {half}'s stored bfloat16 weights" in err and "pass --bf16" in err
    assert not out.exists()
    from retrievals.training.run import check_weights, stored_dtype

    args = SimpleNamespace(save_merged=False)
    check_weights(args, [{"dtype": "auto", "use_lora": True}], str(half))  # float32 adapters over a bf16 base
    assert stored_dtype(str(half)) == "bfloat16" and stored_dtype(tiny_bert) in (None, "float32")
    check_weights(args, [{"dtype": "auto"}], tiny_bert)
    assert stored_dtype("no/such/model") is None


def test_colbert_with_one_candidate_per_query_is_refused(tiny_bert, train_file, tmp_path, capsys):
    # in-batch negatives over a batch of one query with its positive alone: loss 0, nothing trained, exit 0
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_bert, "--train_data", train_file, "--output_dir", str(out), "--do_train",
            "--model_type", "colbert", "--use_inbatch_neg", "true", "--train_group_size", "1",
            "--per_device_train_batch_size", "1", "--report_to", "none"]
    assert rerank.main(argv) == 2
    assert "--per_device_train_batch_size 1 with --train_group_size 1" in capsys.readouterr().err
    assert not out.exists()


def test_the_checks_pass_what_trains(tiny_bert):
    """What the checks must not refuse: LoRA over half-precision weights, one candidate per group with in-batch
    negatives from a batch of several, the checkpoint metric defaulted to one the evaluation reports."""
    from retrievals.losses import InfoNCELoss
    from retrievals.training import RetrievalTrainingArguments
    from retrievals.training.run import check_candidates, check_weights

    args = RetrievalTrainingArguments(output_dir="unused", report_to="none", per_device_train_batch_size=2,
                                      eval_strategy="steps", save_strategy="steps", load_best_model_at_end=True)
    check_weights(args, [{"dtype": "bfloat16", "use_lora": True}])
    check_candidates(InfoNCELoss(), SimpleNamespace(train_group_size=1), args)
    assert (args.metric_for_best_model, args.greater_is_better) == ("ndcg@10", True)  # transformers picked eval_loss


def test_encode_flags_without_their_task_are_refused(tiny_bert, train_file, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(corpus_lines(3)) + "\n")
    out = tmp_path / "out"
    # --train_data with --do_encode alone encoded with the untrained model (training was skipped, exit 0)
    argv = ["--model_name_or_path", tiny_bert, "--train_data", train_file, "--output_dir", str(out), "--report_to", "none",
            "--do_encode", "--encode_data", str(texts)]
    assert embed.main(argv) == 2
    assert "--train_data with --do_encode but without --do_train" in capsys.readouterr().err
    # --encode_data without --do_encode: trained, and encoded nothing
    assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1", "--encode_data", str(texts))) == 2
    assert "--encode_data is read only with --do_encode" in capsys.readouterr().err
    assert not out.exists()


def test_a_second_run_into_a_live_runs_folder_is_refused(tiny_bert, train_file, tmp_path, capsys):
    # it resumed the live run's checkpoint while that run went on writing, and the first run crashed
    out = tmp_path / "out"
    with run_lock(out):  # a live run (another FileLock on the same file conflicts as another process's would)
        with folder_lock(out):  # a save during the run takes the save lock: the run lock must not block it
            pass
        assert embed.main(cli(tiny_bert, train_file, out, "--max_steps", "1")) == 2
        err = capsys.readouterr().err
        assert f"{out}: another training run is writing into this --output_dir now" in err
        assert not (out / MANIFEST_NAME).exists()  # refused before the folder was touched
    with run_lock(out):  # released when the run ends, a failed one too
        pass


def test_a_failed_run_releases_its_folder(tiny_bert, train_file, tmp_path, monkeypatch):
    from ..training.test_training import Killed, kill_at_step

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        kill_at_step(patch, 0)
        with pytest.raises(Killed):
            embed.main(cli(tiny_bert, train_file, out, "--max_steps", "2"))
    with run_lock(out):
        pass


def test_best_checkpoint_by_ndcg_and_evaluation_at_the_eval_batch_size(tiny_bert, train_file, tmp_path, monkeypatch):
    # --load_best_model_at_end crashed after the first evaluation (transformers' default metric, eval_loss, is not one
    # of ours); the evaluation scored in batches of 32 whatever --per_device_eval_batch_size said
    import retrievals.evaluation.reranking as reranking

    sizes = set()
    score = reranking.score_candidates

    def spy(model, query, docs, batch_size=32, *args, **kwargs):
        sizes.add(batch_size)
        return score(model, query, docs, batch_size, *args, **kwargs)

    monkeypatch.setattr(reranking, "score_candidates", spy)
    out = tmp_path / "out"
    flags = ("--max_steps", "2", "--eval_data", train_file, "--eval_strategy", "steps", "--eval_steps", "1",
             "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end", "true",
             "--per_device_eval_batch_size", "2")
    assert embed.main(cli(tiny_bert, train_file, out, *flags)) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] == max(h["eval_ndcg@10"] for h in state["log_history"] if "eval_ndcg@10" in h)
    assert sizes == {2}


def test_sampling_strategy_is_in_the_fingerprint_and_old_runs_still_resume(tmp_path):
    # --train_sampling_strategy changes the data order, so the weights: a killed run resumed under another order
    from retrievals.training import RetrievalTrainingArguments
    from retrievals.training.fingerprint import describe_changes, run_fingerprint

    records = [Record("q", ["p"])]

    def fingerprint(strategy):
        args = RetrievalTrainingArguments(output_dir=str(tmp_path), report_to="none", train_sampling_strategy=strategy)
        return run_fingerprint("m", records, args)

    random, sequential = fingerprint("random"), fingerprint("sequential")
    assert describe_changes(random, sequential) == "train_sampling_strategy 'random' -> 'sequential'"
    older = {k: v for k, v in random.items() if k != "train_sampling_strategy"}  # a run started before it was recorded
    assert describe_changes(older, random) == ""  # it trained in random order: the same run, resumed
    assert describe_changes(older, sequential) == "train_sampling_strategy '(unset)' -> 'sequential'"


def test_auto_mixed_precision_is_gpu_only_and_yields_to_flags(tmp_path, monkeypatch):
    """On a CUDA GPU a run with neither --fp16 nor --bf16 trains under bf16 (fp16 without bf16); a flag given, or
    --auto_mixed_precision false, wins; on CPU nothing changes."""
    from unittest import mock

    import torch

    from retrievals.training import arguments
    from retrievals.training.arguments import RetrievalTrainingArguments

    plain = RetrievalTrainingArguments(output_dir=str(tmp_path))
    assert (plain.fp16, plain.bf16, plain.auto_mixed_precision) == (False, False, True)  # no GPU here: float32
    real, seen = arguments.training_gpu, []

    def as_on_a_gpu(use_cpu):  # only this check sees a GPU: transformers' own checks see this machine as it is
        with mock.patch.object(torch.cuda, "is_available", lambda: True), \
                mock.patch.object(torch.cuda, "is_bf16_supported", lambda *a, **k: True):
            return real(use_cpu)

    monkeypatch.setattr(arguments, "training_gpu", as_on_a_gpu)
    monkeypatch.setattr(arguments, "auto_precision", lambda *a: seen.append(a) or (False, False))
    for flags in ({}, {"auto_mixed_precision": False}, {"use_cpu": True}):
        RetrievalTrainingArguments(output_dir=str(tmp_path), **flags)
    # (fp16, bf16, auto, a GPU to train on, bf16 on it): --use_cpu trains on the CPU, so no GPU to pick for
    assert seen == [(False, False, True, True, True), (False, False, False, True, True), (False, False, True, False, False)]


@pytest.mark.parametrize("scheduler", ["reduce_lr_on_plateau", "greedy"])
def test_a_metric_scheduler_steps_on_ndcg_and_keeps_the_rate_while_it_rises(scheduler, tiny_bert, train_file, tmp_path,
                                                                          capsys):
    # without --metric_for_best_model transformers chose eval_loss, which our evaluation does not report: KeyError at
    # the first evaluation, after steps were trained; with nDCG, torch's default mode "min" cut the rate each time
    # the model improved
    import torch
    from transformers import get_scheduler

    from retrievals.training import RetrievalTrainingArguments

    out = tmp_path / "out"
    flags = ("--max_steps", "3", "--eval_data", train_file, "--eval_strategy", "steps", "--eval_steps", "1",
             "--lr_scheduler_type", scheduler)
    assert embed.main(cli(tiny_bert, train_file, out, *flags)) == 0
    evaluations = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "eval_ndcg@10" in h]
    assert len(evaluations) == 3
    for metric, mode in (("ndcg@10", "max"), ("map", "max")):
        args = RetrievalTrainingArguments(output_dir=str(tmp_path / "a"), report_to="none", eval_strategy="steps",
                                          eval_steps=1, lr_scheduler_type=scheduler, metric_for_best_model=metric)
        assert args.lr_scheduler_kwargs["mode"] == mode
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([weight], lr=1.0)
        schedule = get_scheduler(args.lr_scheduler_type, optimizer=optimizer, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        for i in range(15):  # the metric rises at every evaluation: no plateau
            schedule.step(0.5 + 0.01 * i)
        assert optimizer.param_groups[0]["lr"] == 1.0
    assert embed.main(cli(tiny_bert, train_file, tmp_path / "b", *flags, "--lr_scheduler_kwargs", '{"mode": "min"}')) == 2
    assert "contradicts --metric_for_best_model ndcg@10" in capsys.readouterr().err


def test_what_picks_the_saved_model_is_in_the_fingerprint(tmp_path):
    # --load_best_model_at_end (or a metric's scheduler) with another metric or held-out set resumed silently: the
    # restored best score (nDCG on one set) was compared with MAP, or with scores on another set
    from retrievals.training import RetrievalTrainingArguments
    from retrievals.training.fingerprint import describe_changes, run_fingerprint

    records, held_out, other = [Record("q", ["p"])], [Record("e", ["p"], ["n"])], [Record("f", ["p"], ["n"])]

    def fingerprint(eval_records=held_out, **flags):
        args = RetrievalTrainingArguments(output_dir=str(tmp_path), report_to="none", eval_strategy="steps",
                                          eval_steps=1, save_strategy="steps", save_steps=1, **flags)
        return run_fingerprint("m", records, args, eval_records=eval_records)

    best = fingerprint(load_best_model_at_end=True)
    assert "model_selection" in describe_changes(best, fingerprint(load_best_model_at_end=True, metric_for_best_model="map"))
    assert "model_selection" in describe_changes(best, fingerprint(other, load_best_model_at_end=True))
    assert "model_selection" in describe_changes(best, fingerprint())
    assert describe_changes(best, fingerprint(load_best_model_at_end=True)) == ""
    plateau = fingerprint(lr_scheduler_type="reduce_lr_on_plateau")
    assert "model_selection" in describe_changes(plateau, fingerprint(other, lr_scheduler_type="reduce_lr_on_plateau"))
    # without either, the held-out set and metric only draw the curve: a rerun with them changed still resumes
    plain = fingerprint()
    assert describe_changes(plain, fingerprint(other, metric_for_best_model="map")) == ""
    older = {k: v for k, v in plain.items() if k != "model_selection"}  # a run started before it was recorded
    assert describe_changes(older, plain) == ""


def test_the_step_check_counts_batches_as_accelerate_shards_them():
    # it counted items per process (ceil(items / world) // batch): 5 items, batches of 3, 2 processes and drop_last
    # passed, accelerate gave each process no batch, and the untrained model was saved with exit 0
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    from retrievals.data.readers import DataError
    from retrievals.training.run import check_steps

    for world in (1, 2, 3):
        for batch in (1, 2, 3, 4):
            for drop_last in (True, False):
                for items in range(1, 3 * world * batch + 2):
                    shares = [len(BatchSamplerShard(BatchSampler(SequentialSampler(range(items)), batch, drop_last),
                                                    num_processes=world, process_index=i)) for i in range(world)]
                    args = SimpleNamespace(world_size=world, per_device_train_batch_size=batch,
                                           dataloader_drop_last=drop_last)
                    if min(shares) == 0:
                        with pytest.raises(DataError, match="no full batch"):
                            check_steps(items, args)
                    else:
                        check_steps(items, args)


def test_several_gpus_in_one_process_are_refused_before_loading(tiny_bert, train_file, tmp_path, monkeypatch, capsys):
    # without torchrun, transformers wraps the model in DataParallel, which splits queries and documents separately
    # (a reranker's groups failed at the last partial batch) and multiplies the batch the fingerprint records
    from retrievals.training import RetrievalTrainingArguments

    monkeypatch.setattr(RetrievalTrainingArguments, "n_gpu", property(lambda self: 2))
    assert embed.main(cli(tiny_bert, train_file, tmp_path / "out")) == 2
    assert "sees 2 GPUs: run one process per GPU with torchrun --nproc_per_node 2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_matryoshka_run_recorded_before_its_loss_recorded_normalize_resumes():
    # the loss record gained "normalize" (decided by the model and --normalize_embeddings, both fingerprinted): an
    # unfinished run recorded without it was refused as "other settings" though nothing changed for it
    from retrievals.training.fingerprint import describe_changes

    now = {"loss": {"name": "matryoshka", "dims": [32, 16], "normalize": True, "loss": {"name": "infonce", "temperature": 0.02}}}
    before = {"loss": {"name": "matryoshka", "dims": [32, 16], "loss": {"name": "infonce", "temperature": 0.02}}}
    assert describe_changes(before, now) == ""
    assert describe_changes({"loss": {**now["loss"], "normalize": False}}, now).startswith("loss ")
    changed = {"loss": {**before["loss"], "dims": [32, 8]}}
    assert describe_changes(changed, now).startswith("loss ")

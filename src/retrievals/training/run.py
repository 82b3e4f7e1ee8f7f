"""The training run every pipeline shares: validate data, resolve the output folder, train, save."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn
from transformers import set_seed

from ..data import TextIdsCollator, TrainDataset, load_records
from ..data.readers import DataError
from ..losses.base import TEXT_IDS
from ..models.base import check_mergeable, check_model_path, is_lora_dir
from ..utils import UsageError, logger
from ..distributed import world
from .arguments import DataArguments, RetrievalTrainingArguments
from .curve import draw_curve
from .fingerprint import flat_settings, run_fingerprint
from .output_dir import prepare_output_dir, run_lock
from .trainer import RetrievalTrainer


def run_training(
    build_model: Callable[[Sequence[Any]], nn.Module],
    make_collator: Callable[[nn.Module, Sequence[Any]], Any],
    loss: nn.Module,
    data_args: DataArguments,
    args: RetrievalTrainingArguments,
    model_path: str = "",
    settings: Sequence[Mapping[str, Any]] = (),
) -> nn.Module:
    """Read and validate the data, check that training will take optimizer steps, settle the output folder
    (refuse, start, or resume the same run: see :mod:`.output_dir`), all before any weights load; then train
    and save the final model (plus a merged copy of LoRA runs with ``--save_merged``) into ``output_dir``.

    ``build_model`` and ``make_collator`` get the validated training records (for what is made from the data: a start
    such as ``--pca_rotation``, a teacher's vectors of the training texts). ``settings`` (the pipeline's model and data arguments) go into the run's fingerprint with the
    data, the base model's weights and the training settings that change the result."""
    if model_path:  # a mistyped path must fail before the output folder is settled (an overwrite retires checkpoints)
        check_model_path(model_path)
    check_adapter_trains(model_path, settings)
    check_one_device_per_process(args)
    check_weights(args, settings, model_path)
    check_evaluation(data_args, args)
    check_candidates(loss, data_args, args)
    if not data_args.train_data:
        raise DataError("--do_train needs --train_data (JSONL/JSON files or folders).")
    records = load_records(
        data_args.train_data, data_args.query_key, data_args.positive_key, data_args.negative_key,
        min_negatives=data_args.train_group_size - 1,
    )
    eval_records = (  # each record's positives ranked among its negatives: without any, every model scored 1.0
        load_records(data_args.eval_data, data_args.query_key, data_args.positive_key, data_args.negative_key,
                     min_negatives=1, needed_for="--eval_data ranks each record's positives among its negatives (with "
                     "none, any model scores 1.0); add negatives to the record or leave it out")
        if data_args.eval_data else None
    )
    if eval_records:  # a held-out curve over training queries measures memorisation, not what the run generalises
        seen = {r.query for r in records}
        shared = [r for r in eval_records if r.query in seen]
        if shared:
            logger.warning("%d of %d --eval_data queries are also training queries (e.g. %s); the held-out curve "
                           "would score what the model memorised.", len(shared), len(eval_records), shared[0].origin)
    dataset = TrainDataset(records, data_args.train_group_size, args.seed, data_args.unfold_each_positive)
    several = sum(len(r.positives) > 1 for r in records)
    if data_args.unfold_each_positive and several and getattr(args, "use_inbatch_neg", False):
        logger.warning("--unfold_each_positive: %d queries have several positives, each now an item of its own; two "
                       "items of one query in a batch are false in-batch negatives of each other (each one's positive "
                       "is scored as the other's negative).", several)
    check_steps(len(dataset), args)
    fingerprint = run_fingerprint(model_path, records, args, *settings, eval_records=eval_records)
    if hasattr(loss, "get_config_dict"):
        fingerprint["loss"] = loss.get_config_dict()  # the training record saved with every checkpoint and model
    rank, size = world()
    # the main process holds the folder's run lock until the run ends (a second run into it is refused); the others
    # run inside the main process's run, and waiting on its lock would deadlock them at the barrier below
    with run_lock(args.output_dir) if rank == 0 else contextlib.nullcontext():
        if rank == 0:  # the main process settles the folder first; the others then read what it decided
            folder = prepare_output_dir(args.output_dir, args.overwrite_output_dir, args.resume, fingerprint,
                                        named_checkpoint=args.resume_from_checkpoint)
        if size > 1:
            torch.distributed.barrier()
        if rank != 0:
            folder = prepare_output_dir(args.output_dir, args.overwrite_output_dir, args.resume, fingerprint, is_main=False)
        checkpoint = args.resume_from_checkpoint or folder.resume_from
        if checkpoint:
            logger.warning("Resuming from %s", checkpoint)
        set_seed(args.seed)
        model = build_model(records)
        if args.save_merged:  # before training, not when the merged copy is written at its end
            check_mergeable(model.backbone, "--save_merged")
        trainer = RetrievalTrainer(model=model, args=args, train_dataset=dataset, data_collator=make_collator(model, records),
                                   loss_fn=loss, eval_records=eval_records, run_folder=folder)
        trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model(args.output_dir)
        if args.save_merged and trainer.is_world_process_zero() and model.retrieval_config.lora_base:
            folder.record("merged")
            model.save_pretrained(Path(args.output_dir) / "merged", merge_lora=True)
        trainer.save_state()
        if trainer.is_world_process_zero():
            folder.record("trainer_state.json")
            draw_curve(trainer.state.log_history, Path(args.output_dir), folder)  # after the save: the saved model's curve
            folder.finish()
    return model


def check_one_device_per_process(args: RetrievalTrainingArguments) -> None:
    """Several GPUs seen by one process (no torchrun): transformers would wrap the model in DataParallel, which
    splits a batch's queries and documents separately (a reranker's groups fail at the last partial batch, an
    embedder loses documents), multiplies the batch and leaves the run's fingerprint and step count without it."""
    if args.n_gpu > 1:
        raise UsageError(f"this process sees {args.n_gpu} GPUs: run one process per GPU with torchrun "
                         f"--nproc_per_node {args.n_gpu} (add --negatives_cross_device true to share in-batch "
                         "negatives), or pick one GPU with CUDA_VISIBLE_DEVICES.")


def check_adapter_trains(model_path: str, settings: Sequence[Mapping[str, Any]]) -> None:
    """A run that starts from a LoRA adapter (``--lora_path``, or a model folder that is one) trains that adapter, which
    loads frozen unless ``--use_lora`` is set: nothing would train (a crash at the first backward, after the output
    folder was set up)."""
    given = flat_settings(settings)
    adapter = given.get("lora_path") or (model_path if is_lora_dir(Path(model_path).expanduser()) else None)
    if adapter and not given.get("use_lora"):
        raise UsageError(f"{adapter} is a LoRA adapter: pass --use_lora true to go on training it (its base model stays "
                         "frozen), or train a merged copy (save_pretrained(..., merge_lora=True)).")


MIXED_PRECISION = {"float16": "fp16", "fp16": "fp16", "half": "fp16", "bfloat16": "bf16", "bf16": "bf16"}  # --dtype: flag


def stored_dtype(model_path: str) -> Optional[str]:
    """The weights dtype a local model folder's ``config.json`` declares (what transformers' ``dtype="auto"`` loads
    them in), or None (no such file, none declared, or a hub id: nothing is fetched to check)."""
    config = Path(model_path).expanduser() / "config.json"
    try:
        declared = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = declared.get("dtype") or declared.get("torch_dtype") if isinstance(declared, dict) else None
    return value if isinstance(value, str) else None


def check_weights(args: RetrievalTrainingArguments, settings: Sequence[Mapping[str, Any]],
                  model_path: Optional[str] = None) -> None:
    """Weight settings that would waste the run: a full fine-tune in half-precision weights loses most updates (a step
    smaller than a weight's rounding step, bfloat16 keeps 8 bits of mantissa, leaves it unchanged), while LoRA keeps
    its adapters in float32 over the half base and mixed precision (--bf16/--fp16) computes in half over float32
    weights; ``--save_merged`` merges a LoRA adapter into its base, and without LoRA did nothing."""
    given = flat_settings(settings)
    dtype = given.get("dtype")
    if dtype == "auto" and model_path:  # the dtype the checkpoint stores, which "auto" keeps
        stored = stored_dtype(model_path)
        if stored in MIXED_PRECISION and not given.get("use_lora"):
            raise UsageError(f"--dtype auto keeps {model_path}'s stored {stored} weights, and would train them in "
                             f"{stored}, where most updates round away (the model barely changes): drop --dtype (float32 "
                             f"weights) and pass --{MIXED_PRECISION[stored]} for mixed precision, or --use_lora true "
                             f"(float32 adapters over a {stored} base).")
    if dtype in MIXED_PRECISION and not given.get("use_lora"):
        raise UsageError(f"--dtype {dtype} would train the weights themselves in {dtype}, where most updates round away "
                         f"(the model barely changes): pass --{MIXED_PRECISION[dtype]} instead (mixed precision over "
                         f"float32 weights), or --use_lora true (float32 adapters over a {dtype} base).")
    if args.save_merged and not given.get("use_lora"):
        raise UsageError("--save_merged saves a LoRA run's adapter merged into its base model: it needs --use_lora true "
                         "(a full fine-tune's model in --output_dir is already a whole model); drop it.")


def check_evaluation(data_args: DataArguments, args: RetrievalTrainingArguments) -> None:
    """Evaluation flags that need held-out records, or records that would never be scored, are refused before
    anything loads (they crashed after the model loaded, or were ignored)."""
    if data_args.eval_data and args.eval_strategy == "no":
        raise UsageError("--eval_data is scored only with --eval_strategy steps (every --eval_steps) or epoch; pass one, "
                         "or drop --eval_data.")
    if not data_args.eval_data and args.eval_strategy != "no":  # transformers has no evaluation of its own for us
        raise UsageError(f"--eval_strategy {getattr(args.eval_strategy, 'value', args.eval_strategy)} scores held-out "
                         "records: pass --eval_data (same format as --train_data), or drop it.")
    best = "--load_best_model_at_end" if args.load_best_model_at_end else "--save_strategy best" \
        if args.save_strategy == "best" else None
    if best and not data_args.eval_data:
        raise UsageError(f"{best} picks checkpoints by their --metric_for_best_model score on --eval_data: pass "
                         "--eval_data (and an --eval_strategy), or drop it.")


def check_candidates(loss: nn.Module, data_args: DataArguments, args: RetrievalTrainingArguments) -> None:
    """Every query must be scored against some candidate besides its positive: over a single candidate the softmax
    is 1 whatever the scores (loss 0, no gradient: the run saved its base model unchanged), and a triplet or a
    group-only loss has no negative (it failed at the first step, after the output folder was set up)."""
    inner = innermost(loss)
    group = data_args.train_group_size
    if group >= 2:
        return
    if not getattr(inner, "use_inbatch_neg", False):
        without = " with --use_inbatch_neg false" if "use_inbatch_neg" in inner.setting_names() else ""
        raise UsageError(f"--loss_fn {inner.name}{without} scores each query against its own group only: it needs "
                         f"--train_group_size >= 2 (a positive and at least one negative), got {group}.")
    processes = args.world_size if getattr(inner, "negatives_cross_device", False) else 1
    if args.per_device_train_batch_size * processes * group == 1:
        raise UsageError(f"--per_device_train_batch_size {args.per_device_train_batch_size} with --train_group_size {group}: "
                         "each query's only candidate is its positive (no in-batch negative), so the loss is 0 and "
                         "nothing trains; raise either (or pass --negatives_cross_device true under torchrun).")


def innermost(loss: nn.Module) -> nn.Module:
    """The loss a wrapper (FLOPS, Matryoshka, a teacher) applies: it scores the batch as that one does."""
    while isinstance(getattr(loss, "loss", None), nn.Module):
        loss = loss.loss
    return loss


def masking_copies(loss: nn.Module, make_collator: Callable[[nn.Module, Sequence[Any]], Any],
                   args: RetrievalTrainingArguments) -> Callable[[nn.Module, Sequence[Any]], Any]:
    """``make_collator`` (model, records) -> collator, whose batches carry the documents' text ids
    (:class:`retrievals.data.TextIdsCollator`) under ``--mask_duplicate_positives``; refused, before anything loads,
    for a loss without a softmax over the batch's documents to leave copies out of (the ids would reach the model)."""
    if not args.mask_duplicate_positives:
        return make_collator
    group_only = getattr(innermost(loss), "use_inbatch_neg", True) is False  # its group's copies were dropped on reading
    if TEXT_IDS not in loss.reads or group_only:
        without = " with --use_inbatch_neg false" if group_only else ""
        raise UsageError(f"--mask_duplicate_positives: --loss_fn {innermost(loss).name}{without} of this model kind has no softmax over the "
                         "batch's documents to leave copies out of (each query scores its own group, whose negatives "
                         "equal to its positive are dropped when the data is read); drop the flag.")
    return lambda model, records: TextIdsCollator(make_collator(model, records))


def check_steps(items: int, args: RetrievalTrainingArguments) -> None:
    """Fail before any weights load when training would take no optimizer step (a model that learned nothing)."""
    # accelerate shards batches, not items: process i takes batches i, i + world, ...; with drop_last a round of
    # batches that is not full for every process is dropped (else it is filled by cycling)
    batch, world_size = args.per_device_train_batch_size, args.world_size
    if args.dataloader_drop_last:
        batches = items // batch // world_size
    else:
        batches = math.ceil(math.ceil(items / batch) / world_size)
    if batches == 0:
        raise DataError(
            f"{items} training item(s) make no full batch of {args.per_device_train_batch_size} x {args.world_size} "
            "process(es) with --dataloader_drop_last True, so training would take no step: add data, lower "
            "--per_device_train_batch_size, or pass --dataloader_drop_last False."
        )

"""The training run every pipeline shares: validate data, resolve the output folder, train, save."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn
from transformers import set_seed

from ..data import TrainDataset, load_records
from ..data.readers import DataError
from ..utils import logger
from .arguments import DataArguments, RetrievalTrainingArguments
from .output_dir import resolve_output_dir
from .trainer import RetrievalTrainer


def run_training(
    build_model: Callable[[], nn.Module],
    make_collator: Callable[[nn.Module], Any],
    loss: nn.Module,
    data_args: DataArguments,
    args: RetrievalTrainingArguments,
) -> nn.Module:
    """Read and validate the data (before any model is loaded), refuse to replace a finished model
    without ``--overwrite_output_dir``, resume an unfinished run, train, and save the final model
    (plus a merged copy of LoRA runs with ``--save_merged``) into ``output_dir``."""
    if not data_args.train_data:
        raise DataError("--do_train needs --train_data (JSONL/JSON files or folders).")
    records = load_records(
        data_args.train_data, data_args.query_key, data_args.positive_key, data_args.negative_key,
        min_negatives=data_args.train_group_size - 1,
    )
    eval_records = (
        load_records(data_args.eval_data, data_args.query_key, data_args.positive_key, data_args.negative_key)
        if data_args.eval_data else None
    )
    checkpoint = args.resume_from_checkpoint or resolve_output_dir(args.output_dir, args.overwrite_output_dir, args.resume)
    if checkpoint:
        logger.warning("Resuming from %s", checkpoint)
    set_seed(args.seed)
    model = build_model()
    dataset = TrainDataset(records, data_args.train_group_size, args.seed, data_args.unfold_each_positive)
    trainer = RetrievalTrainer(model=model, args=args, train_dataset=dataset, data_collator=make_collator(model), loss_fn=loss,
                               eval_records=eval_records)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(args.output_dir)
    if args.save_merged and trainer.is_world_process_zero() and model.retrieval_config.lora_base:
        model.save_pretrained(Path(args.output_dir) / "merged", merge_lora=True)
    trainer.save_state()
    return model

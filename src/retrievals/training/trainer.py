"""The ``transformers.Trainer`` subclass shared by every model type."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME

from ..utils import logger


class _SetEpoch(TrainerCallback):
    """Tell the dataset which epoch it is, so group sampling changes per epoch and is reproducible."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: D401
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(int(state.epoch or 0))


class RetrievalTrainer(Trainer):
    """Trainer whose loss is a separate module applied to the model's outputs.

    The model's ``forward`` returns embeddings (or scores); ``loss_fn(*outputs)`` is the loss.
    Saving and checkpoint loading go through the model's own ``save_pretrained``/``load_weights``,
    so every checkpoint is a folder that ``from_pretrained`` loads.
    """

    def __init__(self, *args: Any, loss_fn: nn.Module, eval_records: Optional[list] = None, **kwargs: Any) -> None:
        if eval_records:  # Trainer checks that an eval dataset exists when --eval_strategy is set
            kwargs.setdefault("eval_dataset", eval_records)
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.eval_records = eval_records
        if self.train_dataset is not None:
            self.add_callback(_SetEpoch(self.train_dataset))
        self._last_finite_loss: Optional[torch.Tensor] = None
        self._non_finite_steps: Optional[torch.Tensor] = None

    def training_step(self, model: nn.Module, inputs: Dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        """transformers' step; unless ``--logging_nan_inf_filter true`` (transformers' own check, a host sync every
        step), a nan/inf step loss is replaced on the device by the last finite one and counted; :meth:`log`
        reports the count. So the logged loss stays meaningful, with no per-step sync."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.args.logging_nan_inf_filter:
            return loss
        finite = torch.isfinite(loss)
        if self._non_finite_steps is None:
            self._non_finite_steps = torch.zeros((), dtype=torch.long, device=loss.device)
            self._last_finite_loss = torch.full_like(loss, float("nan"))
        self._non_finite_steps += (~finite).long()
        self._last_finite_loss = torch.where(finite, loss, self._last_finite_loss)
        return self._last_finite_loss

    def log(self, logs: Dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._non_finite_steps is not None:
            count = int(self._non_finite_steps.item())  # logging steps already wait for the GPU
            if count:
                logger.warning(
                    "%d training step(s) up to step %d had a nan/inf loss (logged as the previous finite loss): lower "
                    "--learning_rate, or use --bf16 instead of --fp16", count, self.state.global_step,
                )
                self._non_finite_steps.zero_()
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model: nn.Module, inputs: Dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = self.loss_fn(*self.loss_inputs(outputs))
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def loss_inputs(outputs: Any) -> tuple:
        """The output's tensors in field order: (query, document embeddings) or (scores, targets)."""
        return outputs.to_tuple()

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> Dict[str, float]:
        """With held-out records (``--eval_data``): reranking-style MAP / MRR@10 / nDCG@10 of the current
        model, logged with the training metrics. Without: the Trainer's own evaluation."""
        if not self.eval_records:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        from ..evaluation.reranking import evaluate_reranking

        model = self.accelerator.unwrap_model(self.model)
        metrics = {f"{metric_key_prefix}_{k}": round(v, 4) for k, v in evaluate_reranking(model, self.eval_records).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        (model or self.model).load_weights(resume_from_checkpoint)

"""The ``transformers.Trainer`` subclass shared by every model type."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..files import atomic_write_json, saved_entries
from ..utils import logger
from .curve import TrainingCurve
from .fingerprint import FINGERPRINT_NAME
from .output_dir import RunFolder


class _SetEpoch(TrainerCallback):
    """Tell the dataset which epoch it is, so group sampling changes per epoch and is reproducible."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: D401
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(int(state.epoch or 0))


class RetrievalTrainer(Trainer):
    """Trainer whose loss is a separate module applied to the model's outputs.

    The model's ``forward`` returns a typed output (embeddings, or scores and targets); the loss
    (:class:`retrievals.losses.RetrievalLoss`) takes the fields it declares, by name.
    Saving and checkpoint loading go through the model's own ``save_pretrained``/``load_weights``,
    so every checkpoint is a folder that ``from_pretrained`` loads.
    """

    def __init__(self, *args: Any, loss_fn: nn.Module, eval_records: Optional[list] = None,
                 run_folder: Optional[RunFolder] = None, **kwargs: Any) -> None:
        if eval_records:  # Trainer checks that an eval dataset exists when --eval_strategy is set
            kwargs.setdefault("eval_dataset", eval_records)
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.eval_records = eval_records
        self.run_folder = run_folder
        if self.train_dataset is not None:
            self.add_callback(_SetEpoch(self.train_dataset))
        if run_folder is not None:  # a pipeline run: draw its curve into its folder
            self.add_callback(TrainingCurve(run_folder))
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
        # fields the loss reads straight from the batch (a teacher's vectors) are not the model's inputs
        extra = {k: inputs[k] for k in self.loss_fn.reads if k in inputs}
        outputs = model(**{k: v for k, v in inputs.items() if k not in extra})
        loss = self.loss_fn(**self.loss_fn.inputs_from(outputs, extra))  # the fields the loss reads, by name
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> Dict[str, float]:
        """With held-out records (``--eval_data``): reranking-style MAP / MRR@10 / nDCG@10 of the current
        model, logged with the training metrics. Without: the Trainer's own evaluation."""
        if not self.eval_records:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        from ..evaluation.reranking import evaluate_reranking

        model = self.accelerator.unwrap_model(self.model)
        scores = evaluate_reranking(model, self.eval_records, batch_size=self.args.per_device_eval_batch_size)
        metrics = {f"{metric_key_prefix}_{k}": round(v, 4) for k, v in scores.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        """Save a checkpoint or the final model: refused when a weight is nan/inf (a diverged run must not
        replace a good model); the run's fingerprint is saved beside the weights."""
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        check_finite(model)  # on every process: all of them stop, not only the one that writes
        if not self.args.should_save:  # one writer (transformers' own _save checks this too)
            return
        final = self.run_folder is not None and Path(output_dir).resolve() == self.run_folder.path.resolve()
        model.save_pretrained(output_dir)
        if final:
            self.run_folder.record(*saved_entries(output_dir), TRAINING_ARGS_NAME, FINGERPRINT_NAME)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self.run_folder is not None:
            atomic_write_json(os.path.join(output_dir, FINGERPRINT_NAME), self.run_folder.fingerprint)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        if self.run_folder is not None and self.is_world_process_zero():
            self.run_folder.record(f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")  # ours before it exists
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        (model or self.model).load_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """``--load_best_model_at_end``: the best checkpoint's weights through the model's own loader (transformers'
        matches the bare backbone's key names, which a retrieval model's state dict does not use)."""
        logger.info("Loading the best model from %s (score: %s).", self.state.best_model_checkpoint, self.state.best_metric)
        self.accelerator.unwrap_model(self.model).load_weights(self.state.best_model_checkpoint)


class NonFiniteWeightsError(RuntimeError):
    """Training produced nan/inf weights; nothing was saved over the previous model."""


def check_finite(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise NonFiniteWeightsError(
                f"weight {name} became nan/inf during training, so the model was not saved (an earlier model in the "
                "output folder is kept): lower --learning_rate, use --bf16 instead of --fp16, or set --max_grad_norm."
            )

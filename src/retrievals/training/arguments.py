"""``TrainingArguments`` with the retrieval settings and a CPU fallback for mixed precision."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
from transformers import TrainingArguments

from ..utils import DTYPE_FLAG_ALIASES, at_least, logger  # noqa: F401 (at_least re-exported for the pipelines)
from ..distributed import world
from ..models.precision import cpu_has_native_bf16
from ..utils import UsageError, finite_number

AUTO_WORKERS = 4  # data-loader workers used by default on a GPU machine (tokenizing in the main process starves the GPU)
SAMPLING_STRATEGIES = ("random", "sequential")  # of transformers' --train_sampling_strategy, those that fit our items
EVAL_METRICS = ("map", "mrr@10", "ndcg@10")  # what the trainer's evaluation of --eval_data reports (evaluate_reranking)
METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")  # transformers' schedulers stepped on an evaluation's metric
DEFAULT_BEST_METRIC = "ndcg@10"  # --metric_for_best_model when --load_best_model_at_end or --save_strategy best need one


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def training_gpu(use_cpu: bool) -> Tuple[bool, bool]:
    """Whether a run trains on a CUDA GPU (one is there and ``--use_cpu`` is off), and whether that GPU has bf16."""
    gpu = torch.cuda.is_available() and not use_cpu
    return gpu, gpu and torch.cuda.is_bf16_supported()


def auto_precision(fp16: bool, bf16: bool, auto: bool, gpu: bool, gpu_bf16: bool) -> Tuple[bool, bool]:
    """``(fp16, bf16)`` a run trains with: the flags as given, or, on a CUDA GPU (``gpu``) with neither flag and
    ``--auto_mixed_precision`` on, bf16 (fp16 where the GPU lacks it).

    >>> auto_precision(False, False, True, True, True), auto_precision(False, False, True, True, False)
    ((False, True), (True, False))
    >>> auto_precision(False, False, True, False, False), auto_precision(True, False, True, True, True)
    ((False, False), (True, False))
    >>> auto_precision(False, False, False, True, True)
    (False, False)
    """
    if fp16 or bf16 or not auto or not gpu:
        return fp16, bf16
    logger.info("A CUDA GPU and neither --fp16 nor --bf16: training under %s autocast (--auto_mixed_precision false: "
                "float32).", "bf16" if gpu_bf16 else "fp16")
    return not gpu_bf16, gpu_bf16


@dataclass
class RetrievalTrainingArguments(TrainingArguments):
    """Every ``transformers.TrainingArguments`` flag plus the loss settings.

    With a CUDA GPU and neither ``--fp16`` nor ``--bf16``, training runs under bf16 autocast (fp16 where the GPU lacks
    bf16; ``--auto_mixed_precision false``: float32), as every current GPU's fast path. Without a CUDA GPU, ``--bf16``
    trains under bf16 autocast on a CPU that computes bf16 in hardware (transformers' ``use_cpu`` path), and
    ``--fp16``, or ``--bf16`` on any other CPU, warns and trains in float32 instead of failing.
    """

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow replacing a finished model already in output_dir."}
    )
    resume: bool = field(
        default=True, metadata={"help": "Resume from the last complete checkpoint of an unfinished run in output_dir."}
    )
    loss_fn: str = field(default="infonce", metadata={"help": "Loss name (see retrievals.losses)."})
    temperature: Optional[float] = field(default=None, metadata={
        "help": "Softmax temperature of contrastive losses (default: 0.02 for cosines; 1 for raw dot products: sparse "
                "embedders, and dense ones whose embeddings are not normalised)."})
    margin: float = field(default=0.2, metadata={"help": "Margin of margin-based losses."})
    use_inbatch_neg: bool = field(default=True, metadata={"help": "Use every document in the batch as a negative."})
    negatives_cross_device: bool = field(
        default=False, metadata={"help": "Share in-batch negatives across processes (torchrun)."}
    )
    dataloader_num_workers: int = field(
        default=-1,
        metadata={"help": "Data-loader worker processes, which tokenize while the GPU trains. -1 (default): "
                          f"{AUTO_WORKERS} with a CUDA GPU and at least {2 * AUTO_WORKERS} CPU cores, else 0 (main process)."},
    )
    pad_to_multiple_of: Optional[int] = field(
        default=None,
        metadata={"help": "Pad training batches to a multiple of this many tokens (e.g. 64 with --torch_compile: few "
                          "distinct shapes, so CUDA graphs are recorded once per shape). Default: the batch's longest."},
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "Use transformers' filter that leaves nan/inf step losses out of the logged loss. It checks "
                          "every step, which stalls the CPU until the GPU finishes the step. Off (default): our trainer "
                          "does the same on the GPU (the last finite loss stands in) and the log warns how many steps "
                          "had one."},
    )
    save_merged: bool = field(default=False, metadata={"help": "LoRA runs: also save a merged model in output_dir/merged."})
    mask_duplicate_positives: bool = field(default=False, metadata={
        "help": "Embedders, and ColBERT with --use_inbatch_neg: leave out of each query's softmax every other copy of "
                "its positive's text in the batch (FAQ data where queries share an answer: another query's copy of "
                "the same document is no negative). Off by default, as in sentence-transformers and FlagEmbedding "
                "(the README's figures were trained without it)."})
    matryoshka_dims: List[int] = field(default_factory=list, metadata={
        "help": "Embedders: apply the loss at these leading dimensions only (e.g. 384 256 128 64; list the full size to "
                "train it too), so the model serves each size (encode(..., truncate_dim=d), the server's dimensions)."})
    matryoshka_weights: List[float] = field(default_factory=list, metadata={"help": "One weight per --matryoshka_dims (default 1)."})
    matryoshka_distill: float = field(default=0.0, metadata={
        "help": "With --matryoshka_dims: weight of self-distillation, each smaller size matching the full vectors' "
                "softmax over the batch's documents (KL divergence; 0: off)."})

    auto_mixed_precision: bool = field(default=True, metadata={
        "help": "With a CUDA GPU and neither --fp16 nor --bf16: train under bf16 autocast (fp16 where the GPU lacks "
                "bf16). false: float32 unless a flag asks. No effect without a CUDA GPU (or with --use_cpu)."})

    def __post_init__(self) -> None:
        if self.fp16 and self.bf16:  # transformers' own ValueError would surface as a traceback
            raise UsageError("--fp16 and --bf16 ask for two mixed precisions: pass one (--bf16 where the device has it).")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not mps_available():
            # torchrun on CPUs: unless told it trains on the CPU, accelerate starts the process group but reports one
            # process of one (no DDP, no sharding): N independent trainings on the same batches, rank 0's saved
            self.use_cpu = True
        self.fp16, self.bf16 = auto_precision(self.fp16, self.bf16, self.auto_mixed_precision, *training_gpu(self.use_cpu))
        if self.bf16 and not torch.cuda.is_available() and not mps_available() and cpu_has_native_bf16():
            # transformers runs bf16 autocast on a CPU only when told it trains there (use_cpu); no GPU to lose
            self.use_cpu = True
            logger.info("--bf16 without a CUDA GPU: training under bf16 autocast on this CPU, which computes bf16 "
                        "in hardware (float32 weights and optimizer state).")
        elif (self.fp16 or self.bf16) and not torch.cuda.is_available():
            logger.warning(
                "--%s asks for mixed precision but no CUDA GPU is available: training in float32 instead.",
                "fp16" if self.fp16 else "bf16",
            )
            self.fp16 = self.bf16 = False
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise UsageError(f"--pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}.")
        self._check_numbers()
        metric_scheduler = str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)) in METRIC_SCHEDULERS
        if (self.load_best_model_at_end or self.save_strategy == "best" or metric_scheduler) \
                and self.metric_for_best_model is None:
            # transformers would pick the eval loss, which the evaluation of --eval_data does not report (a crash
            # at the first evaluation): rank checkpoints (and step a metric's scheduler) by nDCG@10 (transformers
            # then sets greater_is_better)
            self.metric_for_best_model = DEFAULT_BEST_METRIC
        if self.dataloader_num_workers < 0:
            enough_cores = (os.cpu_count() or 1) >= 2 * AUTO_WORKERS
            self.dataloader_num_workers = AUTO_WORKERS if torch.cuda.is_available() and enough_cores else 0
        if self.dataloader_persistent_workers and self.dataloader_num_workers > 0:
            # each worker keeps its own copy of the data set, which the epoch never reaches: every epoch would
            # train on epoch 0's sampled positives and negatives
            raise UsageError("--dataloader_persistent_workers is not supported: the workers would keep sampling epoch "
                             "0's groups in every epoch; drop it (workers restart each epoch).")
        self.remove_unused_columns = False  # our collators read raw text fields
        super().__post_init__()
        if metric_scheduler:
            self._scheduler_mode()

    def _scheduler_mode(self) -> None:
        """transformers steps a metric's scheduler on --metric_for_best_model in torch's default mode "min": with nDCG
        or MAP it cut the learning rate each time the model improved. Its mode follows greater_is_better."""
        mode = "max" if self.greater_is_better else "min"
        kwargs = dict(self.lr_scheduler_kwargs or {})
        if kwargs.get("mode", mode) != mode:
            raise UsageError(f"--lr_scheduler_kwargs mode {kwargs['mode']!r} contradicts --metric_for_best_model "
                             f"{self.metric_for_best_model} (greater_is_better={self.greater_is_better}): the schedule "
                             "would take an improvement for a plateau. Drop mode (it follows greater_is_better).")
        self.lr_scheduler_kwargs = {**kwargs, "mode": mode}


    def _check_numbers(self) -> None:
        """Every numeric flag is checked here, before any data or weights load: a value that would break
        training or be silently ignored is an error naming the flag."""
        at_least("--per_device_train_batch_size", self.per_device_train_batch_size, 1)
        at_least("--per_device_eval_batch_size", self.per_device_eval_batch_size, 1)
        at_least("--gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        if self.max_steps == 0 or self.max_steps < -1:
            raise UsageError(f"--max_steps must be >= 1 (or -1: train --num_train_epochs), got {self.max_steps}; "
                             "0 steps would save an untrained model.")
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise UsageError(f"--num_train_epochs must be > 0, got {self.num_train_epochs}.")
        if not self.learning_rate > 0:
            raise UsageError(f"--learning_rate must be > 0, got {self.learning_rate}; the model would learn nothing.")
        # transformers' own flags: inf epochs overflowed after the model loaded, a nan learning rate, weight decay or
        # gradient norm trained the whole run into nan weights (refused only at the first save), and a negative
        # weight decay grew the weights instead
        for flag, value, positive in (("--learning_rate", self.learning_rate, True),
                                      ("--num_train_epochs", self.num_train_epochs, True),
                                      ("--warmup_steps", self.warmup_steps, False),
                                      ("--weight_decay", self.weight_decay, False),
                                      ("--max_grad_norm", self.max_grad_norm, False),
                                      ("--adam_epsilon", self.adam_epsilon, True)):
            if value is not None:
                finite_number(flag, value, positive=positive)
        for flag, value in (("--adam_beta1", self.adam_beta1), ("--adam_beta2", self.adam_beta2)):
            if not 0 <= value < 1:  # torch's optimizer refuses them only at its construction, after the model loaded
                raise UsageError(f"{flag} must be in [0, 1), got {value}.")
        for flag, value in (("--seed", self.seed), ("--data_seed", self.data_seed)):
            if value is not None and not 0 <= value < 2**32:  # numpy's generator refused it after the folder was set up
                raise UsageError(f"{flag} must be in [0, 2**32), got {value}.")
        if self.temperature is not None:  # inf: every score 0, no gradient
            finite_number("--temperature", self.temperature, positive=True)
        if self.negatives_cross_device and not self.use_inbatch_neg:
            raise UsageError("--negatives_cross_device shares in-batch negatives across processes: it needs "
                             "--use_inbatch_neg true (without it each query is scored against its own group only).")
        finite_number("--margin", self.margin)  # nan/inf made every step's loss nan/inf
        for dim in self.matryoshka_dims:
            at_least("--matryoshka_dims", dim, 1)
        if self.matryoshka_weights and len(self.matryoshka_weights) != len(self.matryoshka_dims):
            raise UsageError(f"--matryoshka_weights needs one weight per --matryoshka_dims ({len(self.matryoshka_dims)}).")
        for weight in self.matryoshka_weights:  # nan/inf made every step's loss nan/inf
            finite_number("--matryoshka_weights", weight, positive=True)
        finite_number("--matryoshka_distill", self.matryoshka_distill)
        if self.matryoshka_distill and not self.matryoshka_dims:
            raise UsageError("--matryoshka_distill needs --matryoshka_dims (the sizes to distil into).")
        if self.matryoshka_dims and self.loss_registry != "embedding":
            raise UsageError("--matryoshka_dims is for embedders.")
        if not self.warmup_steps >= 0:
            raise UsageError(f"--warmup_steps must be >= 0, got {self.warmup_steps}.")
        self._check_unsupported()
        self._check_loss_settings()

    def _check_unsupported(self) -> None:
        """transformers flags our trainer cannot honour: refused by name, not silently ignored nor crashing once the
        output folder is set up."""
        if self.label_smoothing_factor:  # our losses take their targets themselves: transformers' smoothing never runs
            raise UsageError(f"--label_smoothing_factor {self.label_smoothing_factor} is not supported (the retrieval "
                             "losses would ignore it); drop it.")
        if self.neftune_noise_alpha is not None:  # it hooks the input embeddings of a transformers model, not ours
            raise UsageError(f"--neftune_noise_alpha {self.neftune_noise_alpha} is not supported by retrieval training; "
                             "drop it.")
        if self.train_sampling_strategy not in SAMPLING_STRATEGIES:  # they read token lengths our text items lack
            raise UsageError(f"--train_sampling_strategy {self.train_sampling_strategy} is not supported (it groups "
                             f"tokenized items by length; ours are raw texts): choose one of {list(SAMPLING_STRATEGIES)}.")
        if self.eval_strategy != "no" and self.metric_for_best_model and \
                self.metric_for_best_model.removeprefix("eval_") not in EVAL_METRICS:
            raise UsageError(f"--metric_for_best_model {self.metric_for_best_model}: the evaluation of --eval_data scores "
                             f"{', '.join(EVAL_METRICS)} (no loss); choose one of those.")

    def _check_loss_settings(self) -> None:
        """A loss setting given but not used by the chosen loss is an error, not a silent no-op. The model kind
        (and so the exact loss class) may not be known yet: a setting passes if some loss of that name takes it."""
        from ..losses import LOSS_FAMILIES, loss_class

        families = ["embedding"] if self.loss_registry == "embedding" else ["ranking", "late_interaction"]
        candidates = [LOSS_FAMILIES[f] for f in families if self.loss_fn.lower().replace("-", "_") in LOSS_FAMILIES[f]]
        if not candidates:
            loss_class(self.loss_fn, LOSS_FAMILIES[families[0]])  # the error that lists the choices
        accepted = {name for registry in candidates for name in loss_class(self.loss_fn, registry).setting_names()}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("temperature", "margin", "use_inbatch_neg", "negatives_cross_device"):
            if getattr(self, name) != defaults[name] and name not in accepted:
                raise UsageError(f"--{name} does not apply to --loss_fn {self.loss_fn} (it would be ignored); drop it "
                                 "or choose a loss that uses it.")

    loss_registry: ClassVar[str] = "embedding"

    # transformers (5.x) on CPU under torchrun, unless use_cpu is set (__post_init__ sets it there), reports every
    # process as process 0 of 1 although the process group is up: every process would save, into the same folder.
    # The ranks come from torch.distributed when it runs, whatever transformers reports.
    @property
    def process_index(self) -> int:
        rank, size = world()
        return rank if size > 1 else super().process_index

    @property
    def world_size(self) -> int:
        rank, size = world()
        return size if size > 1 else super().world_size

    @property
    def local_process_index(self) -> int:
        rank, size = world()
        return int(os.environ.get("LOCAL_RANK", rank)) if size > 1 else super().local_process_index


@dataclass
class DataArguments:
    """Where the training data is and how to read and group it."""

    train_data: list[str] = field(default_factory=list, metadata={"help": "JSONL/JSON files or folders of them."})
    query_key: str = field(default="query")
    positive_key: str = field(default="positive")
    negative_key: str = field(default="negative")
    train_group_size: int = field(default=2, metadata={"help": "1 positive + (n - 1) negatives per query."})
    unfold_each_positive: bool = field(default=False, metadata={"help": "One training item per (query, positive)."})
    query_max_length: int | None = field(default=None, metadata={"help": "Max tokens of a query (with instruction)."})
    document_max_length: int | None = field(default=None, metadata={"help": "Max tokens of a document."})
    max_length: int | None = field(default=None, metadata={"help": "Sets both max lengths when given (rerankers: the input length)."})
    max_len: int | None = field(default=None, metadata={"help": "Same as --max_length."})
    eval_data: list[str] = field(
        default_factory=list,
        metadata={"help": "Held-out records (same format as train_data) scored every --eval_steps: MAP, MRR@10, nDCG@10."},
    )

    def __post_init__(self) -> None:
        for flag in ("query_max_length", "document_max_length", "max_length", "max_len"):
            at_least(f"--{flag}", getattr(self, flag), 1)
        at_least("--train_group_size", self.train_group_size, 1)
        if self.max_len is not None:
            if self.max_length is not None and self.max_length != self.max_len:
                raise UsageError(f"--max_len {self.max_len} and --max_length {self.max_length} disagree; pass one.")
            self.max_length = self.max_len


@dataclass
class ModelLoadingArguments:
    """Flags every pipeline uses to load its model: weights, tokenizer, LoRA, dtype."""

    model_name_or_path: str = field(metadata={"help": "Local folder or hub id of the base model."})
    tokenizer_name: Optional[str] = None
    use_lora: bool = False
    lora_path: Optional[str] = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: Optional[List[str]] = None
    dtype: Optional[str] = field(default=None, metadata={"aliases": DTYPE_FLAG_ALIASES,
                                                         "help": "Weights dtype: float32 | bfloat16 | float16 (also --model_dtype)."})
    trust_remote_code: bool = False
    backbone_only: bool = field(default=False, metadata={
        "help": "Take only the transformer weights of --model_name_or_path, a model of another kind saved by this "
                "library (a fine-tuned embedder's encoder to start a cross-encoder or ColBERT); head and settings start fresh."})

    def __post_init__(self) -> None:
        at_least("--lora_r", self.lora_r, 1)
        if not self.lora_alpha > 0:
            raise UsageError(f"--lora_alpha must be > 0, got {self.lora_alpha}.")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.lora_target_modules and not self.use_lora:
            raise UsageError("--lora_target_modules applies to new adapters: pass --use_lora True with it.")

    def loading_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of ``from_pretrained``; the model stays on CPU (the Trainer moves it)."""
        return {"use_lora": self.use_lora, "lora_path": self.lora_path, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha,
                "lora_dropout": self.lora_dropout, "lora_target_modules": self.lora_target_modules,
                "tokenizer_name": self.tokenizer_name, "dtype": self.dtype, "device": "cpu",
                "trust_remote_code": self.trust_remote_code, "backbone_only": self.backbone_only}

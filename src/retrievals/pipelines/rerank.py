"""Train a reranker (cross-encoder, ColBERT or LLM): ``python -m retrievals.pipelines.rerank --help``.

Works as written under ``torchrun --nproc_per_node N -m retrievals.pipelines.rerank ...``. The model
lands in ``--output_dir`` and loads with ``retrievals.AutoModelForRanking.from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, List, Optional, Sequence

from ..losses import LOSS_FAMILIES, RANKING_LOSSES, loss_from_args
from ..losses.base import ContrastiveSettings
from ..models.rankers import (
    AutoModelForRanking,
    BaseRanker,
    RANKERS,
    infer_model_type,
    normalize_model_type,
)
from ..training import RetrievalTrainingArguments
from ..training.arguments import DataArguments, ModelLoadingArguments
from ..distributed import shutdown_distributed
from ..training.run import masking_copies, run_training
from ..training.teacher import TeacherArguments
from ..utils import UsageError, unescape_cli
from .cli import run_cli

@dataclass
class RerankModelArguments(TeacherArguments, ModelLoadingArguments):
    model_type: Optional[str] = field(default=None, metadata={"help": "cross-encoder | colbert | llm (default: inferred)."})
    causal_lm: bool = field(default=False, metadata={"help": "Score with the LM head's target-token logit (model_type llm)."})
    task_prompt: Optional[str] = field(default=None, metadata={"help": "LLM: the question after query and document."})
    query_instruction: Optional[str] = field(default=None, metadata={"help": "Prefix, or template with {}."})
    document_instruction: Optional[str] = None
    target_token: Optional[str] = field(default=None, metadata={"help": "LLM: token whose logit is the score (Yes)."})
    negative_token: Optional[str] = None
    score_mode: Optional[str] = field(default=None, metadata={"help": "LLM: yes | yes_minus_no."})
    colbert_dim: Optional[int] = field(default=None, metadata={"help": "ColBERT: token vector size (<= 0: hidden size)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_teacher()  # before any data or weights load


@dataclass
class RerankTrainingArguments(RetrievalTrainingArguments):
    loss_fn: str = field(default="ce", metadata={"help": f"One of {sorted(RANKING_LOSSES)}."})
    temperature: Optional[float] = field(
        default=None, metadata={"help": "Score temperature (default: the kind's, 1 for cross-encoder/llm, 0.05 for colbert)."}
    )
    use_inbatch_neg: bool = field(default=False, metadata={"help": "ColBERT: every document of the batch is a candidate."})
    negatives_cross_device: bool = field(default=False, metadata={
        "help": "ColBERT with --use_inbatch_neg: the documents of every process are candidates (torchrun)."})

    loss_registry: ClassVar[str] = "ranking"


def resolve_model_type(model_args: RerankModelArguments) -> str:
    if model_args.model_type:
        kind = normalize_model_type(model_args.model_type)
    elif model_args.causal_lm:
        kind = "llm"
    else:
        kind = infer_model_type(model_args.model_name_or_path, model_args.trust_remote_code)
    if model_args.causal_lm and kind != "llm":
        raise UsageError(f"--causal_lm True scores with the LM head: use --model_type llm, not {kind}.")
    return kind


# flags that are config fields of some reranker kinds: given for a kind without that field, they are refused
KIND_FLAGS = ("task_prompt", "target_token", "negative_token", "score_mode", "colbert_dim")


def model_settings(model_args: RerankModelArguments, data_args: DataArguments, kind: str) -> dict:
    """The config settings given on the command line for a reranker of ``kind``; a flag the kind's config does
    not have is refused (checked before anything loads)."""
    cls = RANKERS[kind]
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    given = (data_args.max_length, data_args.document_max_length)
    if None not in given and given[0] != given[1]:  # 128 was dropped for 512 silently (embedders take the opposite)
        raise UsageError(f"--max_length {given[0]} and --document_max_length {given[1]}: a reranker reads query and "
                         "document as one input, whose length either flag sets; pass one.")
    settings = {
        "query_instruction": unescape_cli(model_args.query_instruction),
        "document_instruction": unescape_cli(model_args.document_instruction),
        "query_max_length": data_args.query_max_length,
        "max_length": data_args.max_length or data_args.document_max_length,
    }
    for flag in KIND_FLAGS:
        value = getattr(model_args, flag)
        if value is not None and flag not in fields:
            raise UsageError(f"--{flag} does not apply to --model_type {kind}.")
        settings[flag] = unescape_cli(value) if isinstance(value, str) else value
    return {k: v for k, v in settings.items() if v is not None}


def build_model(model_args: RerankModelArguments, data_args: DataArguments, kind: str) -> BaseRanker:
    """The reranker of ``kind`` with every setting given on the command line."""
    return AutoModelForRanking.from_pretrained(model_args.model_name_or_path, model_type=kind, **model_args.loading_kwargs(),
                                               **model_settings(model_args, data_args, kind))


def train(model_args: RerankModelArguments, data_args: DataArguments, args: RerankTrainingArguments) -> BaseRanker:
    """Train the reranker; each kind's defaults (temperature, in-batch negatives) come from its class."""
    kind = resolve_model_type(model_args)
    cls = RANKERS[kind]
    model_settings(model_args, data_args, kind)  # a flag of another kind fails here, before anything loads
    temperature = args.temperature if args.temperature is not None else cls.default_temperature
    loss = loss_from_args(args.loss_fn, LOSS_FAMILIES[cls.loss_family], args, temperature=temperature)
    for flag in ("use_inbatch_neg", "negatives_cross_device"):  # negatives are the loss's: it must take the setting
        if getattr(args, flag) and flag not in loss.setting_names():
            able = [k for k, c in RANKERS.items() if flag in LOSS_FAMILIES[c.loss_family].get(loss.name, type(loss)).setting_names()]
            raise UsageError(f"--{flag} true is not supported by {kind} with --loss_fn {loss.name} (it is by {able}).")
    if model_args.teacher_model and data_args.train_group_size < 2:  # a softmax over one document: nothing to learn
        raise UsageError("--teacher_model needs --train_group_size >= 2: the reranker learns the teacher's ranking of "
                         "each query's group.")
    if data_args.train_group_size < 2 and not args.use_inbatch_neg:  # every label would be the positive's
        raise UsageError(f"--loss_fn {loss.name} needs --train_group_size >= 2 (a positive and at least one negative) "
                         "without --use_inbatch_neg.")
    # the teacher is an embedder: its cosine scores at the temperature embedders train at here, unless told
    loss, collator = model_args.attach_teacher(
        loss, masking_copies(loss, lambda model, records: model.processor.with_pad_to_multiple_of(args.pad_to_multiple_of), args),
        data_args.query_max_length or data_args.max_length, data_args.max_length or data_args.document_max_length,
        ContrastiveSettings.temperature)

    def build(records: Sequence[Any]) -> BaseRanker:
        return build_model(model_args, data_args, kind)

    return run_training(build, collator, loss, data_args, args, model_path=model_args.model_name_or_path,
                        settings=(asdict(model_args), asdict(data_args), {"model_type": kind}, *model_args.teacher_settings()))


def _main(model_args: RerankModelArguments, data_args: DataArguments, args: RerankTrainingArguments) -> None:
    if args.should_log:
        logging.getLogger().setLevel(logging.INFO)
    if not (args.do_train or data_args.train_data):
        raise UsageError("nothing to do: pass --train_data (and --do_train)")
    train(model_args, data_args, args)
    shutdown_distributed()


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli([RerankModelArguments, DataArguments, RerankTrainingArguments], _main, argv)


if __name__ == "__main__":
    sys.exit(main())

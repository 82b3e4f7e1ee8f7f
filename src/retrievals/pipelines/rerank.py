"""Train a reranker (cross-encoder, ColBERT or LLM): ``python -m retrievals.pipelines.rerank --help``.

Works as written under ``torchrun --nproc_per_node N -m retrievals.pipelines.rerank ...``. The model
lands in ``--output_dir`` and loads with ``retrievals.AutoModelForRanking.from_pretrained``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import ClassVar, List, Optional

from ..losses import RANKING_LOSSES, get_loss
from ..models.rankers import (
    AutoModelForRanking,
    BaseRanker,
    ColBERT,
    infer_model_type,
    normalize_model_type,
)
from ..training import RetrievalTrainingArguments
from ..training.arguments import DataArguments, ModelLoadingArguments
from ..distributed import shutdown_distributed
from ..training.run import run_training
from ..utils import unescape_cli
from .cli import run_cli

DEFAULT_TEMPERATURE = {"cross-encoder": 1.0, "llm": 1.0, "colbert": 0.05}


@dataclass
class RerankModelArguments(ModelLoadingArguments):
    model_type: Optional[str] = field(default=None, metadata={"help": "cross-encoder | colbert | llm (default: inferred)."})
    causal_lm: bool = field(default=False, metadata={"help": "Score with the LM head's target-token logit (model_type llm)."})
    task_prompt: Optional[str] = field(default=None, metadata={"help": "LLM: the question after query and document."})
    query_instruction: Optional[str] = field(default=None, metadata={"help": "Prefix, or template with {}."})
    document_instruction: Optional[str] = None
    target_token: Optional[str] = field(default=None, metadata={"help": "LLM: token whose logit is the score (Yes)."})
    negative_token: Optional[str] = None
    score_mode: Optional[str] = field(default=None, metadata={"help": "LLM: yes | yes_minus_no."})
    colbert_dim: Optional[int] = field(default=None, metadata={"help": "ColBERT: token vector size (<= 0: hidden size)."})


@dataclass
class RerankTrainingArguments(RetrievalTrainingArguments):
    loss_fn: str = field(default="ce", metadata={"help": f"One of {sorted(RANKING_LOSSES)}."})
    temperature: Optional[float] = field(
        default=None, metadata={"help": "Score temperature (default: 1 for cross-encoder/llm, 0.05 for colbert)."}
    )
    use_inbatch_neg: bool = field(default=False, metadata={"help": "ColBERT: every document of the batch is a candidate."})

    loss_registry: ClassVar[str] = "ranking"


def resolve_model_type(model_args: RerankModelArguments) -> str:
    if model_args.model_type:
        kind = normalize_model_type(model_args.model_type)
    elif model_args.causal_lm:
        kind = "llm"
    else:
        kind = infer_model_type(model_args.model_name_or_path, model_args.trust_remote_code)
    if model_args.causal_lm and kind != "llm":
        raise ValueError(f"--causal_lm True scores with the LM head: use --model_type llm, not {kind}.")
    return kind


def build_model(model_args: RerankModelArguments, data_args: DataArguments, kind: str) -> BaseRanker:
    settings = {
        "query_instruction": unescape_cli(model_args.query_instruction),
        "document_instruction": unescape_cli(model_args.document_instruction),
        "query_max_length": data_args.query_max_length,
        "max_length": data_args.max_length or data_args.document_max_length,
    }
    if kind == "llm":
        settings.update(task_prompt=unescape_cli(model_args.task_prompt), target_token=model_args.target_token,
                        negative_token=model_args.negative_token, score_mode=model_args.score_mode)
    if kind == "colbert":
        settings["colbert_dim"] = model_args.colbert_dim
    return AutoModelForRanking.from_pretrained(
        model_args.model_name_or_path,
        model_type=kind,
        **model_args.loading_kwargs(),
        **{k: v for k, v in settings.items() if v is not None},
    )


def train(model_args: RerankModelArguments, data_args: DataArguments, args: RerankTrainingArguments) -> BaseRanker:
    kind = resolve_model_type(model_args)
    if args.negatives_cross_device:
        raise ValueError("--negatives_cross_device is for embedders; rerankers score each query's own candidates.")
    if args.use_inbatch_neg and kind != "colbert":
        raise ValueError(f"--use_inbatch_neg true is supported for colbert only, not {kind}.")
    if data_args.train_group_size < 2 and not args.use_inbatch_neg and args.loss_fn == "ce":
        raise ValueError("--loss_fn ce needs --train_group_size >= 2 (a positive and at least one negative).")
    temperature = args.temperature if args.temperature is not None else DEFAULT_TEMPERATURE[kind]
    loss = get_loss(args.loss_fn, RANKING_LOSSES, temperature=temperature)

    def build() -> BaseRanker:
        model = build_model(model_args, data_args, kind)
        if isinstance(model, ColBERT):
            model.use_inbatch_neg = args.use_inbatch_neg
        return model

    return run_training(build, lambda model: model.processor.with_pad_to_multiple_of(args.pad_to_multiple_of), loss, data_args,
                        args, model_path=model_args.model_name_or_path,
                        settings=(asdict(model_args), asdict(data_args), {"model_type": kind}))


def _main(model_args: RerankModelArguments, data_args: DataArguments, args: RerankTrainingArguments) -> None:
    if args.should_log:
        logging.getLogger().setLevel(logging.INFO)
    if not (args.do_train or data_args.train_data):
        raise ValueError("nothing to do: pass --train_data (and --do_train)")
    train(model_args, data_args, args)
    shutdown_distributed()


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli([RerankModelArguments, DataArguments, RerankTrainingArguments], _main, argv)


if __name__ == "__main__":
    sys.exit(main())

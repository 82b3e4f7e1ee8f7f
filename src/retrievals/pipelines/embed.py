"""Train an embedder or encode texts with one: ``python -m retrievals.pipelines.embed --help``.

Works as written under ``torchrun --nproc_per_node N -m retrievals.pipelines.embed ...``.
"""

from __future__ import annotations

import io
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..data import EmbeddingCollator
from ..files import atomic_write_bytes, check_new_output
from ..data.readers import DataError, Record, check_unicode, is_json_file, iter_lines, iter_raw
from ..losses import EMBEDDING_LOSSES, FlopsRegularizedLoss, MatryoshkaLoss, loss_class, loss_from_args
from ..losses.base import ContrastiveSettings
from ..models.embedding import AutoModelForEmbedding
from ..models.sparse import SparseEmbedder
from ..training import RetrievalTrainingArguments
from ..training.arguments import DataArguments, ModelLoadingArguments
from ..distributed import init_distributed, shutdown_distributed, world
from ..training.output_dir import record_written
from ..training.run import masking_copies, run_training
from ..training.teacher import TeacherArguments
from ..utils import UsageError, at_least, finite_number, logger, unescape_cli
from .cli import run_cli


@dataclass
class EmbedModelArguments(TeacherArguments, ModelLoadingArguments):
    pooling_method: Optional[str] = field(default=None, metadata={"help": "cls | mean | last (default: from the model)."})
    normalize_embeddings: Optional[bool] = None
    query_instruction: Optional[str] = field(default=None, metadata={"help": "Prefix, or template with {}."})
    document_instruction: Optional[str] = None
    append_eos: Optional[bool] = None
    padding_side: Optional[str] = None
    causal_lm: bool = field(default=False, metadata={"help": "Accepted for compatibility; decoders are detected."})
    model_type: Optional[str] = field(default=None, metadata={"help": "dense | sparse (SPLADE over a masked-LM head); "
                                                                      "default: the saved model's kind, else dense."})
    query_flops_weight: float = field(default=5e-4, metadata={"help": "sparse: FLOPS regularisation of query vectors."})
    document_flops_weight: float = field(default=1e-4, metadata={"help": "sparse: FLOPS regularisation of document vectors."})
    query_inference_free: Optional[bool] = field(default=None, metadata={
        "help": "sparse: queries are their tokens times a learned weight per term (no model forward at query time)."})
    pca_rotation: bool = field(default=False, metadata={
        "help": "Before training, add a linear layer after pooling set to the principal axes of the training texts' "
                "embeddings (a rotation: scores unchanged at the start; leading dimensions carry the most variance), "
                "a better start for --matryoshka_dims' small sizes. Saved with the model (sentence-transformers' Dense)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_type not in (None, "dense", "sparse"):
            raise UsageError(f"--model_type must be dense or sparse, got {self.model_type!r}.")
        # the folder's kind as loading reads it: recorded by us, or a sentence-transformers SparseEncoder (trained
        # as dense, it got the dense loss and temperature while the model loaded sparse)
        found = {"sparse": "sparse", "embedding": "dense"}.get(AutoModelForEmbedding.kind_of(self.model_name_or_path or ""))
        if self.model_type is None:
            self.model_type = found or "dense"
        elif found and found != self.model_type and not self.backbone_only:
            raise UsageError(f"--model_type {self.model_type}: {self.model_name_or_path} holds a {found} embedder; drop "
                             f"--model_type (it is read from the folder), or pass --backbone_only true to start a fresh "
                             f"{self.model_type} one from its transformer weights.")
        if self.query_inference_free is not None and self.model_type != "sparse":
            raise UsageError("--query_inference_free is for --model_type sparse.")
        for flag in ("query_flops_weight", "document_flops_weight"):  # nan/inf made every step's loss nan/inf
            finite_number(f"--{flag}", getattr(self, flag))
        if self.model_type == "sparse" and self.pooling_method not in (None, "splade"):
            raise UsageError("a sparse embedder pools with splade: drop --pooling_method.")
        if self.pca_rotation and self.model_type == "sparse":
            raise UsageError("--pca_rotation is for dense embedders.")
        self.check_teacher()  # before any data or weights load


@dataclass
class EncodeArguments:
    do_encode: bool = field(default=False, metadata={"help": "Encode --encode_data and write embeddings."})
    encode_data: Optional[str] = field(default=None, metadata={"help": "JSONL (field --encode_key) or a .txt file."})
    encode_key: str = "text"
    encode_is_query: bool = False
    encode_output: Optional[str] = field(default=None, metadata={"help": "Output .npy (default: output_dir/embeddings.npy)."})
    encode_batch_size: int = 64

    def __post_init__(self) -> None:
        at_least("--encode_batch_size", self.encode_batch_size, 1)


def build_model(model_args: EmbedModelArguments, data_args: DataArguments) -> AutoModelForEmbedding:
    q_len = data_args.query_max_length or data_args.max_length
    d_len = data_args.document_max_length or data_args.max_length
    cls = SparseEmbedder if model_args.model_type == "sparse" else AutoModelForEmbedding
    kind_settings = {"query_inference_free": model_args.query_inference_free} if cls is SparseEmbedder else {}
    return cls.from_pretrained(
        model_args.model_name_or_path,
        pooling_method=model_args.pooling_method if cls is AutoModelForEmbedding else None,
        normalize_embeddings=model_args.normalize_embeddings,
        query_instruction=unescape_cli(model_args.query_instruction),
        document_instruction=unescape_cli(model_args.document_instruction),
        query_max_length=q_len,
        document_max_length=d_len,
        append_eos=model_args.append_eos,
        padding_side=model_args.padding_side,
        **kind_settings,
        **model_args.loading_kwargs(),
    )


def train(model_args: EmbedModelArguments, data_args: DataArguments, args: RetrievalTrainingArguments) -> AutoModelForEmbedding:
    """Validate data, build model and trainer, train (resuming when possible) and save to output_dir."""
    sparse = model_args.model_type == "sparse"
    if sparse and args.matryoshka_dims:  # its dimensions are vocabulary ids: a prefix of them is no smaller model
        raise UsageError("--matryoshka_dims is for dense embedders.")
    loss_class(args.loss_fn, EMBEDDING_LOSSES)  # a wrong name fails before anything is read
    # whether the model normalises its embeddings, read from its files before anything loads: the loss's default
    # temperature and the Matryoshka sizes' truncation follow it, and the run's fingerprint records both
    normalize = not sparse and bool(AutoModelForEmbedding.settings_of(
        model_args.model_name_or_path, lora_path=model_args.lora_path, backbone_only=model_args.backbone_only,
        trust_remote_code=model_args.trust_remote_code, normalize_embeddings=model_args.normalize_embeddings,
    ).normalize_embeddings)
    teacher_temperature = args.temperature or ContrastiveSettings.temperature  # the teacher's cosines: as given, else 0.02
    if args.temperature is None:  # not given (an explicit 0.02 was taken for the default and trained sparse at 1)
        # cosines at 0.02; raw dot products (sparse term weights, embeddings left unnormalised) at 1, as FlagEmbedding
        # does: 0.02 would multiply dot products of norm ~10 by 50 (a first loss of ~90, saturated softmaxes)
        args.temperature = ContrastiveSettings.temperature if normalize else SparseEmbedder.default_temperature
        if not normalize and not sparse:
            logger.warning("The embeddings are not normalised: the loss divides raw dot products by --temperature %g "
                           "(the cosine default 0.02 does not suit them); set --temperature to change it.", args.temperature)
    loss = loss_from_args(args.loss_fn, EMBEDDING_LOSSES, args)
    if sparse:
        loss = FlopsRegularizedLoss(loss, model_args.query_flops_weight, model_args.document_flops_weight)
    loss, collator = model_args.attach_teacher(  # the teacher (cosine scores) at --temperature, whatever the student's
        loss, masking_copies(loss, lambda model, records: EmbeddingCollator(model.processor, args.pad_to_multiple_of), args),
        data_args.query_max_length or data_args.max_length, data_args.document_max_length or data_args.max_length,
        teacher_temperature)
    if args.matryoshka_dims:
        loss = MatryoshkaLoss(loss, args.matryoshka_dims, args.matryoshka_weights, args.matryoshka_distill, normalize)

    def build(records: Sequence[Record]) -> AutoModelForEmbedding:
        model = build_model(model_args, data_args)
        if model_args.pca_rotation:
            add_pca_rotation(model, records, args.seed)
        if args.matryoshka_dims:
            if max(args.matryoshka_dims) > model.embedding_dim:
                raise UsageError(f"--matryoshka_dims {args.matryoshka_dims}: the model's embeddings have {model.embedding_dim} "
                                 "dimensions.")
            model.retrieval_config.matryoshka_dims = sorted(set(args.matryoshka_dims), reverse=True)
        if bool(model.retrieval_config.normalize_embeddings) != normalize:  # settings_of and loading disagree: a bug
            raise RuntimeError(f"{model_args.model_name_or_path}: read as normalize_embeddings={normalize} before loading, "
                               f"loaded with {model.retrieval_config.normalize_embeddings}.")
        return model

    return run_training(build, collator, loss, data_args, args, model_path=model_args.model_name_or_path,
                        settings=[asdict(model_args), asdict(data_args), *model_args.teacher_settings()])


PCA_MAX_TEXTS = 10_000  # per side (queries, documents): enough for a 384-1024-dimensional covariance


def add_pca_rotation(model: AutoModelForEmbedding, records: Sequence[Record], seed: int) -> None:
    """``--pca_rotation``: :meth:`AutoModelForEmbedding.fit_pca` over the training records' queries and documents
    (positives and negatives, each once), at most ``PCA_MAX_TEXTS`` of each drawn with the run's seed."""
    import random

    if model.dense is not None:
        raise UsageError("--pca_rotation: the model already has a Dense layer (a model "
                         "trained with --pca_rotation, or a sentence-transformers model with one); drop the flag.")
    queries = list(dict.fromkeys(r.query for r in records))
    documents = list(dict.fromkeys(d for r in records for d in (*r.positives, *r.negatives)))
    rng = random.Random(seed)
    sample = lambda texts: texts if len(texts) <= PCA_MAX_TEXTS else rng.sample(texts, PCA_MAX_TEXTS)  # noqa: E731
    shares = model.fit_pca(sample(queries), sample(documents))
    logger.warning("--pca_rotation: principal axes of %d queries and %d documents; the first 64 dimensions carry "
                   "%.1f%% of the variance.", min(len(queries), PCA_MAX_TEXTS), min(len(documents), PCA_MAX_TEXTS),
                   100 * float(shares[:64].sum()))


def read_texts(path: str, key: str) -> List[str]:
    """Texts from a .txt file (one per line) or JSON/JSONL (field ``key``), with file:line errors."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file.")
    if not is_json_file(file):  # one text, one row: a blank line would shift every later row
        lines = list(iter_lines(file))
        if lines and not lines[-1][1]:
            lines.pop()  # the file's final newline
        blank = [n for n, line in lines if not line.strip()]
        if blank:
            raise DataError(f"{file}:{blank[0]}: blank line ({len(blank)} in all); each line is one text and one row of "
                            "the output, so remove them or put the texts in a .jsonl file.")
        if not lines:
            raise DataError(f"{file}: no texts to encode.")
        return [line for _, line in lines]
    texts = []
    for where, obj in iter_raw(str(file)):
        if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
            raise DataError(f"{where}: field '{key}' must be a string.")
        check_unicode(obj[key], where, f"'{key}'")  # a "\ud800" escape failed in the tokenizer, naming no line
        texts.append(obj[key])
    return texts


def encode(model: AutoModelForEmbedding, enc: EncodeArguments, output_dir: str, overwrite: bool = False) -> Optional[Path]:
    """Embed ``--encode_data`` into ``--encode_output``. Under torchrun each process encodes its contiguous part and
    the main process gathers and writes them (the others return None): the main process alone encoded everything
    while the others waited in a barrier, which timed out (``--ddp_timeout``) on a long corpus and killed the job."""
    out = encode_output_path(enc, output_dir, overwrite)
    texts = read_texts(enc.encode_data, enc.encode_key)
    init_distributed()
    rank, size = world()
    part = texts[rank * len(texts) // size: (rank + 1) * len(texts) // size]
    emb = model.encode(part, batch_size=enc.encode_batch_size, is_query=enc.encode_is_query, show_progress_bar=rank == 0)
    if size > 1:
        import torch.distributed as dist

        parts: Optional[List[np.ndarray]] = [np.zeros(0)] * size if rank == 0 else None
        dist.gather_object(emb, parts, dst=0)
        if rank != 0:
            return None
        emb = np.concatenate(parts)
    buffer = io.BytesIO()
    np.save(buffer, emb)
    atomic_write_bytes(out, buffer.getvalue())
    logger.warning("Wrote %d embeddings of dim %d to %s", emb.shape[0], emb.shape[1], out)
    return out


def encode_output_path(enc: EncodeArguments, output_dir: str, overwrite: bool,
                       data_args: Optional[DataArguments] = None) -> Path:
    """Where ``--do_encode`` writes, checked before any model loads: an existing file is replaced only with
    ``--overwrite_output_dir``, and never one the run reads (``--overwrite_output_dir``, often given just to retrain,
    let ``--encode_output`` replace the training data with the vectors)."""
    if not enc.encode_data:
        raise DataError("--do_encode needs --encode_data (a .txt or .jsonl file).")
    reads = {"--encode_data": enc.encode_data}
    if data_args is not None:
        reads.update({"--train_data": data_args.train_data, "--eval_data": data_args.eval_data})
    return check_new_output(enc.encode_output or Path(output_dir) / "embeddings.npy", overwrite, "--overwrite_output_dir",
                            inputs=reads)


def check_tasks(data_args: DataArguments, args: RetrievalTrainingArguments, enc: EncodeArguments) -> None:
    """A flag of a task the run does not do is refused, naming the flags, not dropped: ``--train_data`` with
    ``--do_encode`` alone encoded with the untrained model, ``--encode_data`` without ``--do_encode`` encoded nothing.
    Which was meant is the user's to say."""
    if data_args.train_data and enc.do_encode and not args.do_train:
        raise UsageError("--train_data with --do_encode but without --do_train: pass --do_train to train and then encode "
                         "with the trained model, or drop --train_data to encode with --model_name_or_path as it is.")
    given = [flag for flag, value in (("--encode_data", enc.encode_data), ("--encode_output", enc.encode_output)) if value]
    if given and not enc.do_encode:
        raise UsageError(f"{' and '.join(given)} {'are' if len(given) > 1 else 'is'} read only with --do_encode: pass "
                         "--do_encode to write the embeddings, or drop it.")


def _main(model_args: EmbedModelArguments, data_args: DataArguments, args: RetrievalTrainingArguments,
          enc: EncodeArguments) -> None:
    if args.should_log:
        logging.getLogger().setLevel(logging.INFO)
    model = None
    check_tasks(data_args, args, enc)
    training = bool(args.do_train or data_args.train_data)
    unused = [flag for flag, given in (("--teacher_model", model_args.teacher_model), ("--pca_rotation", model_args.pca_rotation))
              if given and not training]
    if unused:  # a flag that would be silently ignored is an error
        raise UsageError(f"{' and '.join(unused)} apply to training (--do_train --train_data ...); this run only encodes.")
    if enc.do_encode:  # before training: a refused output must not cost a training run
        encoded = encode_output_path(enc, args.output_dir, args.overwrite_output_dir, data_args)
    if training:
        model = train(model_args, data_args, args)
        if enc.do_encode and args.process_index == 0 and encoded.resolve().parent == Path(args.output_dir).resolve():
            # the run's vectors belong to its folder: a later --overwrite_output_dir run removes them with the model
            record_written(args.output_dir, encoded.name)
    if enc.do_encode:
        if model is None:
            model = build_model(model_args, data_args)
        encode(model, enc, args.output_dir, overwrite=True)  # checked above; every process encodes its part
    if model is None:
        raise UsageError("nothing to do: pass --do_train with --train_data, and/or --do_encode")
    shutdown_distributed()


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli([EmbedModelArguments, DataArguments, RetrievalTrainingArguments, EncodeArguments], _main, argv)


if __name__ == "__main__":
    sys.exit(main())

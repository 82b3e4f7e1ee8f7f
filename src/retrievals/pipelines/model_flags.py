"""The model flags the inference pipelines share (``retrieve``, ``build_hn``, ``serve``): one spelling per
concept, one place that loads the models. The training pipelines use ``training.arguments.ModelLoadingArguments``
(the same names, plus LoRA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..utils import DTYPE_FLAG_ALIASES, RERANKER_FLAG_ALIASES, UsageError, unescape_cli


@dataclass(kw_only=True)
class EmbedderFlags:
    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Embedder: a folder saved by this library, "
                                                                              "sentence-transformers or transformers."})
    pooling_method: Optional[str] = field(default=None, metadata={"help": "cls | mean | last (default: from the model)."})
    query_instruction: Optional[str] = field(default=None, metadata={"help": "Prefix, or template with {}."})
    document_instruction: Optional[str] = None
    max_length: Optional[int] = field(default=None, metadata={"help": "Max tokens of queries and documents (default: the model's)."})
    truncate_dim: Optional[int] = field(default=None, metadata={
        "help": "Encode to this many leading dimensions, renormalised (a Matryoshka model's smaller sizes; default: the "
                "model's own truncate_dim, else all)."})
    dtype: Optional[str] = field(default=None, metadata={"aliases": DTYPE_FLAG_ALIASES,
                                                         "help": "float32 | float16 | bfloat16 (also --model_dtype)."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu | cuda (default: cuda when available)."})
    backend: str = field(default="torch", metadata={"help": "torch | onnx | openvino: what runs the embedder and the "
                                                            "reranker (onnx, openvino: CPU inference, dense embedders and "
                                                            "cross-encoders; graphs exported once and cached)."})
    backend_precision: str = field(default="fp32", metadata={"help": "fp32 | int8 | bf16 (openvino, CPUs with bf16) "
                                                                     "for --backend onnx or openvino."})
    inference_precision: str = field(default="auto", metadata={
        "help": "auto (bf16 autocast on a GPU, exact float32 on CPU) | fp32 | bf16 | fp16 (GPU): the precision the "
                "embedder and reranker run at (torch backend)."})
    inference_compile: str = field(default="auto", metadata={
        "help": "auto (the embedder and reranker's batched inference compiled with CUDA graphs on a GPU, eager on CPU) "
                "| on | off (torch backend)."})
    trust_remote_code: bool = False

    def load_embedder(self, required_for: str = "") -> Any:
        """The embedder these flags name, or None when none is named (an error when ``required_for`` says why)."""
        if not self.model_name_or_path:
            if required_for:
                raise UsageError(f"{required_for} needs --model_name_or_path (an embedder)")
            return None
        from ..models import AutoModelForEmbedding  # loads a sparse embedder's folder as one

        return AutoModelForEmbedding.from_pretrained(
            self.model_name_or_path, pooling_method=self.pooling_method,
            query_instruction=unescape_cli(self.query_instruction), document_instruction=unescape_cli(self.document_instruction),
            query_max_length=self.max_length, document_max_length=self.max_length, dtype=self.dtype, device=self.device,
            **({"truncate_dim": self.truncate_dim} if self.truncate_dim is not None else {}),
            trust_remote_code=self.trust_remote_code, backend=self.backend, backend_precision=self.backend_precision,
            inference_precision=self.inference_precision, inference_compile=self.inference_compile)


@dataclass(kw_only=True)
class RerankerFlags:
    reranker_name_or_path: Optional[str] = field(default=None, metadata={
        "aliases": RERANKER_FLAG_ALIASES, "help": "Reranker: a folder saved by this library, or a transformers model "
                                                  "(also --reranker_model, --rerank_model)."})
    model_type: Optional[str] = field(default=None, metadata={"help": "Reranker kind: cross-encoder | colbert | llm "
                                                                      "(default: inferred)."})

    def load_reranker(self) -> Any:
        """The reranker these flags name, or None; dtype, device, backend and precision are the ``EmbedderFlags``
        fields of the same arguments class (every pipeline with a reranker has both)."""
        if not self.reranker_name_or_path:
            return None
        from ..models.rankers import AutoModelForRanking

        return AutoModelForRanking.from_pretrained(
            self.reranker_name_or_path, model_type=self.model_type, dtype=self.dtype, device=self.device,
            trust_remote_code=self.trust_remote_code, backend=self.backend, backend_precision=self.backend_precision,
            inference_precision=self.inference_precision, inference_compile=self.inference_compile)

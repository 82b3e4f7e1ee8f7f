"""Learned sparse embedders (SPLADE): a masked-LM head's vocabulary logits, pooled as max over tokens of
log(1 + relu(logit)), so each text is a weighted bag of vocabulary terms for an inverted index.

Optionally inference-free on the query side: a query is the bag of its tokens, each weighted by one learned
weight per vocabulary term (sentence-transformers' ``SparseStaticEmbedding``), so queries need no model forward
and only documents are expanded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Union

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForMaskedLM

from ..inputs import as_texts, check_batch_size, check_encodable, check_int, check_top_k
from ..utils import UsageError, logger
from .base import hf_config, usable_positions
from .embedding import AutoModelForEmbedding, EmbeddingConfig, EmbeddingOutput
from ..st_format import read_st_settings, warn_one_max_length

QUERY_WEIGHTS = "query_weights.safetensors"  # the inference-free query side's term weights
_ST_SPLADE = "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"
_ST_MLM = "sentence_transformers.sparse_encoder.modules.mlm_transformer.MLMTransformer"


def _st_class(module: Dict[str, Any]) -> str:
    """The class name of a ``modules.json`` entry of sentence-transformers: its 6.x module paths
    (``...sparse_encoder.modules.splade_pooling.SpladePooling``) and 5.x ones (``...sparse_encoder.models.SpladePooling``,
    the layout of SPLADE folders on the Hub) name the same classes."""
    kind = str(module.get("type", ""))
    return kind.rsplit(".", 1)[-1] if kind.startswith("sentence_transformers.") else kind

if TYPE_CHECKING:
    from ..index.sparse import SparseIndex

SparseVector = Dict[int, float]  # token id -> weight (only non-zero weights)
SPARSE_CHUNK = 1024  # texts encoded at once by encode_sparse: 1024 x 30522 floats is 125 MB


@dataclass
class SparseConfig(EmbeddingConfig):
    """Settings of a sparse embedder; ``top_k`` > 0 keeps only the heaviest terms of each encoded text."""

    model_type: str = "sparse"
    pooling_method: str = "splade"
    normalize_embeddings: bool = False  # sparse scores are raw dot products
    top_k: int = 0
    query_inference_free: bool = False  # queries: token presence x a learned weight per term, no model forward


class SparseEmbedder(AutoModelForEmbedding):
    """SPLADE embedder: ``encode`` gives [n, vocab] tensors (mostly zeros), ``encode_sparse`` the
    ``{token id: weight}`` dicts an inverted index takes (:class:`retrievals.index.SparseIndex`); scores are dot
    products. Trained by ``retrievals.pipelines.embed --model_type sparse`` with the same data, InfoNCE on those dot
    products plus FLOPS regularisation (:class:`retrievals.losses.FlopsRegularizedLoss`). Loading, saving and the
    batched loop are the shared :class:`~retrievals.models.base.RetrievalModel`'s. A saved model is also a
    sentence-transformers ``SparseEncoder`` folder (same vectors), except in inference-free mode, whose
    sentence-transformers layout (a ``Router`` with the transformer in a subfolder) would store the weights twice.

    With ``query_inference_free=True`` a query's vector is the presence of each of its tokens (special tokens
    left out) times ``query_weights[token]`` (one weight per vocabulary term, starting at 1 and trained with the
    rest): queries cost a tokenizer call, documents are expanded by the model.
    """

    config_class = SparseConfig
    model_type = "sparse"
    backend_output = None  # its MLM-head forward is its own (``_embed_padded``): no CPU backend yet
    default_temperature: ClassVar[float] = 1.0  # of the training loss when none is given: scores are raw dot products

    def __init__(self, backbone: nn.Module, tokenizer: Any, config: SparseConfig) -> None:
        super().__init__(backbone, tokenizer, config)
        if config.query_inference_free:
            self.query_weights = nn.Parameter(torch.ones(self.embedding_dim, dtype=torch.float32))
        special = sorted(set(getattr(tokenizer, "all_special_ids", []) or []))
        self.register_buffer("_special_ids", torch.tensor(special, dtype=torch.long), persistent=False)

    @classmethod
    def _reads_folder(cls, path: str) -> bool:
        modules = Path(path) / "modules.json"
        try:
            return modules.is_file() and any(_st_class(m) == "SpladePooling" for m in json.loads(modules.read_text("utf-8")))
        except (ValueError, AttributeError):
            return False

    def _check_config(self, config: SparseConfig) -> None:
        if config.pooling_method != "splade":
            raise UsageError(f"a sparse embedder pools with splade, not {config.pooling_method!r}.")
        check_int("top_k", config.top_k, 0)  # True or 1.5 failed inside torch's topk at the first encode
        if config.normalize_embeddings:  # recorded, then never applied: the vectors are term weights
            raise UsageError("normalize_embeddings=True: a sparse embedder's vectors are term weights, not normalised.")
        _no_truncate_dim(config.truncate_dim)
        if config.matryoshka_dims:  # a folder that says so: the server would offer those sizes and fail on them
            raise UsageError(f"matryoshka_dims={list(config.matryoshka_dims)}: a sparse embedder's dimensions are "
                             "vocabulary terms, not Matryoshka sizes.")

    def fit_pca(self, *args: Any, **kwargs: Any) -> Any:
        raise UsageError("fit_pca rotates dense vectors; a sparse embedder's dimensions are vocabulary terms (keep "
                         "the heaviest with top_k).")

    @classmethod
    def _default_config(cls, path: str, base_path: str, trust_remote_code: bool) -> SparseConfig:
        config = SparseConfig()
        limit = usable_positions(hf_config(base_path, trust_remote_code)) or 512
        config.query_max_length = config.document_max_length = min(512, int(limit))
        if cls._reads_folder(path):
            _check_st_pooling(Path(path))
            st = read_st_settings(path)  # max length and prompts (its pooling is checked above)
            config.update(**{k: st[k] for k in ("query_max_length", "document_max_length", "query_instruction",
                                                 "document_instruction") if k in st})
            config.top_k = _read_max_active_dims(Path(path))
        return config

    @classmethod
    def _load_backbone(cls, path: str, config: Any, dtype: Optional[torch.dtype], trust_remote_code: bool) -> nn.Module:
        kwargs: Dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if dtype is not None:
            kwargs["dtype"] = dtype
        return AutoModelForMaskedLM.from_pretrained(path, **kwargs)

    def _load_extra(self, path: str, fresh: bool) -> None:
        if not self.retrieval_config.query_inference_free:
            return
        file = Path(path) / QUERY_WEIGHTS
        if not file.is_file():
            saved = SparseConfig.load(path)
            if not fresh and saved is not None and saved.query_inference_free:  # it was saved with them: a loss
                raise FileNotFoundError(f"{file}: missing; an inference-free sparse model needs its query weights.")
            return  # turned on now: every term starts from weight 1
        weights = load_file(str(file))["weight"]
        if weights.shape != self.query_weights.shape:
            raise UsageError(f"{file}: {tuple(weights.shape)} query weights for a vocabulary of {self.embedding_dim}.")
        with torch.no_grad():
            self.query_weights.copy_(weights)

    def _save_extra(self, folder: Path, config: Any, lora: bool) -> None:
        if config.query_inference_free:
            save_file({"weight": self.query_weights.detach().float().cpu().contiguous()}, str(folder / QUERY_WEIGHTS))
        elif not lora:  # a LoRA adapter folder is no sentence-transformers model
            if not config.include_prompt and (config.query_instruction or config.document_instruction):
                logger.warning("sentence-transformers' SpladePooling has no include_prompt: its SparseEncoder pools the "
                               "instruction's tokens too, so its vectors of instructed texts differ from retrievals'.")
            write_st_sparse_files(folder, self.embedding_dim,
                                  warn_one_max_length(config.query_max_length, config.document_max_length),
                                  config.query_instruction, config.document_instruction, config.top_k)

    @property
    def embedding_dim(self) -> int:
        return int(self.backbone.config.vocab_size)

    def _embed_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: Optional[bool],
                      pooling_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = self.run_backbone(input_ids=input_ids, attention_mask=attention_mask).logits
        weights = torch.log1p(torch.relu(logits.float()))
        mask = (attention_mask if pooling_mask is None else pooling_mask).to(weights.dtype)
        return (weights * mask[..., None]).amax(dim=1)  # padding contributes 0, never the max of real tokens

    def _static_queries(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        pooling_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Inference-free query vectors: each distinct non-special token present -> its learned weight; with
        ``include_prompt=False`` the instruction's tokens are left out (``pooling_mask``), as the model's pooling does."""
        mask = attention_mask if pooling_mask is None else pooling_mask
        keep = mask.bool() & ~torch.isin(input_ids, self._special_ids.to(input_ids.device))
        presence = torch.zeros(input_ids.shape[0], self.embedding_dim, dtype=torch.float32, device=input_ids.device)
        presence.scatter_reduce_(1, input_ids, keep.float(), reduce="amax")  # a repeated token counts once
        return presence * self.query_weights

    def forward(self, query: Optional[Dict[str, torch.Tensor]] = None,
                document: Optional[Dict[str, torch.Tensor]] = None) -> EmbeddingOutput:
        if query is None or not self.retrieval_config.query_inference_free:
            return super().forward(query, document)
        return EmbeddingOutput(query_embeddings=self._static_queries(query["input_ids"], query["attention_mask"],
                                                                     query.get("pooling_mask")),
                               document_embeddings=self.embed(document) if document is not None else None)

    @torch.inference_mode()
    def encode(self, sentences: Union[str, Sequence[str]], batch_size: int = 32, show_progress_bar: Optional[bool] = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, normalize_embeddings: Optional[bool] = None,
               is_query: bool = False, max_length: Optional[int] = None, device: Any = None,
               truncate_dim: Optional[int] = None, top_k: Optional[int] = None) -> Any:
        """:meth:`AutoModelForEmbedding.encode`; inference-free queries are built from their tokens alone. ``top_k``
        (default: the config's; 0 keeps all) keeps the heaviest terms of each vector (by magnitude, as
        sentence-transformers' ``max_active_dims``), the others set to 0: the vectors every index and score of
        this model use."""
        if normalize_embeddings:  # SPLADE weights are not unit vectors: a silently ignored flag would mislead
            raise UsageError("normalize_embeddings=True: a sparse embedder's vectors are term weights, not normalised.")
        return self._encode_texts(sentences, batch_size, is_query, max_length, device, convert_to_numpy, convert_to_tensor,
                                  show_progress_bar=show_progress_bar, truncate_dim=truncate_dim, top_k=top_k)

    @torch.inference_mode()
    def encode_token_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 32, show_progress_bar: Optional[bool] = None,
                         normalize_embeddings: Optional[bool] = None, max_tokens: Optional[int] = None,
                         truncate_dim: Optional[int] = None, is_query: bool = False, top_k: Optional[int] = None) -> torch.Tensor:
        """:meth:`AutoModelForEmbedding.encode_token_ids`, pruned to ``top_k`` terms as :meth:`encode`;
        inference-free queries are built from their tokens alone (the server's queries too: it passes ``is_query``)."""
        _no_truncate_dim(truncate_dim, self.embedding_dim)
        keep = self.retrieval_config.top_k if top_k is None else check_top_k(top_k)
        if not (is_query and self.retrieval_config.query_inference_free):
            return keep_top_terms(super().encode_token_ids(ids, batch_size, show_progress_bar, normalize_embeddings,
                                                           max_tokens, None, is_query), keep)
        check_batch_size(batch_size)
        out = torch.zeros((len(ids), self.embedding_dim), dtype=torch.float32)
        device_ = self.query_weights.device
        for start in range(0, len(ids), batch_size):
            # a slice is a plain list: the prompt length (include_prompt=False) goes along by hand
            batch = {k: v.to(device_) for k, v in self.processor.pad(
                ids[start:start + batch_size], prompt_length=getattr(ids, "prompt_length", 0)).items()}
            out[start:start + batch_size] = self._static_queries(batch["input_ids"], batch["attention_mask"],
                                                                 batch.get("pooling_mask")).cpu()
        return keep_top_terms(out, keep)

    def truncate(self, embeddings: torch.Tensor, dim: Optional[int] = None, normalize: Optional[bool] = None) -> torch.Tensor:
        """All of a sparse vector (its dimensions are vocabulary terms: none is cut)."""
        _no_truncate_dim(dim, self.embedding_dim)
        return embeddings

    def encode_sparse(self, sentences: Union[str, Sequence[str]], is_query: bool = False, batch_size: int = 32,
                      top_k: Optional[int] = None) -> Union[SparseVector, List[SparseVector]]:
        """``{token id: weight}`` of each text (one dict for one string), the ``top_k`` heaviest terms when > 0."""
        texts, single = as_texts(sentences, "sentences")
        check_batch_size(batch_size)
        out: List[SparseVector] = []
        for start in range(0, len(texts), SPARSE_CHUNK):  # the dense [n, vocab] rows of one chunk at a time
            dense = self.encode(texts[start:start + SPARSE_CHUNK], batch_size=batch_size, is_query=is_query,
                                convert_to_tensor=True, top_k=top_k)
            out.extend(to_sparse(row) for row in dense)
        return out[0] if single else out

    def build_index(self, sentences: Sequence[Any], index_path: Optional[str] = None, index_type: str = "sparse",
                    ids: Optional[Sequence[str]] = None, batch_size: int = 32,
                    encode_kwargs: Optional[Dict[str, Any]] = None, **index_kwargs: Any) -> Any:
        """An inverted index (:class:`retrievals.index.SparseIndex`) of ``sentences`` encoded as documents, ids
        defaulting to positions, saved to ``index_path`` when given; ``encode_kwargs`` may set ``top_k``. Another
        ``index_type`` indexes the dense [n, vocabulary] vectors like a dense embedder (memory grows with the vocabulary)."""
        if index_type != "sparse":
            return super().build_index(sentences, index_path, index_type, ids, batch_size, encode_kwargs, **index_kwargs)
        from ..index.sparse import SparseIndex

        if index_kwargs:
            raise UsageError(f"build_index(index_type='sparse') takes no index settings, got {sorted(index_kwargs)}.")
        extra = dict(encode_kwargs or {})
        unknown = set(extra) - {"top_k", "batch_size"}
        if unknown:
            raise UsageError(f"build_index(index_type='sparse'): encode_kwargs {sorted(unknown)} are not encode_sparse's.")
        texts, _ = as_texts(sentences, "sentences", documents=True)
        vectors = self.encode_sparse(texts, batch_size=extra.get("batch_size", batch_size), top_k=extra.get("top_k"))
        return self._record_index(SparseIndex(vectors, ids if ids is not None else [str(i) for i in range(len(vectors))]),
                                  index_path)

    def search_run(self, index: "SparseIndex", queries: Dict[str, str], top_k: int,
                   batch_size: int = 32) -> Dict[str, Dict[str, float]]:
        """A run (query id -> {doc id: score}) of ``queries`` (id -> text), encoded as queries, over ``index``."""
        from ..index.sparse import SparseIndex

        # a list or a string was indexed by its own items ("string indices must be integers"), None "not iterable"
        if not isinstance(queries, Mapping):
            raise TypeError(f"queries must be a dict of query id -> text, got {type(queries).__name__}")
        # a dense index (build_index with another index_type) failed on the sparse dicts in float(), naming nothing
        if not isinstance(index, SparseIndex):
            raise UsageError(f"search_run searches a SparseIndex (build_index's default), got {type(index).__name__}; "
                             "search a dense one with index.search_run(ids, model.encode(texts, is_query=True)).")
        for query_id, text in queries.items():  # by query id: encode_sparse's own "sentences[3]" named neither
            if not isinstance(text, str):
                raise TypeError(f"queries[{query_id!r}] must be a string, got {type(text).__name__}")
            check_encodable(text, f"queries[{query_id!r}]")
        query_ids = list(queries)
        vectors = self.encode_sparse([queries[q] for q in query_ids], is_query=True, batch_size=batch_size)
        return index.search_run(query_ids, vectors, top_k)

    def decode(self, vector: SparseVector, top: int = 10) -> List[tuple]:
        """The ``top`` heaviest terms of a sparse vector as (token, weight): what the model expanded a text to."""
        top = check_int("top", top, 0)
        best = sorted(vector.items(), key=lambda kv: -abs(kv[1]))[:top]
        return [(self.tokenizer.convert_ids_to_tokens(int(i)), w) for i, w in best]


def _check_st_pooling(path: Path) -> None:
    """A sentence-transformers sparse folder we can read: MLM transformer at the root, max-pooled log1p(relu)."""
    modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
    for module in modules:
        if _st_class(module) == "SpladePooling":
            cfg = json.loads((path / module.get("path", "") / "config.json").read_text(encoding="utf-8"))
            if cfg.get("pooling_strategy", "max") != "max" or cfg.get("activation_function", "relu") != "relu":
                raise UsageError(f"{path / module.get('path', '') / 'config.json'}: SpladePooling {cfg} is not supported; "
                                 "retrievals reads max pooling of log(1 + relu(logits)).")
        elif module.get("path", "") == "" and _st_class(module) not in ("MLMTransformer", "Transformer"):
            raise UsageError(f"{path / 'modules.json'}: module {module.get('type')} is not supported for a sparse model.")


def _no_truncate_dim(dim: Optional[int], full: Optional[int] = None) -> None:
    if dim is not None and dim != full:  # the first ids of the vocabulary are no smaller version of the vector
        raise UsageError(f"truncate_dim={dim}: a sparse embedder's dimensions are vocabulary terms; keep the heaviest "
                         "terms with top_k instead.")


def _read_max_active_dims(path: Path) -> int:
    """sentence-transformers' ``max_active_dims`` (config_sentence_transformers.json) as ``top_k``; 0 when unset."""
    file = path / "config_sentence_transformers.json"
    value = json.loads(file.read_text(encoding="utf-8")).get("max_active_dims") if file.is_file() else None
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"{file}: max_active_dims must be a positive integer or null, got {value!r}.")
    return value


def keep_top_terms(vectors: torch.Tensor, top_k: int) -> torch.Tensor:
    """Each row's ``top_k`` largest weights by magnitude, the others 0 (0 keeps all).

    >>> keep_top_terms(torch.tensor([[0.5, -2.0, 1.0, 0.0]]), 2)
    tensor([[ 0., -2.,  1.,  0.]])
    """
    if not top_k or top_k >= vectors.shape[-1]:
        return vectors
    best = vectors.abs().topk(top_k, dim=-1).indices
    return torch.zeros_like(vectors).scatter_(-1, best, vectors.gather(-1, best))


def write_st_sparse_files(path: Path, vocab_size: int, max_seq_length: int, query_instruction: str,
                          document_instruction: str, top_k: int = 0) -> None:
    """The sentence-transformers ``SparseEncoder`` files beside the saved masked-LM (MLM transformer + SpladePooling)."""
    from ..st_format import warn_unsupported_prefix
    from ..utils import instruction_as_prefix

    for kind, instruction in (("query", query_instruction), ("document", document_instruction)):
        if instruction_as_prefix(instruction) is None:  # a template with text after {}: written without it, as dense
            warn_unsupported_prefix(kind)

    modules = [{"idx": 0, "name": "0", "path": "", "type": _ST_MLM},
               {"idx": 1, "name": "1", "path": "1_SpladePooling", "type": _ST_SPLADE}]
    (path / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    (path / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length, "do_lower_case": False, "transformer_task": "fill-mask",
         "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
         "module_output_name": "token_embeddings"}, indent=2) + "\n", encoding="utf-8")
    (path / "1_SpladePooling").mkdir(exist_ok=True)
    (path / "1_SpladePooling" / "config.json").write_text(json.dumps(
        {"pooling_strategy": "max", "activation_function": "relu", "embedding_dimension": vocab_size}, indent=2) + "\n",
        encoding="utf-8")
    prompts = {"query": instruction_as_prefix(query_instruction) or "",
               "document": instruction_as_prefix(document_instruction) or ""}
    (path / "config_sentence_transformers.json").write_text(json.dumps(
        {"model_type": "SparseEncoder", "prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "dot",
         **({"max_active_dims": top_k} if top_k else {})},
        indent=2) + "\n", encoding="utf-8")


def to_sparse(row: torch.Tensor) -> SparseVector:
    """``{token id: weight}`` of a row's non-zero weights (a learned inference-free query weight may be negative:
    kept, as the dense row's dot products count it)."""
    nonzero = torch.nonzero(row).flatten()
    return {int(i): float(v) for i, v in zip(nonzero.tolist(), row[nonzero].tolist())}

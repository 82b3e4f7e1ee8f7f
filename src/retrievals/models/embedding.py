"""``AutoModelForEmbedding``: dense text embedders from encoder models or decoder LLMs (with LoRA)."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from transformers.utils import ModelOutput

from ..inputs import as_texts, check_batch_size, check_flags, check_int
from ..utils import UsageError, instruction_as_prefix, logger, state_digest
from .base import ModelConfig, RetrievalModel, hf_config, is_decoder_only, load_backbone, usable_positions
from .pooling import POOLING_METHODS, pool
from .processing import TextProcessor, call_tokenizer, run_in_length_chunks
from ..st_format import (DENSE_ACTIVATIONS, DENSE_FOLDER, read_st_dense, read_st_settings, st_dense_folder, warn_one_max_length,
                         warn_unsupported_prefix, write_st_dense, write_st_files)

Batch = Dict[str, torch.Tensor]


@dataclass
class EmbeddingConfig(ModelConfig):
    """Everything inference needs besides the weights; saved as ``retrievals_config.json``."""

    model_type: str = "embedding"
    pooling_method: str = "cls"
    normalize_embeddings: bool = True
    query_instruction: str = ""
    document_instruction: str = ""
    query_max_length: int = 512
    document_max_length: int = 512
    append_eos: bool = False  # append the EOS token to every text (decoder LLM recipes with last-token pooling)
    include_prompt: bool = True  # False: pooling leaves out the instruction's tokens (sentence-transformers' Pooling option)
    padding_side: str = "right"
    decoder: bool = False
    truncate_dim: Optional[int] = None  # encode to this many leading dimensions by default (None: all)
    matryoshka_dims: List[int] = field(default_factory=list)  # sizes the model was trained to serve (Matryoshka)
    # a linear layer after pooling (sentence-transformers' Dense module): its output size (None: no layer), bias and
    # activation (identity | tanh); set by a folder's Dense module or by fit_pca, never from outside
    dense_dim: Optional[int] = None
    dense_bias: bool = False
    dense_activation: str = "identity"


@dataclass
class EmbeddingOutput(ModelOutput):
    """A ``ModelOutput`` (a registered pytree), so DDP finds the tensors and its unused-parameter
    search works (BERT's pooler gets no gradient)."""

    query_embeddings: Optional[torch.Tensor] = None
    document_embeddings: Optional[torch.Tensor] = None


def check_truncate_dim(dim: Optional[int], size: int) -> None:
    """Refuses a ``truncate_dim`` above the vectors' ``size``: served as the full vectors, a typed 6400 for 64 would
    pass unnoticed (and an index would record a size it does not hold)."""
    if dim is not None and dim > size:
        raise UsageError(f"truncate_dim={dim} is larger than this model's {size} dimensions.")


def truncate_embeddings(embeddings: torch.Tensor, dim: Optional[int], normalize: bool) -> torch.Tensor:
    """The first ``dim`` dimensions (None or the full size: all; more is refused), renormalised in float32 when
    ``normalize`` (a normalising embedder's vectors), else as they are (sentence-transformers' ``truncate_dim``). The
    one rule of serving (:meth:`AutoModelForEmbedding.truncate`) and training (:class:`retrievals.losses.MatryoshkaLoss`).

    >>> truncate_embeddings(torch.tensor([[3.0, 4.0, 12.0]]), 2, normalize=True)
    tensor([[0.6000, 0.8000]])
    >>> truncate_embeddings(torch.tensor([[3.0, 4.0, 12.0]]), 2, normalize=False)
    tensor([[3., 4.]])
    """
    check_truncate_dim(dim, embeddings.shape[-1])
    if dim is None or dim == embeddings.shape[-1]:
        return embeddings
    head = embeddings[..., :dim]
    return torch.nn.functional.normalize(head.float(), p=2, dim=-1) if normalize else head


class AutoModelForEmbedding(RetrievalModel):
    """A transformer plus pooling that turns texts into vectors.

    Build it with :meth:`from_pretrained` (a retrievals, sentence-transformers, plain transformers or LoRA adapter
    folder); settings are :class:`EmbeddingConfig` fields (``pooling_method``, ``normalize_embeddings``,
    ``query_instruction``, ``document_instruction``, ``query_max_length``, ``document_max_length``, ``append_eos``,
    ``padding_side``, ``include_prompt``); those left as None come from the saved config, then from
    sentence-transformers files (pooling, normalize, max length, prompts), then from defaults: ``last`` pooling
    with EOS appended for decoder LLMs, ``cls`` for encoders. Loading and saving are the shared
    :class:`~retrievals.models.base.RetrievalModel`'s. Use :meth:`encode`, :meth:`encode_queries` and
    :meth:`encode_corpus` for inference; train it with ``retrievals.pipelines.embed``.
    """

    config_class = EmbeddingConfig
    model_type = "embedding"
    accepted_and_ignored = frozenset({"causal_lm", "model_type"})  # the CLIs' spellings; decoders are detected
    model_type_aliases = {"dense": "embedding"}  # model_type routes to the kind it names (dense | sparse)
    per_call_max_length = True  # encode(max_length=...) may make room an instruction leaves too little of
    internal_fields = frozenset({"lora_base", "model_type", "decoder", "matryoshka_dims", "dense_dim", "dense_bias",
                                 "dense_activation"})
    backend_output = "last_hidden_state"

    def __init__(self, backbone: nn.Module, tokenizer: Any, config: EmbeddingConfig) -> None:
        self._check_config(config)
        super().__init__(backbone, tokenizer, config)
        self.dense: Optional[nn.Linear] = None
        if config.dense_dim:
            self._add_dense(config.dense_dim, config.dense_bias, config.dense_activation)
        check_truncate_dim(config.truncate_dim, self.embedding_dim)  # a default too large: refused at load, not at encode

    def _check_config(self, config: EmbeddingConfig) -> None:
        if config.pooling_method not in POOLING_METHODS:
            raise UsageError(f"Unknown pooling_method {config.pooling_method!r}; choose one of {list(POOLING_METHODS)}.")
        if config.decoder and config.pooling_method == "cls":  # every text sharing a first token had one vector
            raise UsageError("pooling_method='cls' on a decoder-only model: its first token sees only itself, so texts "
                             "that start alike (every query behind an instruction) get the same vector; use 'last' "
                             "or 'mean'.")

    # ------------------------------------------------------------------ the slots of RetrievalModel
    def _make_processor(self) -> TextProcessor:
        return TextProcessor(self.tokenizer, self.retrieval_config)

    @classmethod
    def _default_config(cls, path: str, base_path: str, trust_remote_code: bool) -> EmbeddingConfig:
        config = EmbeddingConfig()
        hf_cfg = hf_config(base_path, trust_remote_code)
        config.decoder = is_decoder_only(hf_cfg)
        config.pooling_method = "last" if config.decoder else "cls"  # append_eos follows the pooling (_finish_config)
        limit = usable_positions(hf_cfg) or 512
        config.query_max_length = config.document_max_length = min(512, int(limit))
        st = read_st_settings(path)
        config.update(**st)
        # sentence-transformers never appends EOS itself (a model that needs one has a tokenizer that adds it): its
        # folder's vectors are those without ours (not a field: nothing to save)
        config.__dict__["_sentence_transformers_folder"] = bool(st)
        return config

    @classmethod
    def _finish_config(cls, config: EmbeddingConfig, tokenizer: Any, overrides: Dict[str, Any], saved_by_us: bool) -> None:
        if overrides.get("padding_side") is None and not saved_by_us:
            config.padding_side = tokenizer.padding_side
        if config.decoder and not saved_by_us and overrides.get("append_eos") is None:
            # EOS is appended for last-token pooling (it reads the whole text); a decoder pooled otherwise (mean:
            # a usable zero-shot start for a chat model) is left as its tokenizer makes it, and so is a
            # sentence-transformers folder (as sentence-transformers runs it)
            config.append_eos = config.pooling_method == "last" and not config.__dict__.get("_sentence_transformers_folder")
        if overrides.get("append_eos") is False and config.decoder:  # a folder we saved with append_eos: its tokenizer
            framed = call_tokenizer(tokenizer, "a")["input_ids"]  # adds the EOS (an encoder's [SEP] is no EOS of ours)
            if framed and framed[-1] == tokenizer.eos_token_id and \
                    framed[-1:] != call_tokenizer(tokenizer, "a", add_special_tokens=False)["input_ids"][-1:]:
                logger.warning("append_eos=False: this tokenizer itself ends every text with %r (a model saved with "
                               "append_eos has it in its tokenizer, for sentence-transformers), so texts keep it; to "
                               "train without it, start from the base model.", tokenizer.convert_ids_to_tokens(framed[-1]))
        if not config.decoder and config.padding_side != "right":
            # encoders number positions from the first slot (BERT) or from the pad tokens (RoBERTa): pad right
            logger.info("Encoder models pad on the right; ignoring padding_side=%r.", config.padding_side)
            config.padding_side = "right"

    @classmethod
    def _load_backbone(cls, path: str, config: EmbeddingConfig, dtype: Optional[torch.dtype], trust_remote_code: bool) -> nn.Module:
        return load_backbone(path, dtype=dtype, trust_remote_code=trust_remote_code)

    def _load_extra(self, path: str, fresh: bool) -> None:
        if self.dense is None:
            return
        folder = st_dense_folder(path)
        settings, state = read_st_dense(folder)
        config = self.retrieval_config
        mine = {"dense_dim": config.dense_dim, "dense_bias": config.dense_bias, "dense_activation": config.dense_activation}
        if settings != mine:  # a hand-edited file: sentence-transformers would run what it says, we what the config says
            raise UsageError(f"{folder / 'config.json'}: Dense settings {settings} disagree with retrievals_config.json's "
                             f"{mine}.")
        expected = {name: tuple(t.shape) for name, t in self.dense.state_dict().items()}
        if {name: tuple(t.shape) for name, t in state.items()} != expected:
            raise UsageError(f"{folder}: Dense weights of shapes { {k: tuple(v.shape) for k, v in state.items()} }; this "
                             f"model's pooled vectors need {expected}.")
        self.dense.load_state_dict(state)

    def _save_extra(self, folder: Path, config: EmbeddingConfig, lora: bool) -> None:
        if self.dense is not None:
            write_st_dense(folder / DENSE_FOLDER, self.dense, config.dense_activation)
        if not lora:  # a LoRA adapter folder is no sentence-transformers model
            self._write_st_files(folder, config)

    def _write_st_files(self, path: Path, config: EmbeddingConfig) -> None:
        prompts = []
        for kind, instruction in (("query", config.query_instruction), ("document", config.document_instruction)):
            prefix = instruction_as_prefix(instruction)
            if prefix is None:
                warn_unsupported_prefix(kind)
            prompts.append(prefix)
        if config.append_eos and not self.processor.eos_added_by_tokenizer and not _is_fast(self.tokenizer):
            logger.warning(
                "This model appends EOS to every text and its tokenizer is not a fast one, so sentence-transformers "
                "will not: load it with retrievals.AutoModelForEmbedding for identical embeddings."
            )
        max_seq_length = warn_one_max_length(config.query_max_length, config.document_max_length)
        write_st_files(
            path,
            embedding_dim=int(self.backbone.config.hidden_size),  # what pooling gives; the Dense layer maps it
            pooling_method=config.pooling_method,
            normalize=config.normalize_embeddings,
            max_seq_length=max_seq_length,
            query_prompt=prompts[0],
            document_prompt=prompts[1],
            include_prompt=config.include_prompt,
            dense=self.dense is not None,
            truncate_dim=config.truncate_dim,
        )

    def _tokenizer_for_saving(self, config: EmbeddingConfig) -> Any:
        """The tokenizer to save: when the model appends EOS itself, a copy whose post-processor adds it,
        so the saved folder tokenizes the same in retrievals and sentence-transformers (as Qwen3-Embedding does).

        Truncation then counts the EOS within the max length, exactly as :class:`TextProcessor` does. The EOS goes
        into the tokenizer's own template (after each text), not a second template after it: chained, the second
        read a BOS-adding template's output (Llama, Mistral, Gemma) as a pair, saving ``BOS EOS text EOS``. A copy
        that does not add exactly that one EOS is not saved (the tokenizer is saved as it was, with a warning).
        """
        tokenizer = self.tokenizer
        if not (config.append_eos and not self.processor.eos_added_by_tokenizer and _is_fast(tokenizer)):
            return tokenizer
        from tokenizers import Tokenizer

        copied = copy.deepcopy(tokenizer)
        backend = copied.backend_tokenizer
        try:  # a tokenizer with custom Python components has no JSON state to extend
            state = json.loads(backend.to_str())
            state["post_processor"] = _post_processor_with_eos(state.get("post_processor"), tokenizer.eos_token,
                                                               tokenizer.eos_token_id)
            backend.post_processor = Tokenizer.from_str(json.dumps(state)).post_processor
            eos = [tokenizer.eos_token_id]
            extended = all(call_tokenizer(copied, t)["input_ids"] == call_tokenizer(tokenizer, t)["input_ids"] + eos
                           for t in ("a", "")) and \
                copied.num_special_tokens_to_add() == tokenizer.num_special_tokens_to_add() + 1
        except Exception:  # noqa: BLE001 (any failure: the tokenizer is saved as it was, with the warning below)
            extended = False
        if not extended:
            logger.warning("This model appends EOS to every text, and its tokenizer's post-processor could not be "
                           "extended to add it: sentence-transformers will not append it; load the folder with "
                           "retrievals.AutoModelForEmbedding for identical embeddings.")
            return tokenizer
        return copied

    def backend_inputs(self) -> List[str]:
        return ["input_ids", "attention_mask"] + (["position_ids"] if self.retrieval_config.decoder else [])

    # ------------------------------------------------------------------ properties
    @property
    def embedding_dim(self) -> int:
        return int(self.retrieval_config.dense_dim or self.backbone.config.hidden_size)

    # ------------------------------------------------------------------ the Dense layer
    def _add_dense(self, dim: int, bias: bool, activation: str) -> None:
        if activation not in DENSE_ACTIVATIONS:
            raise UsageError(f"dense_activation must be one of {sorted(DENSE_ACTIVATIONS)}, got {activation!r}.")
        param = next(self.backbone.parameters())
        self.dense = nn.Linear(int(self.backbone.config.hidden_size), int(dim), bias=bias).to(param.device, param.dtype)
        self.retrieval_config.update(dense_dim=int(dim), dense_bias=bias, dense_activation=activation)

    @torch.no_grad()
    def fit_pca(self, queries: Sequence[str], documents: Sequence[str], dim: Optional[int] = None,
                batch_size: int = 32) -> np.ndarray:
        """Add a Dense layer (no bias) set to the principal axes of these texts' embeddings, largest variance first,
        and return the share of the variance along each axis.

        With ``dim`` None (all axes) the layer is a rotation: every cosine score stays as it was, and the leading
        dimensions carry the most variance, so truncated vectors (Matryoshka sizes) start from the best linear
        subspace of that size; a smaller ``dim`` keeps that many axes (vectors get shorter). Axes come from the
        covariance of the vectors as scored (normalised when the model normalises), queries embedded as queries.
        The layer is saved with the model (sentence-transformers' Dense module) and trains with it.
        """
        if self.dense is not None:
            raise UsageError("this model already has a Dense layer; fit_pca adds one to a model without.")
        if self.inference_backend is not None:
            raise UsageError(f"fit_pca changes the model; backend {self.inference_backend} runs a fixed graph: load "
                             "the model with backend='torch'.")
        q_texts, _ = as_texts(queries, "queries")
        d_texts, _ = as_texts(documents, "documents")
        hidden = int(self.backbone.config.hidden_size)
        dim = hidden if dim is None else dim
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= hidden:
            raise UsageError(f"dim must be an integer in [1, {hidden}] (the pooled size), got {dim!r}.")
        dim = int(dim)
        cfg = self.retrieval_config
        needed = max([cfg.truncate_dim or 0, *(cfg.matryoshka_dims or ())])
        if dim < needed:  # the model (and its save) would refuse every encode, and a reload
            raise UsageError(f"dim={dim} is below the {needed} dimensions this model serves (truncate_dim "
                             f"{cfg.truncate_dim}, Matryoshka sizes {list(cfg.matryoshka_dims or ())}).")
        if len(q_texts) + len(d_texts) < 2:
            raise UsageError(f"fit_pca needs at least 2 texts, got {len(q_texts) + len(d_texts)}.")
        parts = [self.encode(texts, batch_size=batch_size, is_query=is_query, convert_to_tensor=True, truncate_dim=hidden)
                 for texts, is_query in ((q_texts, True), (d_texts, False)) if texts]
        vectors = torch.cat(parts).double()
        centred = vectors - vectors.mean(dim=0, keepdim=True)
        values, axes = torch.linalg.eigh(centred.T @ centred / (len(vectors) - 1))  # ascending
        values, axes = values.flip(0).clamp(min=0), axes.flip(1)
        signs = torch.sign(axes.gather(0, axes.abs().argmax(dim=0, keepdim=True)))  # each axis's largest entry > 0
        axes = axes * torch.where(signs == 0, 1.0, signs)
        self._add_dense(dim, False, "identity")
        self.dense.weight.copy_(axes[:, :dim].T.to(self.dense.weight.dtype))
        total = float(values.sum())
        return (values[:dim] / total).numpy() if total > 0 else np.zeros(dim)

    def check_takes_text(self) -> None:
        for is_query in (True, False):
            self.tokenize(["a"], is_query=is_query)

    # ------------------------------------------------------------------ tokenization
    def tokenize(self, texts: Sequence[str], is_query: bool = False, max_length: Optional[int] = None) -> List[List[int]]:
        """Token ids of ``texts`` (see :meth:`TextProcessor.tokenize`); a ``max_length`` over the model's positions is
        refused (the config's lengths were lowered to them at loading; a call's would crash deep in the backbone)."""
        positions = usable_positions(self.backbone.config)
        if max_length is not None:
            check_int("max_length", max_length, 1)  # "8" failed comparing a str with an int
        if max_length is not None and isinstance(positions, int) and positions > 0 and max_length > positions:
            raise UsageError(f"max_length={max_length} is over the {positions} positions this model has.")
        return self.processor.tokenize(texts, is_query=is_query, max_length=max_length)

    def pad(self, sequences: Sequence[Sequence[int]]) -> Batch:
        return self.processor.pad(sequences)

    # ------------------------------------------------------------------ forward
    def embed(self, batch: Batch, normalize: Optional[bool] = None, chunk_size: int = 32) -> torch.Tensor:
        """Pooled (and, by config, L2-normalised) embeddings of a padded batch.

        A batch larger than ``chunk_size`` (such as the positives and negatives of a training
        batch) runs as length-sorted chunks, each cut to its own longest sequence, so short texts
        do not pay for the padding of long ones.
        """
        left = self.pads_left()
        return run_in_length_chunks(
            lambda b: self._embed_padded(b["input_ids"], b["attention_mask"], normalize, b.get("pooling_mask")),
            batch, chunk_size, left,
        )

    def _embed_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: Optional[bool],
                      pooling_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``pooling_mask`` (see :meth:`TextProcessor.pad`): the tokens to pool when the prompt's are left out."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.retrieval_config.decoder:  # correct positions under left padding
            inputs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.run_backbone(**inputs).last_hidden_state
        emb = pool(hidden, attention_mask if pooling_mask is None else pooling_mask, self.retrieval_config.pooling_method)
        if self.dense is not None:
            emb = self.dense(emb.to(self.dense.weight.dtype))
            emb = torch.tanh(emb) if self.retrieval_config.dense_activation == "tanh" else emb
        if self.retrieval_config.normalize_embeddings if normalize is None else normalize:
            # in float32: a bf16 norm leaves lengths 0.996-1.004, so cosine scores would differ by up to 1%
            emb = torch.nn.functional.normalize(emb.float(), p=2, dim=-1)
        return emb

    def forward(self, query: Optional[Batch] = None, document: Optional[Batch] = None) -> EmbeddingOutput:
        """Embed a query batch and/or a document batch in one call (one forward per DDP step)."""
        return EmbeddingOutput(
            query_embeddings=self.embed(query) if query is not None else None,
            document_embeddings=self.embed(document) if document is not None else None,
        )

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def encode(
        self,
        sentences: Union[str, Sequence[str]],
        batch_size: int = 32,
        show_progress_bar: Optional[bool] = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        normalize_embeddings: Optional[bool] = None,
        is_query: bool = False,
        max_length: Optional[int] = None,
        device: Optional[Union[str, torch.device]] = None,
        truncate_dim: Optional[int] = None,
    ) -> Union[np.ndarray, torch.Tensor]:
        """Embed texts in batches sorted by length, padded per batch; results come back in input order.

        One string gives one vector [dim], a list gives [n, dim] (an empty list [0, dim]). ``truncate_dim`` (default:
        the config's) keeps the first dimensions, renormalised when the model normalises (Matryoshka models are
        trained for it). Safe to call from several threads at once: the results are those of one thread.
        """
        return self._encode_texts(sentences, batch_size, is_query, max_length, device, convert_to_numpy, convert_to_tensor,
                                  show_progress_bar=show_progress_bar, normalize_embeddings=normalize_embeddings,
                                  truncate_dim=truncate_dim)

    def _encode_texts(self, sentences: Union[str, Sequence[str]], batch_size: int, is_query: bool, max_length: Optional[int],
                      device: Any, convert_to_numpy: bool, convert_to_tensor: bool, **options: Any) -> Any:
        """:meth:`encode`'s steps: check, tokenize, :meth:`encode_token_ids` (``options``: its keywords, a kind's own
        ones too), and the result in the form asked for."""
        texts, single = as_texts(sentences, "sentences")
        check_batch_size(batch_size)
        check_flags(is_query=is_query, convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor,
                    **{k: v for k, v in options.items() if k in ("show_progress_bar", "normalize_embeddings")})
        self.check_device(device)
        ids = self.tokenize(texts, is_query=is_query, max_length=max_length)
        out = self.encode_token_ids(ids, batch_size, is_query=is_query, **options)
        result = out[0] if single else out
        if convert_to_tensor:
            return result
        return result.numpy() if convert_to_numpy else result

    @torch.inference_mode()
    def encode_token_ids(
        self,
        ids: Sequence[Sequence[int]],
        batch_size: int = 32,
        show_progress_bar: Optional[bool] = None,
        normalize_embeddings: Optional[bool] = None,
        max_tokens: Optional[int] = None,
        truncate_dim: Optional[int] = None,
        is_query: bool = False,
    ) -> torch.Tensor:
        """Float32 CPU embeddings of texts already tokenized by :meth:`tokenize` (for callers that also
        need the token counts, such as the server), in input order. Batches are length-sorted, at most
        ``batch_size`` texts and (when given) ``max_tokens`` padded tokens each. ``is_query``: as the texts were
        tokenized (the instruction is in the ids already; a kind that embeds queries another way reads it)."""
        check_batch_size(batch_size)
        prompt_length = getattr(ids, "prompt_length", 0)  # the slices below are plain lists
        out = torch.empty((len(ids), self.embedding_dim), dtype=torch.float32)
        if show_progress_bar is None:
            show_progress_bar = len(ids) > 10 * batch_size and logger.getEffectiveLevel() <= 20
        out = self.run_batches([len(x) for x in ids], lambda idx: self.processor.pad([ids[i] for i in idx], prompt_length=prompt_length),
                               # batches are length-grouped already: no chunking (whose lengths would be read back from a GPU)
                               lambda batch: self._embed_padded(batch["input_ids"], batch["attention_mask"], normalize_embeddings,
                                                                batch.get("pooling_mask")), out, batch_size, max_tokens,
                               "Encoding", show_progress_bar)
        return self.truncate(out, truncate_dim, normalize_embeddings)

    def truncate(self, embeddings: torch.Tensor, dim: Optional[int] = None, normalize: Optional[bool] = None) -> torch.Tensor:
        """The first ``dim`` dimensions (default: the config's ``truncate_dim``; None keeps all), renormalised in
        float32 when embeddings are normalised; above their size, refused (:func:`check_truncate_dim`)."""
        dim = check_int("truncate_dim", dim, 1) if dim is not None else self.retrieval_config.truncate_dim
        if isinstance(embeddings, np.ndarray):  # what encode returns by default; was "no attribute 'float'"
            return truncate_embeddings(torch.from_numpy(embeddings), dim, self.retrieval_config.normalize_embeddings
                                       if normalize is None else normalize).numpy()
        return truncate_embeddings(embeddings, dim, self.retrieval_config.normalize_embeddings if normalize is None else normalize)

    def encode_queries(self, queries: Union[str, Sequence[str]], **kwargs: Any) -> Union[np.ndarray, torch.Tensor]:
        """:meth:`encode` with the query instruction and query max length."""
        if not kwargs.pop("is_query", True):
            raise UsageError("encode_queries(is_query=False): use encode_corpus or encode for documents.")
        return self.encode(queries, is_query=True, **kwargs)

    def encode_corpus(self, corpus: Union[str, Dict[str, str], Sequence[Any]], **kwargs: Any) -> Union[np.ndarray, torch.Tensor]:
        """:meth:`encode` for documents: strings, or dicts with ``text`` and optional ``title`` (BEIR),
        embedded as ``"title text"``. One string or one dict gives one vector."""
        if kwargs.pop("is_query", False):
            raise UsageError("encode_corpus(is_query=True): use encode_queries or encode for queries.")
        texts, single = as_texts(corpus, "corpus", documents=True)
        return self.encode(texts[0] if single else texts, is_query=False, **kwargs)

    def build_index(self, sentences: Sequence[Any], index_path: Optional[str] = None, index_type: str = "flat",
                    ids: Optional[Sequence[str]] = None, batch_size: int = 32,
                    encode_kwargs: Optional[Dict[str, Any]] = None, **index_kwargs: Any) -> Any:
        """Encode ``sentences`` as documents (with ``encode_kwargs`` of :meth:`encode_corpus`, such as ``truncate_dim``)
        and index them (``flat``/``ivf``/``hnsw`` with faiss, or ``exact``); ids default to positions. Saved to
        ``index_path`` when given."""
        from ..index import build_dense_index

        encode_kwargs = {"batch_size": batch_size, **(encode_kwargs or {})}
        vectors = np.atleast_2d(self.encode_corpus(sentences, **encode_kwargs))  # one text: one row, not dim ids
        index = build_dense_index(vectors, ids if ids is not None else [str(i) for i in range(len(vectors))], index_type, **index_kwargs)
        return self._record_index(index, index_path)

    def _record_index(self, index: Any, index_path: Optional[str]) -> Any:
        """``index`` marked with which weights and settings made its vectors (the retrieve pipeline's check reads
        it), saved to ``index_path`` when given: every index a model builds ends here."""
        index.source = {"model_weights": state_digest(self), "model": dataclasses.asdict(self.retrieval_config)}
        if index_path:
            index.save(index_path)
        return index

    def similarity(self, queries: np.ndarray | torch.Tensor, documents: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Dot product (cosine for normalised embeddings) between every query and document, in float32 whatever
        mix of numpy arrays, tensors and dtypes comes in."""
        q, d = torch.as_tensor(queries).float(), torch.as_tensor(documents).float()
        q, d = (q[None, :] if q.ndim == 1 else q), (d[None, :] if d.ndim == 1 else d)
        if q.ndim != 2 or d.ndim != 2 or q.shape[-1] != d.shape[-1]:  # was torch's "mat1 and mat2 shapes cannot be multiplied"
            raise UsageError(f"similarity needs vectors of one size: queries {tuple(q.shape)}, documents {tuple(d.shape)}.")
        if not (torch.isfinite(q).all() and torch.isfinite(d).all()):  # nan scores rank unpredictably
            raise UsageError("similarity: a query or document vector has a nan or inf value.")
        return q @ d.T


def _post_processor_with_eos(state: Optional[Dict[str, Any]], eos: str, eos_id: int) -> Dict[str, Any]:
    """A ``tokenizers`` post-processor (its JSON state) that also ends each sequence with ``eos``: inserted after each
    sequence of a template (``BOS $A`` -> ``BOS $A EOS``), a template added to a sequence of processors without one,
    or to a lone processor that adds no tokens (ByteLevel)."""
    plain = {"type": "TemplateProcessing",
             "single": [{"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {}}

    def extended(template: Dict[str, Any]) -> Dict[str, Any]:
        out = copy.deepcopy(template)
        for part in ("single", "pair"):
            pieces = []
            for piece in out[part]:
                pieces.append(piece)
                if "Sequence" in piece:
                    pieces.append({"SpecialToken": {"id": eos, "type_id": piece["Sequence"]["type_id"]}})
            out[part] = pieces
        out["special_tokens"] = {**out.get("special_tokens", {}), eos: {"id": eos, "ids": [eos_id], "tokens": [eos]}}
        return out

    if not state:
        return extended(plain)
    if state.get("type") == "TemplateProcessing":
        return extended(state)
    if state.get("type") == "Sequence":
        inner = state.get("processors", [])
        if any(p.get("type") == "TemplateProcessing" for p in inner):
            return {**state, "processors": [extended(p) if p.get("type") == "TemplateProcessing" else p for p in inner]}
        return {**state, "processors": [*inner, extended(plain)]}
    return {"type": "Sequence", "processors": [state, extended(plain)]}


def _is_fast(tokenizer: Any) -> bool:
    return getattr(tokenizer, "backend_tokenizer", None) is not None and tokenizer.eos_token_id is not None


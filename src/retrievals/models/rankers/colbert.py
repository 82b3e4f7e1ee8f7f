"""ColBERT late interaction: L2-normalised token vectors, MaxSim averaged over query tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...utils import UsageError, apply_instruction, logger
from ..base import load_backbone
from ...inputs import as_texts, check_batch_size, check_encodable
from ..processing import PaddingOptions, at_least_one_token, call_tokenizer, pad_ids, tokenize_user_text
from .base import BaseRanker, Batch, QueryCutter, RankerConfig, RankingOutput, group_targets

COLBERT_LINEAR = "colbert_linear.pt"  # the projection's state dict, as bge-m3 ships it
ENCODED_WINDOWS = 256  # document windows whose token vectors are held at once when scoring (memory bound)


@dataclass
class ColBERTConfig(RankerConfig):
    """``colbert_dim``: size of the token vectors (<= 0: the encoder's hidden size, as in bge-m3). A new
    projection of the hidden size starts as the identity (MaxSim over the encoder's own token vectors).
    ``max_length`` is the document length; ``query_max_length`` the query length."""

    model_type: str = "colbert"
    colbert_dim: int = 128
    query_max_length: int = 64


def maxsim(q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor, all_pairs: bool = False) -> torch.Tensor:
    """Late-interaction score: for each query token the best cosine over document tokens, averaged
    over the query's tokens (so scores lie in [-1, 1] whatever the query length).

    ``q`` [Q, Lq, dim], ``d`` [D, Ld, dim] with masks [Q, Lq], [D, Ld]. Pairwise (``Q == D``) gives
    [Q]; ``all_pairs`` gives [Q, D]; ``d`` of shape [Q, G, Ld, dim] (groups) gives [Q, G].

    >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])            # one query, two token vectors
    >>> d = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 0.0]]])  # one document, the last token is padding
    >>> round(maxsim(q, torch.ones(1, 2), d, torch.tensor([[1, 1, 0]])).item(), 4)  # (1.0 + 0.8) / 2
    0.9

    Computed in float32 with autocast off, whatever the inputs: under mixed precision (training's autocast, bf16
    inference) the einsum would run in bf16, whose steps near 1 (2**-8) are about 0.08 logits at a 0.05 temperature,
    and the losses that read a forward's ``scores`` would train on other scores than those inference ranks by.
    """
    with torch.autocast(q.device.type, enabled=False):
        return _maxsim(q.float(), q_mask, d.float(), d_mask, all_pairs)


def _maxsim(q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor, all_pairs: bool) -> torch.Tensor:
    if d.dim() == 4:
        sim = torch.einsum("bqh,bgkh->bgqk", q, d).masked_fill(~d_mask.bool()[:, :, None, :], -1e4)
    elif all_pairs:
        sim = torch.einsum("bqh,nkh->bnqk", q, d).masked_fill(~d_mask.bool()[None, :, None, :], -1e4)
    else:
        sim = torch.einsum("bqh,bkh->bqk", q, d).masked_fill(~d_mask.bool()[:, None, :], -1e4)
    best = sim.max(dim=-1).values  # [..., Lq]
    qm = q_mask.to(best.dtype)
    if best.dim() == 3:
        qm = qm[:, None, :]
    return (best * qm).sum(-1) / qm.sum(-1).clamp(min=1)


class ColBERTProcessor(QueryCutter, PaddingOptions):
    """Queries capped at ``query_max_length``; documents cut, or split into overlapping windows, at ``max_length``."""

    def __init__(self, tokenizer: Any, config: ColBERTConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.n_special = tokenizer.num_special_tokens_to_add(pair=False)

    def query_ids(self, queries: Sequence[str]) -> List[List[int]]:
        """Token ids of each query (with instruction), capped at ``query_max_length``: a long query is cut before its
        instruction is applied (see :class:`~.base.QueryCutter`); one batched call."""
        if not queries:
            return []
        cut = self._cut_queries(queries, self.config.query_max_length - self.n_special, "query_max_length")
        ids = tokenize_user_text(self.tokenizer, [cut[q] for q in queries], truncation=True,
                                 max_length=self.config.query_max_length)["input_ids"]
        return at_least_one_token([list(x) for x in ids], self.tokenizer)  # an empty text with no special tokens

    def document_ids(self, documents: Sequence[str], all_windows: bool) -> List[List[List[int]]]:
        """The windows' token ids of each document (only the first unless ``all_windows``); one batched call."""
        if not documents:
            return []
        cfg = self.config
        texts = [apply_instruction(cfg.document_instruction, d) for d in documents]
        room = cfg.max_length - self.n_special
        enc = tokenize_user_text(self.tokenizer, texts, truncation=True, max_length=cfg.max_length, stride=min(cfg.window_overlap, room // 2),
                             return_overflowing_tokens=all_windows, verbose=False)
        owners = enc["overflow_to_sample_mapping"] if all_windows else range(len(texts))
        out: List[List[List[int]]] = [[] for _ in texts]
        for ids, owner in zip(enc["input_ids"], owners):
            out[owner].append(list(ids))
        # an empty text with no special tokens: one stand-in token, as alone so in any batch
        return [at_least_one_token(windows or [[]], self.tokenizer) for windows in out]

    def units(self, pairs: Sequence[Tuple[str, str]], all_windows: bool) -> List[List[Tuple[List[int], List[int]]]]:
        """The (query ids, window ids) units of each pair; each distinct query and document is tokenized once."""
        queries = list(dict.fromkeys(q for q, _ in pairs))
        q_ids = dict(zip(queries, self.query_ids(queries)))
        documents = list(dict.fromkeys(d for _, d in pairs))
        d_ids = dict(zip(documents, self.document_ids(documents, all_windows)))
        return [[(q_ids[q], w) for w in d_ids[d]] for q, d in pairs]

    @staticmethod
    def unit_length(unit: Tuple[List[int], List[int]]) -> int:
        return len(unit[1])

    def pad(self, sequences: Sequence[Sequence[int]]) -> Batch:
        return pad_ids(sequences, self.tokenizer.pad_token_id, multiple_of=self.pad_to_multiple_of)

    def collate_units(self, units: Sequence[Tuple[List[int], List[int]]]) -> Batch:
        q = self.pad([u[0] for u in units])
        d = self.pad([u[1] for u in units])
        return {"query_input_ids": q["input_ids"], "query_attention_mask": q["attention_mask"],
                "document_input_ids": d["input_ids"], "document_attention_mask": d["attention_mask"]}

    def __call__(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Training batch: queries, and their groups' documents query-major (first window only)."""
        docs = [wins[0] for wins in self.document_ids([doc for item in items for doc in item["documents"]], False)]
        return {"query": self.pad(self.query_ids([item["query"] for item in items])), "document": self.pad(docs),
                "group_size": len(items[0]["documents"])}


@dataclass
class ColBERTOutput(RankingOutput):
    """Training output: group ``scores``/``targets`` plus the token vectors and masks they came from."""

    query_vectors: Optional[torch.Tensor] = None
    query_mask: Optional[torch.Tensor] = None
    document_vectors: Optional[torch.Tensor] = None
    document_mask: Optional[torch.Tensor] = None


class ColBERT(BaseRanker):
    """Encoder + linear projection to ``colbert_dim``; score = :func:`maxsim` of normalised token vectors.

    The first token ([CLS]) is left out of both sides, as bge-m3 does. Training and inference score
    with the same function; in-batch and cross-device negatives are the loss's
    (:class:`retrievals.losses.MaxSimCrossEntropyLoss`).
    """

    config_class = ColBERTConfig
    model_type = "colbert"
    default_temperature = 0.05  # MaxSim averages of cosines lie in [-1, 1]
    loss_family = "late_interaction"

    def __init__(self, backbone: nn.Module, tokenizer: Any, config: ColBERTConfig) -> None:
        super().__init__(backbone, tokenizer, config)
        hidden = int(backbone.config.hidden_size)
        if isinstance(config.colbert_dim, bool) or not isinstance(config.colbert_dim, int):
            # True or 1.5 failed inside torch's Linear with a message naming no setting
            raise TypeError(f"colbert_dim must be an int (<= 0: the hidden size), got {config.colbert_dim!r}")
        dim = config.colbert_dim if config.colbert_dim > 0 else hidden
        config.colbert_dim = dim
        self.colbert_linear = nn.Linear(hidden, dim).to(next(backbone.parameters()).dtype)
        probe = call_tokenizer(tokenizer, "a")["input_ids"]
        self.skip_first = bool(probe) and probe[0] in tokenizer.all_special_ids

    def _make_processor(self) -> ColBERTProcessor:
        self.tokenizer.padding_side = "right"
        return ColBERTProcessor(self.tokenizer, self.retrieval_config)

    @classmethod
    def _default_config(cls, path: str, base_path: str, trust_remote_code: bool) -> RankerConfig:
        config = super()._default_config(path, base_path, trust_remote_code)
        linear = Path(path) / COLBERT_LINEAR
        if linear.is_file():
            config.colbert_dim = int(torch.load(linear, map_location="cpu", weights_only=True)["weight"].shape[0])
        return config

    @classmethod
    def _check_foreign_folder(cls, path: str) -> None:
        """A sentence-transformers multi-vector folder (MultiVectorEncoder, PyLate: no Pooling, a token projection
        and masks after the transformer) scores with layers and markers this ColBERT does not run: refused, where
        its transformer with a fresh projection would have scored as if it were the trained model."""
        modules = Path(path) / "modules.json"
        if not modules.is_file():
            return
        try:
            kinds = [str(m.get("type", "")) for m in json.loads(modules.read_text(encoding="utf-8"))]
        except (ValueError, AttributeError):
            raise UsageError(f"{modules}: not a list of modules.") from None
        names = [k.rsplit(".", 1)[-1] for k in kinds]
        if "Pooling" not in names and any(n not in ("Transformer", "Normalize") for n in names):
            raise UsageError(f"{modules}: a multi-vector model of another library ({', '.join(kinds)}); retrievals' "
                             "ColBERT does not run its layers after the transformer, so its scores would not be that "
                             "model's. To train a ColBERT from its transformer, pass backbone_only=True (--backbone_only true).")

    @classmethod
    def _load_backbone(cls, path: str, config: RankerConfig, dtype: Optional[torch.dtype], trust_remote_code: bool) -> nn.Module:
        return load_backbone(path, dtype=dtype, trust_remote_code=trust_remote_code)

    def _load_extra(self, path: str, fresh: bool) -> None:
        file = Path(path) / COLBERT_LINEAR
        if not file.is_file():
            if not fresh:
                raise FileNotFoundError(f"{file}: missing; a saved ColBERT model needs its projection.")
            if self.colbert_linear.in_features == self.colbert_linear.out_features:  # colbert_dim <= 0 or = hidden size
                with torch.no_grad():  # start from the encoder's own token vectors: a usable zero-shot scorer
                    self.colbert_linear.weight.copy_(torch.eye(self.colbert_linear.in_features))
                    self.colbert_linear.bias.zero_()
            else:  # random, and another at each load: scores mean nothing until it is trained
                logger.warning("%s: a fresh %d -> %d ColBERT projection (random: train it before scoring with it, or pass "
                               "colbert_dim=-1 to score with the encoder's own token vectors).", path,
                               self.colbert_linear.in_features, self.colbert_linear.out_features)
            return
        state = torch.load(file, map_location="cpu", weights_only=True)
        expected = tuple(self.colbert_linear.weight.shape)
        if tuple(state["weight"].shape) != expected:
            raise UsageError(f"{file}: projection of shape {tuple(state['weight'].shape)}, the model expects {expected} (colbert_dim).")
        self.colbert_linear.load_state_dict(state)

    def _save_extra(self, folder: Path, config: Any, lora: bool) -> None:
        torch.save({k: v.detach().cpu().contiguous() for k, v in self.colbert_linear.state_dict().items()}, folder / COLBERT_LINEAR)

    # ------------------------------------------------------------------ vectors and scores
    def token_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised token vectors [B, L, dim] (padding zeroed) and their mask, first token dropped."""
        hidden = self.run_backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.skip_first:
            hidden, attention_mask = hidden[:, 1:], attention_mask[:, 1:]
        vectors = F.normalize(self.colbert_linear(hidden).float(), p=2, dim=-1)
        return vectors * attention_mask[..., None], attention_mask

    def score_units(self, batch: Batch) -> torch.Tensor:
        q, qm = self.token_vectors(batch["query_input_ids"], batch["query_attention_mask"])
        d, dm = self.token_vectors(batch["document_input_ids"], batch["document_attention_mask"])
        return maxsim(q, qm, d, dm)

    @torch.inference_mode()
    def score_unit_list(self, units: Sequence[Tuple[List[int], List[int]]], batch_size: int = 32,
                        show_progress_bar: bool = False, max_tokens: Optional[int] = None) -> torch.Tensor:
        """Raw score of each (query ids, window ids) unit, in input order: the same token vectors and
        :func:`maxsim` as :meth:`score_units`, but each distinct query and window is encoded once (reranking
        many queries over shared candidates would otherwise encode a document once per pair). Windows are
        taken ``ENCODED_WINDOWS`` at a time with the units that use them, which bounds memory."""
        out = torch.empty(len(units), dtype=torch.float32)
        window_of: Dict[Tuple[int, ...], int] = {}
        unit_window = [window_of.setdefault(tuple(w), len(window_of)) for _, w in units]
        windows = list(window_of)
        users: List[List[int]] = [[] for _ in windows]
        for i, w in enumerate(unit_window):
            users[w].append(i)
        for start in range(0, len(windows), ENCODED_WINDOWS):
            chunk = range(start, min(start + ENCODED_WINDOWS, len(windows)))
            members = [i for w in chunk for i in users[w]]
            query_of: Dict[Tuple[int, ...], int] = {}
            unit_query = [query_of.setdefault(tuple(units[i][0]), len(query_of)) for i in members]
            desc = f"Scoring (windows {start + 1}-{chunk.stop} of {len(windows)})"
            d, dm = self._padded_token_vectors([windows[w] for w in chunk], batch_size, max_tokens, desc, show_progress_bar)
            q, qm = self._padded_token_vectors(list(query_of), batch_size, max_tokens)
            di = torch.as_tensor([unit_window[i] - start for i in members])
            qi = torch.as_tensor(unit_query)
            dev = self.device  # MaxSim where the model runs (a GPU's, when there is one)
            for s in range(0, len(members), batch_size):
                part = slice(s, s + batch_size)
                out[members[part]] = maxsim(q[qi[part]].to(dev), qm[qi[part]].to(dev), d[di[part]].to(dev),
                                            dm[di[part]].to(dev)).cpu()
        return out

    def _padded_token_vectors(self, sequences: Sequence[Sequence[int]], batch_size: int, max_tokens: Optional[int],
                              desc: str = "", show_progress_bar: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`token_vectors` of each id sequence (batched by length), padded to the longest: [N, L, dim], [N, L]."""
        drop = int(self.skip_first)
        lengths = [len(ids) for ids in sequences]
        longest = max(lengths) - drop
        out = torch.zeros(len(sequences), longest, self.retrieval_config.colbert_dim)

        def rows(batch: Batch) -> torch.Tensor:
            vectors, _ = self.token_vectors(batch["input_ids"], batch["attention_mask"])
            return F.pad(vectors, (0, 0, 0, longest - vectors.shape[1]))

        self.run_batches(lengths, lambda idx: self.processor.pad([sequences[k] for k in idx]), rows, out, batch_size,
                         max_tokens, desc, show_progress_bar)
        mask = (torch.arange(longest)[None, :] < torch.as_tensor(lengths)[:, None] - drop).long()
        return out, mask

    def _postprocess(self, scores: torch.Tensor) -> torch.Tensor:
        # the cosine-based MaxSim average lies in [-1, 1], but in float32 a document equal to the query lands a hair
        # above 1 in a batch (1.0000001): clamped, so normalize=True keeps its [0, 1] promise (the order is unchanged)
        return ((scores + 1) / 2).clamp(0.0, 1.0)

    def forward(self, query: Batch, document: Batch, group_size: int) -> "ColBERTOutput":
        """Token vectors of the batch (the late-interaction loss scores them, in-batch or across processes as it
        is set) and each query's group scores (for losses that read scores)."""
        q, qm = self.token_vectors(query["input_ids"], query["attention_mask"])
        d, dm = self.token_vectors(document["input_ids"], document["attention_mask"])
        batch = q.shape[0]
        scores = maxsim(q, qm, d.view(batch, group_size, *d.shape[1:]), dm.view(batch, group_size, -1))
        return ColBERTOutput(scores=scores, targets=group_targets(batch, q.device), query_vectors=q, query_mask=qm,
                             document_vectors=d, document_mask=dm)

    @torch.inference_mode()
    def encode_documents(self, documents: Sequence[str], batch_size: int = 32) -> List[List[torch.Tensor]]:
        """Token vectors of each document, one [tokens, dim] tensor per window, to score later
        with :meth:`score_vectors` (the same vectors, hence scores, as :meth:`compute_score`)."""
        documents, _ = as_texts(documents, "documents", documents=True)  # BEIR dicts too, as rerank takes them
        check_batch_size(batch_size)
        flat = [(i, ids) for i, wins in enumerate(self.processor.document_ids(documents, self.retrieval_config.score_windows))
                for ids in wins]
        out: List[List[torch.Tensor]] = [[] for _ in documents]
        for start in range(0, len(flat), ENCODED_WINDOWS):
            chunk = flat[start : start + ENCODED_WINDOWS]
            vectors, mask = self._padded_token_vectors([ids for _, ids in chunk], batch_size, None)
            for (owner, _), v, m in zip(chunk, vectors, mask):
                out[owner].append(v[m.bool()])
        return out

    @torch.inference_mode()
    def score_vectors(self, query: str, document_vectors: Sequence[Sequence[torch.Tensor]]) -> List[float]:
        """Scores of ``query`` against documents encoded by :meth:`encode_documents` (best window each)."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        check_encodable(query, "query")  # a lone surrogate failed in the tokenizer, naming nothing
        q, qm = self._padded_token_vectors(self.processor.query_ids([query]), 1, None)
        q, qm = q.to(self.device), qm.to(self.device)
        scores = []
        for i, wins in enumerate(document_vectors):
            if len(wins) == 0:  # encode_documents gives every document at least one window
                raise UsageError(f"document_vectors[{i}] holds no window; pass what encode_documents returned.")
            best = max(
                float(maxsim(q, qm, w[None].to(q.device, q.dtype), torch.ones(1, w.shape[0], device=q.device))[0])
                for w in (self._window(w, f"document_vectors[{i}][{j}]") for j, w in enumerate(wins))
            )
            scores.append(best)
        return scores

    def _window(self, vectors: Any, where: str) -> torch.Tensor:
        """One window's token vectors [tokens, colbert_dim] as a float tensor (numpy too): a wrong width was einsum's
        RuntimeError, a numpy array an AttributeError, and a nan vector a nan score, silently."""
        w = torch.as_tensor(vectors) if not isinstance(vectors, torch.Tensor) else vectors
        if w.ndim != 2 or w.shape[-1] != self.retrieval_config.colbert_dim:
            raise UsageError(f"{where} has shape {tuple(w.shape)}; expected [tokens, {self.retrieval_config.colbert_dim}] "
                             "as encode_documents returns.")
        if not torch.isfinite(w).all():
            raise UsageError(f"{where} has a nan or inf value.")
        return w

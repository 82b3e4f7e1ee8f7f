"""Text processing shared by training and inference: instructions, truncation, EOS and dynamic padding,
and the two guards that make inference safe to call from several threads at once."""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TypeVar

import torch

from ..utils import apply_instruction

MIN_PADDING_SAVED = 0.1  # run_in_length_chunks splits a batch only when that saves at least this share of tokens


P = TypeVar("P", bound="PaddingOptions")

# ---------------------------------------------------------------------------------------------- threads
_GUARD = threading.Lock()  # guards the two registries below (held only for a moment)
_TOKENIZER_LOCKS: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_EVAL_CALLS: "weakref.WeakKeyDictionary[torch.nn.Module, List[Any]]" = weakref.WeakKeyDictionary()


def call_tokenizer(tokenizer: Any, *args: Any, **kwargs: Any) -> Any:
    """``tokenizer(*args, **kwargs)`` under a lock shared by every user of that tokenizer object.

    A fast tokenizer keeps its truncation and padding settings in its Rust backend and every call
    rewrites them (even a call without truncation clears them), so two overlapping calls with different
    max lengths can truncate with each other's length. One call at a time keeps each call's results
    exactly those of a single thread. The lock lives outside the tokenizer, which stays picklable.
    """
    with _GUARD:
        lock = _TOKENIZER_LOCKS.get(tokenizer)
        if lock is None:
            lock = _TOKENIZER_LOCKS[tokenizer] = threading.Lock()
    with lock:
        return tokenizer(*args, **kwargs)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run an inference call in eval mode (no dropout), however calls overlap across threads.

    Models load in eval mode, so this usually does nothing. A model in training mode (evaluation during
    training) is switched to eval for the duration; overlapping calls share one counter, and only the
    last one to finish puts back the modules that were training, so no call ever runs with dropout on.
    """
    with _GUARD:
        state = _EVAL_CALLS.setdefault(model, [0, []])  # [calls running, modules to put back in training mode]
        training = [m for m in model.modules() if m.training]
        if training:
            state[1].extend(training)
            model.eval()
        state[0] += 1
    try:
        yield
    finally:
        with _GUARD:
            state[0] -= 1
            if state[0] == 0:
                for module in state[1]:
                    module.training = True  # exactly the modules that were training (not their children)
                del _EVAL_CALLS[model]



class PaddingOptions:
    """``pad_to_multiple_of``, shared by every processor: batches padded to a multiple of it (fewer distinct
    shapes for ``torch.compile`` and CUDA graphs, tensor-core friendly widths); ``None`` pads to the longest."""

    pad_to_multiple_of: Optional[int] = None

    def with_pad_to_multiple_of(self: P, multiple: Optional[int]) -> P:
        """A copy (sharing the tokenizer) that pads to a multiple of ``multiple``; used as a training collator."""
        if multiple is not None and multiple < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {multiple}.")
        out = copy.copy(self)
        out.pad_to_multiple_of = multiple
        return out


class TextProcessor(PaddingOptions):
    """Tokenizer plus the model config's text settings; small and picklable for data-loader workers.

    ``config`` needs ``query_instruction``, ``document_instruction``, ``query_max_length``,
    ``document_max_length``, ``append_eos`` and ``padding_side``.
    """

    def __init__(self, tokenizer: Any, config: Any) -> None:
        self.tokenizer = tokenizer
        self.config = config
        tokenizer.padding_side = config.padding_side
        eos = tokenizer.eos_token_id
        ids = call_tokenizer(tokenizer, "a", add_special_tokens=True)["input_ids"] if eos is not None else []
        self.eos_added_by_tokenizer = bool(ids) and ids[-1] == eos

    def tokenize(self, texts: Sequence[str], is_query: bool = False, max_length: Optional[int] = None) -> List[List[int]]:
        """Unpadded token ids with the query or document instruction applied and truncation to the max length.

        With ``append_eos`` the EOS token ends every sequence (counted within the max length).
        """
        cfg = self.config
        instruction = cfg.query_instruction if is_query else cfg.document_instruction
        limit = max_length or (cfg.query_max_length if is_query else cfg.document_max_length)
        eos = self.tokenizer.eos_token_id
        add_eos = cfg.append_eos and not self.eos_added_by_tokenizer and eos is not None
        texts = [apply_instruction(instruction, t) for t in texts]
        ids: List[List[int]] = []
        if texts:  # a tokenizer call with no text fails in some tokenizers
            ids = call_tokenizer(self.tokenizer, texts, truncation=True, max_length=limit - 1 if add_eos else limit,
                                 padding=False)["input_ids"]
        if add_eos:
            ids = [seq if seq and seq[-1] == eos else seq + [eos] for seq in ids]
        return ids

    def pad(self, sequences: Sequence[Sequence[int]]) -> Dict[str, torch.Tensor]:
        """Pad to the longest sequence of this batch (rounded up to ``pad_to_multiple_of``) on the tokenizer's padding side."""
        return pad_ids(sequences, self.tokenizer.pad_token_id, left=self.tokenizer.padding_side == "left",
                       multiple_of=self.pad_to_multiple_of)


def pad_ids(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    left: bool = False,
    token_type_ids: Optional[Sequence[Sequence[int]]] = None,
    multiple_of: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (and ``token_type_ids`` when given) padded to the batch's longest,
    rounded up to a multiple of ``multiple_of`` when given."""
    longest = max(len(s) for s in sequences)
    if multiple_of:
        longest = -(-longest // multiple_of) * multiple_of
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    types = torch.zeros((len(sequences), longest), dtype=torch.long) if token_type_ids is not None else None
    for row, seq in enumerate(sequences):
        n = len(seq)
        span = slice(longest - n, longest) if left else slice(0, n)
        input_ids[row, span] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, span] = 1
        if types is not None:
            types[row, span] = torch.as_tensor(token_type_ids[row], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def run_in_length_chunks(
    fn: Callable[[Dict[str, torch.Tensor]], torch.Tensor], batch: Dict[str, torch.Tensor], chunk_size: int, left: bool = False
) -> torch.Tensor:
    """``fn(batch)`` computed on length-sorted chunks of at most ``chunk_size`` rows, each cut to its
    own longest sequence, results back in row order. Identical to ``fn(batch)`` for padding-independent
    ``fn``, cheaper when lengths vary (short rows stop paying for long rows' padding).

    When chunking would save less than :data:`MIN_PADDING_SAVED` of the batch's padded tokens (texts
    of similar length), the batch runs whole: one large pass beats several small ones on a GPU.
    The lengths are read with one device-to-host copy, not one per chunk. Under ``torch.compile`` the
    batch runs whole: data-dependent chunk shapes would break the graph and defeat CUDA graphs."""
    mask = batch["attention_mask"]
    rows, width = mask.shape
    if rows <= chunk_size or torch.compiler.is_compiling():
        return fn(batch)
    lengths = mask.sum(dim=1).tolist()
    order = sorted(range(rows), key=lambda i: -lengths[i])
    chunks = [order[i : i + chunk_size] for i in range(0, rows, chunk_size)]
    widths = [lengths[idx[0]] for idx in chunks]  # rows are sorted longest first
    if sum(len(idx) * w for idx, w in zip(chunks, widths)) > (1 - MIN_PADDING_SAVED) * rows * width:
        return fn(batch)
    parts = []
    for idx, w in zip(chunks, widths):
        cols = slice(width - w, None) if left else slice(0, w)
        index = torch.tensor(idx, device=mask.device)
        parts.append(fn({k: v[index][:, cols] for k, v in batch.items()}))
    inverse = torch.empty(rows, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(rows)
    return torch.cat(parts)[inverse.to(mask.device)]

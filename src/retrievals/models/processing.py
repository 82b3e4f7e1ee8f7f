"""Text processing shared by training and inference: instructions, truncation, EOS and dynamic padding,
and the two guards that make inference safe to call from several threads at once."""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TypeVar

import torch

from ..inputs import check_int
from ..utils import UsageError, apply_instruction, instruction_as_prefix, logger

MIN_PADDING_SAVED = 0.1  # run_in_length_chunks splits a batch only when that saves at least this share of tokens


P = TypeVar("P", bound="PaddingOptions")

# ---------------------------------------------------------------------------------------------- threads
_GUARD = threading.Lock()  # guards the two registries below (held only for a moment)
_TOKENIZER_LOCKS: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_EVAL_CALLS: "weakref.WeakKeyDictionary[torch.nn.Module, List[Any]]" = weakref.WeakKeyDictionary()


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: Optional[int] = None) -> List[List[int]]:
    """Indices grouped for batched inference: longest first, each group at most ``batch_size`` items and (with
    ``max_tokens``) at most that many padded tokens (its longest x its size; a group holds at least one item).
    With ``max_tokens`` a group also holds only inputs at least half as long as its longest, so short inputs
    never pay for a long one's padding (the server mixes requests of every length in one call)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: List[List[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group is None or len(group) >= batch_size or (max_tokens and (
                lengths[group[0]] * (len(group) + 1) > max_tokens or 2 * lengths[i] < lengths[group[0]])):
            groups.append([i])
        else:
            group.append(i)
    return groups


def tokenize_user_text(tokenizer: Any, *args: Any, **kwargs: Any) -> Any:
    """:func:`call_tokenizer` for text that comes from users (queries, documents): a special token's spelling in it
    (``<|im_end|>``, ``[SEP]``) is read as plain text, never as a control token, in training and inference alike.
    The special tokens the tokenizer adds are not affected. An embedder's or cross-encoder's instruction is
    tokenized with its text, so a special token's spelling in it is plain text too (said once, at first use);
    the LLM reranker's prompts keep theirs."""
    return call_tokenizer(tokenizer, *args, split_special_tokens=True, **kwargs)


def tokenizer_lock(tokenizer: Any) -> threading.Lock:
    """The lock every use of ``tokenizer`` takes (its Rust backend keeps each call's settings)."""
    with _GUARD:
        lock = _TOKENIZER_LOCKS.get(tokenizer)
        if lock is None:
            lock = _TOKENIZER_LOCKS[tokenizer] = threading.Lock()
    return lock


def tokenizer_at_rest(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` without the truncation and padding its last call left in its fast backend: what
    a save writes (else the saved ``tokenizer.json`` would cut every text at that call's length when read
    with ``tokenizers``, and two saves of one model would differ)."""
    with tokenizer_lock(tokenizer):
        out = copy.deepcopy(tokenizer)
    backend = getattr(out, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    return out


def at_least_one_token(ids: List[List[int]], tokenizer: Any) -> List[List[int]]:
    """Each sequence, or one EOS (else pad) token for a text that tokenizes to nothing (an empty text, with a
    tokenizer that adds no special tokens): a model cannot run on zero tokens, and a text's result must not
    depend on the batch it is in."""
    if all(ids):
        return ids
    filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    if filler is None:
        raise UsageError("an empty text tokenizes to no token, and this tokenizer has no EOS or pad token to stand in.")
    return [seq if seq else [filler] for seq in ids]


def call_tokenizer(tokenizer: Any, *args: Any, **kwargs: Any) -> Any:
    """``tokenizer(*args, **kwargs)`` under a lock shared by every user of that tokenizer object.

    A fast tokenizer keeps its truncation and padding settings in its Rust backend and every call
    rewrites them (even a call without truncation clears them), so two overlapping calls with different
    max lengths can truncate with each other's length. One call at a time keeps each call's results
    exactly those of a single thread. The lock lives outside the tokenizer, which stays picklable.
    """
    with tokenizer_lock(tokenizer):
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


# ---------------------------------------------------------------------------------------------- text
class TokenIds(list):
    """Token ids of a list of texts (a plain list of lists) that also carries ``prompt_length``: how many
    leading tokens of every sequence belong to the instruction and are left out of pooling
    (``include_prompt=False``, as sentence-transformers does; 0 otherwise)."""

    prompt_length: int = 0


def exclude_prompt(attention_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """``attention_mask`` without the first ``prompt_length`` real tokens of each row (either padding side)."""
    return attention_mask * (attention_mask.cumsum(-1) > prompt_length)


class PaddingOptions:
    """``pad_to_multiple_of``, shared by every processor: batches padded to a multiple of it (fewer distinct
    shapes for ``torch.compile`` and CUDA graphs, tensor-core friendly widths); ``None`` pads to the longest."""

    pad_to_multiple_of: Optional[int] = None

    def with_pad_to_multiple_of(self: P, multiple: Optional[int]) -> P:
        """A copy (sharing the tokenizer) that pads to a multiple of ``multiple``; used as a training collator."""
        if multiple is not None and multiple < 1:
            raise UsageError(f"pad_to_multiple_of must be >= 1, got {multiple}.")
        out = copy.copy(self)
        out.pad_to_multiple_of = multiple
        return out


class TextProcessor(PaddingOptions):
    """Tokenizer plus the model config's text settings; small and picklable for data-loader workers.

    ``config`` needs ``query_instruction``, ``document_instruction``, ``query_max_length``,
    ``document_max_length``, ``append_eos`` and ``padding_side`` (``include_prompt`` is optional).
    """

    def __init__(self, tokenizer: Any, config: Any) -> None:
        self.tokenizer = tokenizer
        self.config = config
        tokenizer.padding_side = config.padding_side
        # of the tokens the tokenizer adds, how many come after the text ([SEP], an EOS): a template's tail goes before them
        framed = call_tokenizer(tokenizer, "a", add_special_tokens=True)["input_ids"]
        bare = call_tokenizer(tokenizer, "a", add_special_tokens=False)["input_ids"]
        at = next((i for i in range(len(framed) - len(bare) + 1) if framed[i:i + len(bare)] == bare), len(framed) - len(bare))
        self.n_trailing = len(framed) - at - len(bare)
        # a tokenizer that ends every text with a token of its own ends it as its model was trained to be pooled, the
        # EOS or another (Qwen3-Embedding's <|endoftext|>, while its eos_token is <|im_end|>): no second end token
        self.eos_added_by_tokenizer = tokenizer.eos_token_id is not None and self.n_trailing > 0
        # the tokens the tokenizer adds to every text (and the EOS we add): a max length must leave room for a word
        self.n_special = len(call_tokenizer(tokenizer, "", add_special_tokens=True)["input_ids"]) + int(self._add_eos())
        self._prompt_lengths: Dict[Any, int] = {}
        self._roomy: set = set()  # (instruction, max length) pairs that leave room for text
        for instruction in (config.query_instruction, config.document_instruction):
            self._prompt(instruction)  # fail at loading, not at the first call

    def _prompt(self, instruction: str) -> str:
        """The instruction's prefix that pooling leaves out: "" unless ``include_prompt`` is False."""
        if getattr(self.config, "include_prompt", True) or not instruction:
            return ""
        prefix = instruction_as_prefix(instruction)
        if prefix is None:
            raise UsageError(
                f"include_prompt=False needs instructions that are prefixes; {instruction!r} has text after '{{}}'."
            )
        return prefix

    def _add_eos(self) -> bool:
        return self.config.append_eos and not self.eos_added_by_tokenizer and self.tokenizer.eos_token_id is not None

    def prompt_length(self, instruction: str, limit: int) -> int:
        """Leading tokens of the instruction left out of pooling, counted as sentence-transformers does: the
        prompt tokenized alone (special tokens included, same truncation) less a trailing special token."""
        prompt = self._prompt(instruction)
        if not prompt:
            return 0
        key = (prompt, limit)
        if key not in self._prompt_lengths:
            cap = limit - 1 if self._add_eos() else limit
            # as the prompt is tokenized in front of each text: a special token's spelling in it is plain text there
            ids = tokenize_user_text(self.tokenizer, prompt, truncation=True, max_length=cap)["input_ids"]
            trailing_special = bool(ids) and ids[-1] in self.tokenizer.all_special_ids
            self._prompt_lengths[key] = len(ids) - int(trailing_special)
        return self._prompt_lengths[key]

    def _keep_template_tail(self, instruction: str, texts: Sequence[str], ids: List[List[int]], cap: int) -> List[List[int]]:
        """A template's text after ``{}`` survives truncation (as the LLM ranker's prompts keep theirs): a sequence
        cut at ``cap`` is rebuilt from the head and the text, cut shorter, then the tail's tokens before the
        tokenizer's trailing special tokens. Sequences that fit are left as tokenized whole."""
        head, marker, tail = (instruction or "").partition("{}")
        cut = [i for i, seq in enumerate(ids) if len(seq) >= cap] if marker and tail.strip() else []
        if not cut:
            return ids
        tail_ids = tokenize_user_text(self.tokenizer, [tail], add_special_tokens=False)["input_ids"][0]
        short = tokenize_user_text(self.tokenizer, [head + texts[i] for i in cut], truncation=True,
                                   max_length=cap - len(tail_ids), padding=False)["input_ids"]
        for i, seq in zip(cut, short):
            end = len(seq) - self.n_trailing
            ids[i] = seq[:end] + tail_ids + seq[end:]
        return ids

    def check_room(self, instruction: str, limit: int) -> None:
        """Refuse an instruction that fills ``limit`` tokens with the special tokens: truncation would cut every
        text away, and every text would get the same vector."""
        if instruction and (instruction, limit) not in self._roomy:
            spelled = [t for t in getattr(self.tokenizer, "all_special_tokens", []) if t and t in instruction]
            if spelled and not any(key[0] == instruction for key in self._roomy):
                logger.warning("the instruction %r spells the special token(s) %s: it is tokenized with each text, as "
                               "plain text (sentence-transformers reads them as control tokens).", instruction[:60],
                               ", ".join(spelled))
            used = len(call_tokenizer(self.tokenizer, apply_instruction(instruction, ""), add_special_tokens=False)["input_ids"])
            if used + self.n_special >= limit:
                raise UsageError(f"the instruction {instruction[:60]!r} takes {used} tokens and the special tokens "
                                 f"{self.n_special}: a max length of {limit} leaves no room for the text. Raise the max "
                                 "length or shorten the instruction.")
            self._roomy.add((instruction, limit))

    def tokenize(self, texts: Sequence[str], is_query: bool = False, max_length: Optional[int] = None) -> TokenIds:
        """Unpadded token ids with the query or document instruction applied and truncation to the max length.

        With ``append_eos`` the EOS token ends every sequence (counted within the max length).
        """
        cfg = self.config
        instruction = cfg.query_instruction if is_query else cfg.document_instruction
        limit = check_int("max_length", max_length, 1) if max_length is not None else (
            cfg.query_max_length if is_query else cfg.document_max_length)
        if limit <= self.n_special:  # the tokenizer would not truncate at all: a sequence longer than the model takes
            raise UsageError(f"max_length {limit} leaves no room for text: this tokenizer adds {self.n_special} special "
                             "token(s) to every text.")
        self.check_room(instruction, limit)
        eos = self.tokenizer.eos_token_id
        add_eos = self._add_eos()
        raw, texts = texts, [apply_instruction(instruction, t) for t in texts]
        ids: List[List[int]] = []
        if texts:  # a tokenizer call with no text fails in some tokenizers
            cap = limit - 1 if add_eos else limit
            ids = tokenize_user_text(self.tokenizer, texts, truncation=True, max_length=cap, padding=False)["input_ids"]
            ids = self._keep_template_tail(instruction, raw, ids, cap)
        if add_eos:
            ids = [seq if seq and seq[-1] == eos else seq + [eos] for seq in ids]
        out = TokenIds(at_least_one_token(ids, self.tokenizer))
        out.prompt_length = self.prompt_length(instruction, limit)
        return out

    def pad(self, sequences: Sequence[Sequence[int]], prompt_length: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Pad to the longest sequence of this batch (rounded up to ``pad_to_multiple_of``) on the tokenizer's padding side.

        When the instruction is left out of pooling (``prompt_length``, by default that of :meth:`tokenize`'s
        output) the batch also holds ``pooling_mask``: the attention mask without the prompt's tokens.
        """
        batch = pad_ids(sequences, self.tokenizer.pad_token_id, left=self.tokenizer.padding_side == "left",
                        multiple_of=self.pad_to_multiple_of)
        prompt_length = getattr(sequences, "prompt_length", 0) if prompt_length is None else prompt_length
        if prompt_length:
            batch["pooling_mask"] = exclude_prompt(batch["attention_mask"], prompt_length)
        return batch


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

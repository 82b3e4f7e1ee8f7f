"""A local causal LM that answers prompts: the generator of RAG pipelines (LangChain's ``LangchainLLM``)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, List, Optional, Sequence, Union

import torch

from ..inputs import as_texts
from ..utils import UsageError, finite_number, resolve_device, resolve_dtype
from .base import load_backbone, load_tokenizer
from .processing import call_tokenizer, pad_ids, tokenize_user_text

_MARK = "\ue000"  # a private-use character standing for the prompt while the chat template is rendered
_SAMPLING = threading.Lock()  # torch's random state is one per process: one sampling call at a time


class Generator:
    """Chat-formatted text generation with a local decoder LM (greedy unless ``temperature > 0``).

    ``generate(prompt)`` wraps the prompt as one user turn when the tokenizer has a chat template,
    generates up to ``max_new_tokens`` and cuts the answer at the first ``stop`` string.
    """

    def __init__(self, model: Any, tokenizer: Any, use_chat_template: bool = True) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.use_chat_template = use_chat_template and getattr(tokenizer, "chat_template", None) is not None

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        dtype: Optional[Union[str, torch.dtype]] = None,
        device: Optional[Union[str, torch.device]] = None,
        use_chat_template: bool = True,
        trust_remote_code: bool = False,
    ) -> "Generator":
        device_ = resolve_device(device)
        model = load_backbone(str(model_name_or_path), causal_lm=True, dtype=resolve_dtype(dtype, device_),
                              trust_remote_code=trust_remote_code).to(device_)
        tokenizer = load_tokenizer(str(model_name_or_path), padding_side="left", trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, use_chat_template)

    def format(self, prompt: str) -> str:
        if not self.use_chat_template:
            return prompt
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def prompt_ids(self, prompt: str) -> List[int]:
        """Token ids of one prompt: the chat template's own text with its special tokens, and the prompt with a
        special token's spelling read as plain text (a retrieved document quoted in it cannot open a turn)."""
        tok = self.tokenizer
        if not self.use_chat_template:
            return list(tokenize_user_text(tok, prompt)["input_ids"])
        before, mark, after = self.format(_MARK).partition(_MARK)
        if not mark or _MARK in after:
            raise UsageError("the tokenizer's chat template does not place the user's message once; pass "
                             "use_chat_template=False and format prompts yourself.")
        return [*call_tokenizer(tok, before, add_special_tokens=False)["input_ids"],
                *tokenize_user_text(tok, prompt, add_special_tokens=False)["input_ids"],
                *call_tokenizer(tok, after, add_special_tokens=False)["input_ids"]]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Union[str, Sequence[str]],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        stop: Union[None, str, Sequence[str]] = None,
        seed: Optional[int] = None,
    ) -> Union[str, List[str]]:
        """Answers to ``prompts`` (one string for one prompt, a list for a list); batched with left padding.
        Each answer is cut at the first of the ``stop`` strings found in it (one string is one stop sequence).
        Sampling (``temperature > 0``) runs one call at a time: torch's random state is one per process, so a
        ``seed`` gives the same answers from many threads as from one."""
        texts, single = as_texts(prompts, "prompts")
        finite_number("temperature (0: greedy)", temperature)  # nan and negative ones would silently mean greedy
        # a string is one stop sequence, never iterated as its characters (each would cut the answer); any other
        # item than a string is refused by as_texts, naming its position
        stops = [] if stop is None else as_texts(stop, "stop")[0]
        if "" in stops:  # found at index 0 of every answer: all would be cut to nothing
            raise UsageError("stop holds an empty string, which would cut every answer to nothing.")
        if not texts:
            return []
        ids = [self.prompt_ids(t) for t in texts]
        for i, seq in enumerate(ids):
            if not seq:  # no chat template and no BOS: a model cannot continue zero tokens
                raise UsageError(f"prompts[{i}] is empty: it tokenizes to no token.")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = {k: v.to(self.model.device) for k, v in pad_ids(ids, pad, left=True).items()}
        sampling = temperature > 0
        kwargs: dict = {"max_new_tokens": max_new_tokens, "do_sample": sampling, "pad_token_id": self.tokenizer.pad_token_id}
        if sampling:
            kwargs.update(temperature=temperature, top_k=top_k, top_p=top_p)
        else:  # greedy: clear sampling settings a model's generation_config may carry, so none is reported as unused
            kwargs.update(temperature=None, top_k=None, top_p=None)
        with _SAMPLING if sampling else contextlib.nullcontext():
            if sampling and seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**batch, **kwargs)
        answers = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        answers = [_cut_at_stop(a, stops).strip() for a in answers]
        return answers[0] if single else answers


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]

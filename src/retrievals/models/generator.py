"""A local causal LM that answers prompts: the generator of RAG pipelines (LangChain's ``LangchainLLM``)."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, List, Optional, Sequence, Union

import torch

from ..inputs import as_texts, check_int
from ..utils import UsageError, finite_number, resolve_device, resolve_dtype
from .base import check_model_path, hf_config, is_decoder_only, is_lora_dir, load_backbone, load_tokenizer
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
        if not isinstance(model_name_or_path, (str, os.PathLike)):  # None was tried as a hub repo named "None"
            raise TypeError(f"model_name_or_path must be a path or hub id, got {type(model_name_or_path).__name__}")
        path = check_model_path(model_name_or_path)
        if not is_lora_dir(path):  # an encoder (BERT) loads with a fresh random LM head and generates noise
            config = hf_config(path, trust_remote_code=trust_remote_code)
            if not is_decoder_only(config):
                raise UsageError(f"{path}: a {getattr(config, 'model_type', '?')} model is not a decoder-only causal LM; "
                                 "a Generator needs one (Qwen2, Llama, GPT-2 ...).")
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

    def context_length(self) -> Optional[int]:
        """The positions the model was built for (``max_position_embeddings`` or GPT-2's ``n_positions``), if known."""
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _own_random_state(self, seeded: bool) -> Any:
        """A seeded call samples from its own random state: the caller's (torch's global one) is put back after."""
        if not seeded:
            return contextlib.nullcontext()
        device = self.model.device
        return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])

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
        # 2.5 or True tokens were taken as 3 and 1, None as the model's own default, a str failed in transformers
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1)
        top_k = None if top_k is None else check_int("top_k", top_k, 1)
        if top_p is not None and not 0 < finite_number("top_p", top_p) <= 1:  # 2.0 sampled from everything, silently
            raise UsageError(f"top_p must be in (0, 1], got {top_p}")
        if seed is not None and check_int("seed", seed, 0) >= 2 ** 64:  # torch's seeds are 64-bit
            raise UsageError(f"seed must be below 2**64, got {seed}")
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
        limit = self.context_length()
        for i, seq in enumerate(ids):  # each prompt on its own: a batch refuses what one by one would
            # past its positions a model fails deep in torch (absolute positions) or answers from untrained ones (RoPE)
            if limit is not None and len(seq) + max_new_tokens > limit:
                raise UsageError(f"prompts[{i}] is {len(seq)} tokens (chat template included) and max_new_tokens "
                                 f"{max_new_tokens}: together past the model's {limit} positions; shorten the prompt "
                                 "(fewer or shorter retrieved documents) or ask for fewer tokens.")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = {k: v.to(self.model.device) for k, v in pad_ids(ids, pad, left=True).items()}
        sampling = temperature > 0
        kwargs: dict = {"max_new_tokens": max_new_tokens, "do_sample": sampling, "pad_token_id": self.tokenizer.pad_token_id}
        if sampling:
            kwargs.update(temperature=temperature, top_k=top_k, top_p=top_p)
        else:  # greedy: clear sampling settings a model's generation_config may carry, so none is reported as unused
            kwargs.update(temperature=None, top_k=None, top_p=None)
        with _SAMPLING if sampling else contextlib.nullcontext(), self._own_random_state(sampling and seed is not None):
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

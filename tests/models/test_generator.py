"""Generator's input contract: generation settings, the model's context length, the caller's random state and
which models can generate (each failed before its fix)."""

import pytest
import torch

from retrievals.models.generator import Generator
from retrievals.utils import UsageError


@pytest.fixture(scope="module")
def gen(tiny_qwen):
    return Generator.from_pretrained(tiny_qwen, use_chat_template=False)


@pytest.mark.parametrize("settings, error, match", [
    ({"max_new_tokens": 2.5}, TypeError, "max_new_tokens must be an int"),  # 3 tokens, silently
    ({"max_new_tokens": True}, TypeError, "max_new_tokens must be an int"),  # 1 token
    ({"max_new_tokens": None}, TypeError, "max_new_tokens must be an int"),  # the model's default (20), silently
    ({"max_new_tokens": 0}, UsageError, "max_new_tokens must be >= 1"),
    ({"temperature": 1.0, "top_k": "3"}, TypeError, "top_k must be an int"),
    ({"temperature": 1.0, "top_p": 2.0}, UsageError, r"top_p must be in \(0, 1\]"),  # accepted, sampled from everything
    ({"temperature": 1.0, "seed": "x"}, TypeError, "seed must be an int"),
    ({"temperature": 1.0, "seed": 2 ** 70}, UsageError, "seed must be below 2\\*\\*64"),
])
def test_generation_settings_are_checked(gen, settings, error, match):
    with pytest.raises(error, match=match):
        gen.generate("the tax", **settings)


def test_a_prompt_past_the_models_positions_is_named(gen):
    # tiny Qwen2 has 128 positions (RoPE): beyond them it answered from untrained ones; GPT-2 failed in torch's embedding
    assert gen.context_length() == 128
    with pytest.raises(UsageError, match=r"prompts\[1\] is \d+ tokens .* max_new_tokens 20: together past the model's 128"):
        gen.generate(["short", "the tax " * 60], max_new_tokens=20)
    assert isinstance(gen.generate("the tax " * 10, max_new_tokens=4), str)


def test_seeded_sampling_leaves_the_callers_random_state_alone(gen):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = gen.generate("the tax", max_new_tokens=4, temperature=1.0, seed=5)
    assert torch.equal(torch.rand(3), expected)  # the seed was planted in torch's global state
    assert gen.generate("the tax", max_new_tokens=4, temperature=1.0, seed=5) == first


def test_only_causal_decoders_load(tiny_bert, tmp_path):
    # a BERT folder loaded with a fresh random LM head and generated noise; None was tried as a hub repo "None"
    with pytest.raises(UsageError, match="bert model is not a decoder-only causal LM"):
        Generator.from_pretrained(tiny_bert)
    with pytest.raises(TypeError, match="model_name_or_path must be a path"):
        Generator.from_pretrained(None)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        Generator.from_pretrained(str(tmp_path / "missing"))

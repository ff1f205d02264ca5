"""The shared-prefix key/value cache (memr1.llm.prefix_cache): same greedy text as without it, reuse counted."""

from __future__ import annotations

import pytest

from memr1.agents.manager import manager_messages
from memr1.errors import ConfigError
from memr1.llm.backends import TransformersGenerator
from memr1.llm.generate import Sampling
from memr1.llm.load import load_policy
from memr1.llm.prefix_cache import PrefixCache, shared_length

FACTS = [
    ["Caroline went to a support group on 7 May."],
    ["Melanie paints sunsets.", "Melanie has 3 children."],
    ["Caroline is researching adoption agencies."],
    ["Melanie ran a charity race for mental health on Saturday."],
    ["Caroline moved from Sweden 4 years ago."],
]
MEMORIES = [
    [],
    [{"id": "0", "text": "Melanie likes painting."}],
    [{"id": "0", "text": "Caroline wants a family."}],
    [],
    [],
]


def manager_prompts() -> list:
    """The Memory Manager's real prompts (``lines`` style): the same system text and worked examples, then each
    turn's memories and facts."""
    return [manager_messages(f, m, "Caroline", "", style="lines") for f, m in zip(FACTS, MEMORIES)]


def test_shared_length():
    assert shared_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert shared_length([[5], [6]]) == 0 and shared_length([[1, 2], [1, 2]]) == 2
    with pytest.raises(ConfigError, match="min_tokens"):
        PrefixCache(min_tokens=0)
    with pytest.raises(ConfigError, match="prefix_cache"):
        TransformersGenerator(load_policy("tiny"), prefix_cache=-1)


def compare(policy, batch_size: int, sampling: Sampling):
    plain = TransformersGenerator(policy, batch_size=batch_size)
    cached = TransformersGenerator(policy, batch_size=batch_size, prefix_cache=32)
    prompts = manager_prompts()
    a, b = plain.generate(prompts, sampling), cached.generate(prompts, sampling)
    again = cached.generate(prompts[:2], sampling)  # a later call reuses the stored prefix
    return a, b, again, cached.prefix_cache


@pytest.mark.parametrize("batch_size", [1, 3])
def test_cached_prefix_gives_the_same_text_on_the_tiny_model(batch_size):
    """Sampled at temperature 1 with a seed (the random tiny model's greedy text is all newlines): the same draws
    give the same text only if every step's distribution is the same."""
    a, b, again, cache = compare(load_policy("tiny"), batch_size, Sampling(temperature=1.0, max_new_tokens=16, seed=0))
    assert [g.text for g in a] == [g.text for g in b] and len({g.text for g in a}) > 1
    assert [g.prompt_tokens for g in a] == [g.prompt_tokens for g in b]
    if batch_size == 1:  # with a seed per call, the first two draws of a one-prompt batch repeat
        assert [g.text for g in again] == [g.text for g in a[:2]]
    assert cache.misses == 1 and cache.hits >= 1 and cache.reused_tokens > 0  # encoded once, then reused


def test_a_batch_without_a_long_shared_prefix_takes_the_plain_path():
    gen = TransformersGenerator(load_policy("tiny"), prefix_cache=32)
    short = [[{"role": "user", "content": "Hi."}], [{"role": "user", "content": "Where is Tokyo?"}]]
    gen.generate(short, Sampling(max_new_tokens=4))
    assert gen.prefix_cache.hits == gen.prefix_cache.misses == 0


def test_next_token_logits_equal_the_padded_batch_within_fp32_rounding():
    """The exactness bar, on logits rather than text: the batch laid out as [cached prefix | padding | rest] gives
    each row the next-token logits of the plain left-padded batch (a wrong position or mask breaks it)."""
    import torch

    policy = load_policy("tiny")
    model, tok = policy.model.eval(), policy.tokenizer
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in manager_prompts()]
    rows = tok(texts, add_special_tokens=False).input_ids
    cache = PrefixCache(min_tokens=32)

    def positions(mask):  # what generate derives from the attention mask
        return (mask.cumsum(-1) - 1).clamp(min=0)

    with torch.inference_mode():
        plain = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        want = model(**plain, position_ids=positions(plain["attention_mask"])).logits[:, -1]
        for _ in range(2):  # stored, then reused
            inputs = cache.inputs(model, rows, tok.pad_token_id)
            cached = inputs["past_key_values"].get_seq_length()
            got = model(
                input_ids=inputs["input_ids"][:, cached:],
                attention_mask=inputs["attention_mask"],
                position_ids=positions(inputs["attention_mask"])[:, cached:],
                past_key_values=inputs["past_key_values"],
            ).logits[:, -1]
            assert torch.allclose(got, want, atol=1e-4, rtol=0), float((got - want).abs().max())
    assert len({len(r) for r in rows}) > 1 and cache.misses == 1 and cache.hits == 1

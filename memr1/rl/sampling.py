"""Token-level sampling for training: prompts in, sampled ids and their log-probs out, nothing re-tokenised.

Two entry points share one decode loop:

* ``sample_batch``: one completion per prompt, prompts of any lengths side by side (left padding,
  explicit position ids). MEM1's multi-turn rollouts use it (``memr1.rl.mem1_trainer.TokenSampler``).
* ``sample_group``: ``n`` completions of *one* prompt, the GRPO/PPO group. The prompt is encoded
  once (batch 1) and its KV cache repeated ``n`` times (``Cache.batch_repeat_interleave``), so a
  group of 8 completions of a 500-token prompt runs the prompt through the model once, not 8 times.

The distribution sampled from is the plain softmax of ``logits / temperature``: no top-k, top-p or
repetition penalty, so the behaviour policy is exactly what the losses score. A row ends after an
end-of-turn token (kept) or the token that completes a stop string, or at ``max_new_tokens``.
Only the last position's logits are computed (``logits_to_keep=1``): no [batch, length, vocabulary]
tensor is built. We write this loop rather than call ``generate``, whose ``output_scores`` would
hold steps × batch × vocabulary floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memr1.errors import ConfigError

STOP_TAIL_TOKENS = 16
"""Tokens decoded at the end of a row to look for a stop string (longer than any stop string)."""


def encode_messages(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a chat context as the model reads it (continuing a final assistant message)."""
    continuing = bool(messages) and messages[-1].get("role") == "assistant"
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=not continuing, continue_final_message=continuing
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-turn ids: the model's generation config and the tokenizer's eos."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = ([ids] if isinstance(ids, int) else list(ids or [])) + [tokenizer.eos_token_id]
    return {int(i) for i in ids if i is not None}


def ends_with_stop(tokenizer: Any, ids: Sequence[int], stop_strings: Sequence[str]) -> bool:
    """Whether the decoded tail of ``ids`` holds one of ``stop_strings``."""
    if not stop_strings:
        return False
    tail = tokenizer.decode(list(ids[-STOP_TAIL_TOKENS:]), skip_special_tokens=True)
    return any(s in tail for s in stop_strings)


def sample_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    generator: Any,
    stop_strings: Sequence[str] = (),
) -> tuple[list[list[int]], list[list[float]]]:
    """Sample one completion for every prompt together; per row its token ids and their log-probs."""
    import torch

    _check(max_new_tokens, temperature)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width, n = max(len(p) for p in prompts), len(prompts)
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding: every row's next token goes in the same column
        ids[b, width - len(p) :], mask[b, width - len(p) :] = torch.tensor(list(p)), 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        return _decode(
            model, tokenizer, out.logits[:, -1], out.past_key_values, mask, positions[:, -1:] + 1,
            max_new_tokens, temperature, generator, stop_strings,
        )  # fmt: skip


def sample_group(
    model: Any,
    tokenizer: Any,
    prompt: Sequence[int],
    n: int,
    *,
    max_new_tokens: int,
    temperature: float,
    generator: Any,
    stop_strings: Sequence[str] = (),
) -> tuple[list[list[int]], list[list[float]]]:
    """Sample ``n`` completions of one prompt, the prompt encoded once and its cache shared by all."""
    import torch

    _check(max_new_tokens, temperature)
    if n < 1:
        raise ConfigError(f"sample_group needs n >= 1, got {n}")
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        mask = torch.ones((n, ids.shape[1]), dtype=torch.long, device=device)
        next_pos = torch.full((n, 1), ids.shape[1], dtype=torch.long, device=device)
        return _decode(
            model, tokenizer, out.logits[:, -1].expand(n, -1), cache, mask, next_pos,
            max_new_tokens, temperature, generator, stop_strings,
        )  # fmt: skip


def _check(max_new_tokens: int, temperature: float) -> None:
    if temperature <= 0 or max_new_tokens < 1:
        raise ConfigError(
            f"sampling needs temperature > 0 and max_new_tokens >= 1, got {temperature}, {max_new_tokens}"
        )


def _decode(
    model: Any,
    tokenizer: Any,
    logits: Any,
    cache: Any,
    mask: Any,
    next_pos: Any,
    max_new_tokens: int,
    temperature: float,
    generator: Any,
    stop_strings: Sequence[str],
) -> tuple[list[list[int]], list[list[float]]]:
    """The sampling loop from the last prompt position's ``logits`` [n, vocab] and the prompt's cache."""
    import torch

    n, stops = logits.shape[0], eos_ids(model, tokenizer)
    completions: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        token = torch.multinomial(logp.exp(), 1, generator=generator)  # [n, 1]
        chosen = logp.gather(-1, token).squeeze(-1).tolist()
        for b, (t, lp) in enumerate(zip(token.squeeze(-1).tolist(), chosen)):
            if done[b]:
                continue
            completions[b].append(t)
            logprobs[b].append(lp)
            done[b] = t in stops or ends_with_stop(tokenizer, completions[b], stop_strings)
        if all(done):
            break
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)  # finished rows run on; their tokens are dropped
        out = model(
            input_ids=token,
            attention_mask=mask,
            position_ids=next_pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits, cache, next_pos = out.logits[:, -1], out.past_key_values, next_pos + 1
    return completions, logprobs


__all__ = ["STOP_TAIL_TOKENS", "encode_messages", "eos_ids", "ends_with_stop", "sample_batch", "sample_group"]

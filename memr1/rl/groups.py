"""Log-probs of a group (one prompt, ``n`` completions) with the prompt encoded once.

GRPO and PPO score every completion of a group under the same prompt. Re-encoding the prompt for
each of the ``n`` rows (what a plain batch of ``prompt + completion`` rows does, and what TRL's
trainer does) costs ``n`` prompt forwards and ``n`` prompt backwards; at a 500-token prompt and
32-token completions that is nearly all of a step. ``group_logprobs`` runs the prompt once
(batch 1, with gradients), repeats its KV cache ``n`` times and runs the completions on top, so
autograd sums the ``n`` completions' gradients through the one prompt pass. It is exact: the same
attention over the same keys and values, computed once (``tests/test_groups.py``: per-token
log-probs within 1e-5 of ``expanded_logprobs``, loss and LoRA gradients within 1e-4 relative).

``expanded_logprobs`` is the plain batch, kept as the reference for tests and ``bench/bench_grpo.py``.
Completions are right-padded; a padded position's log-prob is computed and dropped (causal attention
means it cannot change the real tokens before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from memr1.errors import ConfigError


class Scored(NamedTuple):
    """Per completion, one 1-D tensor over its tokens of each (None when not asked for)."""

    logps: list[torch.Tensor]
    """log p of each generated token under ``softmax(logits / temperature)``."""
    entropies: list[torch.Tensor] | None
    """Entropy of that distribution at each generated position."""
    values: list[torch.Tensor] | None
    """``value_head`` on the last hidden state that predicts each token (the state before it)."""


def group_logprobs(
    model: Any,
    prompt: Sequence[int],
    completions: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    pad_id: int = 0,
    with_entropy: bool = False,
    value_head: Any = None,
) -> Scored:
    """Per-token log-probs (and optionally entropies and values) of each completion of one prompt.

    All carry gradients when grad is enabled (PPO's entropy bonus and value loss train through them).
    """
    _check(prompt, completions)
    device = next(model.parameters()).device
    n, width = len(completions), max(len(c) for c in completions)
    prompt_ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    hidden = value_head is not None
    out = model(input_ids=prompt_ids, use_cache=True, logits_to_keep=1, output_hidden_states=hidden)
    cache = out.past_key_values
    cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1:].expand(n, 1, -1)  # predicts every completion's first token
    states = out.hidden_states[-1][:, -1:].expand(n, 1, -1) if hidden else None
    if width > 1:  # the last generated token predicts nothing that is scored
        comp = _right_padded(completions, width - 1, pad_id, device)
        plen = len(prompt)
        mask = torch.ones((n, plen + width - 1), dtype=torch.long, device=device)
        positions = torch.arange(plen, plen + width - 1, device=device).expand(n, -1)
        rest = model(
            input_ids=comp, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
            output_hidden_states=hidden,
        )  # fmt: skip
        logits = torch.cat([logits, rest.logits], dim=1)
        states = torch.cat([states, rest.hidden_states[-1]], dim=1) if states is not None else None
    return _gather(logits, completions, width, temperature, pad_id, with_entropy, states, value_head)


def expanded_logprobs(
    model: Any,
    prompt: Sequence[int],
    completions: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    pad_id: int = 0,
    with_entropy: bool = False,
    value_head: Any = None,
) -> Scored:
    """The same numbers as ``group_logprobs`` from ``n`` rows of ``prompt + completion`` (the reference)."""
    _check(prompt, completions)
    device = next(model.parameters()).device
    width, plen = max(len(c) for c in completions), len(prompt)
    rows = [list(prompt) + list(c) for c in completions]
    ids = _right_padded(rows, plen + width, pad_id, device)
    out = model(input_ids=ids, use_cache=False, output_hidden_states=value_head is not None)
    window = slice(plen - 1, plen + width - 1)
    states = out.hidden_states[-1][:, window] if value_head is not None else None
    return _gather(out.logits[:, window], completions, width, temperature, pad_id, with_entropy, states, value_head)


def _check(prompt: Sequence[int], completions: Sequence[Sequence[int]]) -> None:
    if not prompt or not completions or any(len(c) == 0 for c in completions):
        raise ConfigError("a group needs a non-empty prompt and at least one non-empty completion")


def _right_padded(rows: Sequence[Sequence[int]], width: int, pad_id: int, device: Any) -> torch.Tensor:
    out = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        r = list(r)[:width]
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _gather(logits, completions, width, temperature, pad_id, with_entropy, states=None, value_head=None) -> Scored:
    """Log-prob of each generated token from ``logits`` [n, width, vocab]; entropies and values when asked."""
    targets = _right_padded(completions, width, pad_id, logits.device)
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def rows(t):
        return [t[i, : len(c)] for i, c in enumerate(completions)]

    ent = rows(-(logp_all.exp() * logp_all).sum(-1)) if with_entropy else None
    values = rows(value_head(states.float()).squeeze(-1)) if value_head is not None else None
    return Scored(rows(logp), ent, values)


__all__ = ["Scored", "group_logprobs", "expanded_logprobs"]

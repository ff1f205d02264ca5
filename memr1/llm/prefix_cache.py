"""Encode the leading tokens that prompts share once, and reuse their key/value cache.

The extractor's and the manager's prompts open with the same system text and worked examples: on
LoCoMo about 215 of the extractor's 244 tokens and 428 of the manager's 468 (``bench/bench_lockstep.py``),
and reading the prompt is 64-73% of a call's cost on a CPU. ``PrefixCache`` keeps the key/value cache
of a few such prefixes, computed once at batch size 1. For a batch, ``inputs`` finds the longest prefix
shared by every row and a stored entry (or stores the batch's own shared prefix), and lays the batch out
as ``[prefix | left padding | each row's remaining tokens]`` with the entry repeated over the rows; the
attention mask zeroes the padding, and ``generate`` derives positions from the mask's cumulative sum, so
every row sees its own tokens at its own positions, as without the cache. Outputs equal the uncached
ones up to fp32 rounding (another split of the same matmuls; greedy may differ at near-ties: the bench
counts how often). This is vLLM's automatic prefix caching, reduced to one process and a few entries.

Only transformers ``DynamicCache`` layers with ``keys``/``values`` tensors are reused; anything else
(a model whose cache has another layout) falls back to the plain path.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from memr1.errors import ConfigError


def shared_length(rows: Sequence[Sequence[int]]) -> int:
    """Number of leading tokens every row has in common."""
    n = min(len(r) for r in rows)
    for i in range(n):
        if len({r[i] for r in rows}) > 1:
            return i
    return n


class PrefixCache:
    """Key/value caches of up to ``entries`` prompt prefixes, reused when a batch shares ``min_tokens`` or more.

    Args:
        min_tokens: the fewest shared leading tokens worth a cache (shorter: the plain path).
        entries: prefixes kept, least recently used dropped first (the extractor and the manager each need one).
    """

    def __init__(self, min_tokens: int = 64, entries: int = 4):
        if min_tokens < 1 or entries < 1:
            raise ConfigError(f"PrefixCache needs min_tokens >= 1 and entries >= 1, got {min_tokens}, {entries}")
        self.min_tokens, self.entries = min_tokens, entries
        self._store: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self.hits = self.misses = self.reused_tokens = 0
        self.unsupported = False
        """Set when the model's cache has another layout: every later batch takes the plain path at once."""

    def __repr__(self) -> str:
        return f"PrefixCache(min_tokens={self.min_tokens}, entries={len(self._store)}/{self.entries})"

    def inputs(self, model: Any, rows: list[list[int]], pad_id: int) -> dict[str, Any] | None:
        """``generate`` keyword arguments for ``rows`` (token ids, no padding) that reuse a cached prefix, or
        None when they share fewer than ``min_tokens`` (every row keeps at least one token to read)."""
        import torch

        shared = min(shared_length(rows), min(len(r) for r in rows) - 1)
        if self.unsupported or shared < self.min_tokens:
            return None
        head = rows[0][:shared]
        best: tuple[int, ...] = ()
        size = 0
        for key in self._store:
            n = shared_length([key, head])
            if n > size:
                best, size = key, n
        if size >= self.min_tokens:
            self._store.move_to_end(best)
            self.hits += 1
        else:
            best, size = tuple(head), shared
            cache = self._encode(model, head)
            if cache is None:
                self.unsupported = True
                return None
            self._store[best] = cache
            if len(self._store) > self.entries:
                self._store.popitem(last=False)
            self.misses += 1
        self.reused_tokens += size * len(rows)
        past = self._expanded(self._store[best], size, len(rows))
        width = max(len(r) for r in rows) - size
        ids = torch.full((len(rows), size + width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[:, :size], mask[:, :size] = torch.tensor(rows[0][:size]), 1
        for i, row in enumerate(rows):
            rest = row[size:]
            ids[i, size + width - len(rest) :], mask[i, size + width - len(rest) :] = torch.tensor(rest), 1
        device = model.device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "past_key_values": past}

    @staticmethod
    def _encode(model: Any, head: list[int]) -> Any:
        """The DynamicCache of ``head`` (batch 1), or None when the model's cache is not one we can reuse."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        model(input_ids=torch.tensor([head], device=model.device), past_key_values=cache, use_cache=True)
        if not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in cache.layers):
            return None
        return cache

    @staticmethod
    def _expanded(cache: Any, size: int, batch: int) -> Any:
        """A copy of ``cache`` cut to its first ``size`` tokens and repeated ``batch`` times (generate extends it)."""
        out = copy.copy(cache)
        out.layers = []
        for layer in cache.layers:
            new = copy.copy(layer)
            new.keys = layer.keys[:, :, :size].repeat_interleave(batch, 0)
            new.values = layer.values[:, :, :size].repeat_interleave(batch, 0)
            out.layers.append(new)
        return out


__all__ = ["PrefixCache", "shared_length"]

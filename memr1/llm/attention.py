"""Grouped-query attention without copying the key/value heads, for batched generation on a CPU.

SmolLM2-135M, like Llama, Qwen and most small chat models, has fewer key/value heads than query heads
(3 against 9). Transformers' ``sdpa`` attention hands PyTorch the grouped heads as they are
(``enable_gqa=True``) only when there is no attention mask; a left-padded batch has one, so every
layer of every decoding step first copies its whole key/value cache three times over (``repeat_kv``),
then attends. A bank build's lockstep batches and the Answer Agent's batches are padded, so on a CPU
that copy is about an eighth of a bank build (py-spy on the memory-r1 build, 2026-12-04), and attention
over the copies is slower than over the grouped heads.

``memr1_sdpa`` is the same computation without the copy: PyTorch's ``scaled_dot_product_attention``
with ``enable_gqa=True`` and the mask as given. On a CPU its outputs are bit-identical to ``sdpa``'s
(tests/test_llm.py checks logits and gradients on the tiny model; ``bench/bench_attention.py`` checks
greedy tokens on SmolLM2 and measures the time). On CUDA a masked ``enable_gqa`` call falls back to
PyTorch's math kernel, so there the stock ``sdpa`` is kept (`use_grouped_sdpa` does nothing).

Follows transformers' ``integrations/sdpa_attention.py`` and its AttentionInterface documentation; docs/design.md
§6 (Bank) places it among the bank build's other levers.
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention

NAME = "memr1_sdpa"
"""The attention implementation's name in transformers' registries."""


def grouped_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of ``query`` [batch, heads, q, dim] over ``key``/``value`` [batch, kv_heads, kv, dim], where
    kv_heads divides heads; returns [batch, q, heads, dim] as transformers' attention functions do."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=bool(query.shape[2] > 1 and attention_mask is None and causal),
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``memr1_sdpa`` a known attention implementation (masks built as for ``sdpa``); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, grouped_sdpa)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_grouped_sdpa(model) -> bool:
    """Switch a CPU model that attends with ``sdpa`` to ``memr1_sdpa``; return whether it switched.

    Any other model (on CUDA, with eager or flash attention, or without transformers' attention
    interface) is left as it is.
    """
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu":
        return False
    register()
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME


__all__ = ["NAME", "grouped_sdpa", "register", "use_grouped_sdpa"]

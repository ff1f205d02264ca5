"""The frozen model a reward needs, served by the policy being trained with its LoRA switched off.

Manager training scores each sampled operation list with a frozen Answer Agent (docs/design.md
§Rewards). When that agent is the untrained base model it is exactly the policy with its adapter
disabled, so `FrozenBase` generates through the trainer's own PEFT model inside
``disable_adapter()`` instead of loading a second copy of the weights. It is bound once the
trainer has wrapped the model (``run_grpo(..., on_model=frozen.bind)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memr1.errors import ConfigError
from memr1.llm.backends import TransformersGenerator
from memr1.llm.generate import GREEDY, Generation, Messages, Sampling


class FrozenBase:
    """A `Generator` on the base weights of a PEFT model that is being trained (adapter disabled)."""

    backend = "transformers"

    def __init__(self, name: str, *, batch_size: int = 8):
        self.name, self.batch_size, self.note = f"{name} (adapter disabled)", batch_size, ""
        self._gen: TransformersGenerator | None = None

    def bind(self, model: Any, tokenizer: Any) -> None:
        """Serve generations from ``model`` (a PEFT model) with its adapters switched off."""
        if not hasattr(model, "disable_adapter"):
            raise ConfigError(f"FrozenBase needs a PEFT model with disable_adapter(), got {type(model).__name__}")
        self._gen = TransformersGenerator.from_model(model, tokenizer, name=self.name, batch_size=self.batch_size)

    @property
    def _bound(self) -> TransformersGenerator:
        if self._gen is None:
            raise ConfigError("FrozenBase used before bind(): pass its bind to run_grpo(on_model=...)")
        return self._gen

    def generate(self, prompts: Sequence[Messages], sampling: Sampling = GREEDY) -> list[Generation]:
        with self._bound.model.disable_adapter():
            return self._bound.generate(prompts, sampling)

    def count_tokens(self, text: str) -> int:
        return self._bound.count_tokens(text)

    @property
    def tokenizer_name(self) -> str:
        return self._bound.tokenizer_name

    @property
    def context_window(self) -> int:
        return self._bound.context_window

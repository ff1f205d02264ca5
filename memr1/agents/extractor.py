"""Fact extraction: what one dialogue turn reveals that is worth remembering (``LLMExtract``).

Memory-R1 extracts facts per turn but prints no extraction prompt (docs/design.md §Entries);
the one here is our own. It asks for self-contained sentences that name people (no pronouns) and
carry absolute dates (relative ones resolved with the session date-time), as ``{"facts": [...]}``,
with the previous ``context_turns`` turns of the same session shown only to make the current one
understandable.

**Whose bank.** The facts of a turn go to the bank of the turn's *speaker*, including what the
speaker says about other people ("Caroline's friend Mel runs marathons" is stored for Caroline).
Mem0's LoCoMo harness instead feeds both speakers' lines to each bank with the roles reversed; we
keep one extraction per turn, which halves the extraction calls and keeps each fact's source
unambiguous.

The ``lines`` style asks for one ``- fact`` line per fact (``- nothing`` for none), taught by three
worked chat examples; a 135M model follows it, while it loops on the JSON form. `parse_facts`
reads either reply form.

`TurnAsFactExtractor` needs no model: the fact is the rendered turn itself (CPU baselines, smoke).

>>> parse_facts('```json\\n{"facts": ["Ann likes tea", " Ann likes tea ", 3]}\\n```')
(['Ann likes tea'], True)
>>> parse_facts("no idea")
([], False)
>>> parse_facts("- Ann likes tea.\\n- nothing")
(['Ann likes tea.'], True)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from memr1.data.locomo import Conversation, Turn
from memr1.errors import ConfigError
from memr1.jsontext import json_values
from memr1.llm.generate import GREEDY, Generation, Generator, Messages, Sampling

EXTRACT_PROMPT_VERSION = "extract-v2"
"""Bump whenever the wording below changes; recorded with every run."""

_SYSTEM = """\
You keep notes about the people in a conversation. You are shown the latest turn of a chat between \
two people, and you write down what that turn tells us that would be worth recalling weeks later.

What to note:
- facts the turn reveals about the person speaking ({speaker}): events, plans, jobs, hobbies, \
possessions, preferences, relationships, health, feelings about things;
- what {speaker} says about other people, naming them.
How to write each note:
- one short sentence that stands on its own: use names, never "I", "my", "he", "she" or "they";
- replace relative times ("yesterday", "last week", "next month", "two years ago") by absolute \
dates worked out from the session date-time, e.g. "yesterday" said on 8 May 2023 becomes \
"on 7 May 2023", "last year" becomes "in 2022";
- a part in square brackets describes a photo the speaker shared; use it if it says something.
Earlier turns are there only to make the latest one understandable: note nothing that only they \
say. Greetings, thanks, small talk and questions that reveal nothing give an empty list. \
Write at most {max_facts} notes.

Answer with JSON only, in this form: {{"facts": ["...", "..."]}}

Example. Session date-time: 10:00 am on 3 March, 2024. Latest turn:
Jon: My sister Ana and I opened a bakery last month, it's been crazy busy!
Answer: {{"facts": ["Jon opened a bakery with his sister Ana in February 2024", \
"Jon has a sister named Ana", "Jon's bakery has been very busy"]}}
Latest turn: "Jon: Haha thanks, talk soon!" Answer: {{"facts": []}}"""


EXTRACT_STYLES = ("json", "lines")

_LINES_SYSTEM = """\
You write short notes about what a person says. For each fact the message gives about the speaker, \
write one line starting with '- ' that names the speaker and uses dates, not words like "yesterday". \
If the message gives no fact, write '- nothing'."""

_LINES_SHOTS = (
    (
        "[3 March 2024] Jon: My sister Ana and I opened a bakery last month!",
        "- Jon opened a bakery with his sister Ana in February 2024.\n- Jon has a sister named Ana.",
    ),
    ("[3 March 2024] Jon: Haha thanks, talk soon!", "- nothing"),
    (
        "[9 June 2023] Ana: I just got back from a hiking trip in Peru, it was amazing.",
        "- Ana went on a hiking trip in Peru in June 2023.",
    ),
)
_NOTHING = {"nothing", "none", "no facts", "n/a"}


def _short_date(session_time: str) -> str:
    """'1:56 pm on 8 May, 2023' -> '8 May 2023' (the lines prompt shows the day only)."""
    day = session_time.split(" on ", 1)[-1]
    return day.replace(",", "").strip() or session_time


def _lines_messages(turn: Turn, session_time: str) -> Messages:
    msgs: Messages = [{"role": "system", "content": _LINES_SYSTEM}]
    for user, reply in _LINES_SHOTS:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return msgs + [{"role": "user", "content": f"[{_short_date(session_time)}] {turn.render()}"}]


def extraction_messages(
    turn: Turn, session_time: str, context: Sequence[Turn] = (), *, max_facts: int = 8, style: str = "json"
) -> Messages:
    """The chat prompt asking for the facts of ``turn`` (``context``: the turns just before it).

    ``style`` is one of `EXTRACT_STYLES`; ``lines`` shows no earlier turns and no fact limit.
    """
    if style not in EXTRACT_STYLES:
        raise ConfigError(f"unknown extraction prompt style {style!r}; valid: {', '.join(EXTRACT_STYLES)}")
    if style == "lines":
        return _lines_messages(turn, session_time)
    earlier = "\n".join(t.render() for t in context) if context else "(this turn opens the session)"
    user = (
        f"Speaker: {turn.speaker}\nSession date-time: {session_time}\n\n"
        f"Earlier in this session:\n{earlier}\n\n"
        f"Latest turn:\n{turn.render()}\n\n"
        f"Notes about {turn.speaker} from the latest turn, as JSON:"
    )
    return [
        {"role": "system", "content": _SYSTEM.format(speaker=turn.speaker, max_facts=max_facts)},
        {"role": "user", "content": user},
    ]


def parse_facts(raw: str, max_facts: int = 8) -> tuple[list[str], bool]:
    """The facts in an extractor output, and whether any could be read. Never raises.

    Takes the first ``{"facts": [...]}`` object anywhere in the text (code fences and prose
    around it are fine), else the first bare JSON list, else the lines that start with ``- `` or
    ``* `` (``- nothing`` names no fact). Non-string items and blanks are dropped,
    texts are stripped, repeats (same text ignoring case and spacing) removed, and at most
    ``max_facts`` kept. ``ok`` is False when no such list was found (then the facts are empty).
    """
    if not isinstance(raw, str):
        return [], False
    found = None
    try:
        for value in json_values(raw, openers="{["):
            if isinstance(value, dict) and isinstance(value.get("facts"), list):
                found = value["facts"]
                break
            if isinstance(value, list) and found is None:
                found = value
    except Exception:  # noqa: BLE001 - model output must never crash a run
        found = None
    if found is None:
        bullets = [line.strip()[2:].strip() for line in raw.splitlines() if line.strip()[:2] in ("- ", "* ")]
        found = [b for b in bullets if b.lower().rstrip(".") not in _NOTHING] if bullets else None
    if found is None:
        return [], False
    facts, seen = [], set()
    for item in found:
        if not isinstance(item, str) or not item.strip():
            continue
        key = " ".join(item.lower().split())
        if key not in seen:
            seen.add(key)
            facts.append(item.strip())
    return facts[: max(0, max_facts)], True


@dataclass(frozen=True)
class ExtractedFacts:
    """The facts one turn gave, and the raw output they were read from."""

    turn: Turn
    speaker: str
    """Whose bank the facts go to (the turn's speaker)."""
    facts: tuple[str, ...]
    raw: str
    """The extractor's output text."""
    ok: bool
    """False when the output held no readable facts list (then ``facts`` is empty)."""
    generation: Generation | None = None
    """The model call's record (None for `TurnAsFactExtractor`)."""


def _previous(conv: Conversation, turns: Sequence[Turn], n: int) -> list[list[Turn]]:
    """For each turn, up to ``n`` turns right before it in the same session."""
    if n <= 0:
        return [[] for _ in turns]
    by_session = {s.index: s.turns for s in conv.sessions}
    out = []
    for t in turns:
        session = by_session.get(t.session, ())
        i = next((j for j, u in enumerate(session) if u.position == t.position), 0)
        out.append(list(session[max(0, i - n) : i]))
    return out


class FactExtractor:
    """Extract facts with an LLM, one `Generator.generate` call per batch of turns (of one or several
    conversations: `extract_many`).

    Args:
        generator: any `Generator` (transformers, OpenAI-compatible, scripted).
        sampling: decoding settings (greedy by default).
        max_facts: at most this many facts per turn (asked for in the prompt, enforced on parse).
        context_turns: how many earlier turns of the same session the prompt shows (json style).
        batch_size: turns per `generate` call.
        style: prompt style, one of `EXTRACT_STYLES`.
    """

    def __init__(
        self,
        generator: Generator,
        sampling: Sampling = GREEDY,
        max_facts: int = 8,
        context_turns: int = 2,
        batch_size: int = 16,
        style: str = "json",
    ):
        if style not in EXTRACT_STYLES:
            raise ConfigError(f"unknown extraction prompt style {style!r}; valid: {', '.join(EXTRACT_STYLES)}")
        if max_facts < 1 or context_turns < 0 or batch_size < 1:
            raise ConfigError(
                f"FactExtractor needs max_facts >= 1, context_turns >= 0 and "
                f"batch_size >= 1; got {max_facts}, {context_turns}, {batch_size}"
            )
        self.generator, self.sampling = generator, sampling
        self.max_facts, self.context_turns, self.batch_size = max_facts, context_turns, batch_size
        self.style = style

    def messages(self, conv: Conversation, turns: Sequence[Turn]) -> list[Messages]:
        """The prompts for ``turns`` (pure; what `extract` sends)."""
        return [
            extraction_messages(t, conv.session_time(t.session), ctx, max_facts=self.max_facts, style=self.style)
            for t, ctx in zip(turns, _previous(conv, turns, self.context_turns))
        ]

    def extract(self, conv: Conversation, turns: Sequence[Turn]) -> list[ExtractedFacts]:
        """One `ExtractedFacts` per turn, in order."""
        return self.extract_many([(conv, turns)])[0]

    def extract_many(self, pairs: Sequence[tuple[Conversation, Sequence[Turn]]]) -> list[list[ExtractedFacts]]:
        """`extract` for several conversations at once: their prompts share the `generate` calls
        (``batch_size`` prompts each), so a lockstep build (`memr1.agents.builder.build_many`) pays one
        call for the chunks of all its conversations. One list per pair, in order."""
        pairs = [(conv, list(turns)) for conv, turns in pairs]
        jobs = [(t, m) for conv, turns in pairs for t, m in zip(turns, self.messages(conv, turns))]
        found: list[ExtractedFacts] = []
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            gens = self.generator.generate([m for _, m in batch], self.sampling)
            if len(gens) != len(batch):
                raise ConfigError(
                    f"generator {getattr(self.generator, 'name', '?')!r} returned "
                    f"{len(gens)} completions for {len(batch)} prompts"
                )
            for (turn, _), gen in zip(batch, gens):
                facts, ok = parse_facts(gen.text, self.max_facts)
                found.append(ExtractedFacts(turn, turn.speaker, tuple(facts), gen.text, ok, gen))
        out, at = [], 0
        for _, turns in pairs:
            out.append(found[at : at + len(turns)])
            at += len(turns)
        return out


class TurnAsFactExtractor:
    """No model: each turn's single fact is the rendered turn (``"Speaker: text [shares ...]"``)."""

    def extract(self, conv: Conversation, turns: Sequence[Turn]) -> list[ExtractedFacts]:
        """One `ExtractedFacts` per turn, in order."""
        out = []
        for t in turns:
            fact = t.render()
            raw = json.dumps({"facts": [fact]}, ensure_ascii=False)
            out.append(ExtractedFacts(t, t.speaker, (fact,), raw, True, None))
        return out

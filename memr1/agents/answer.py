"""The Answer Agent: retrieved memories in, selected memories and a short answer out (docs/design.md §answer format).

Per question: the top ``k_per_speaker`` memories of each speaker's bank (Memory-R1: 30 each), shown
per speaker as ``"{session date-time}: {text}"``; the model first copies the ones it relies on under
``**Memories selected as relevant:**`` ("memory distillation"), then writes ``**Answer:** ...``,
the only part metrics and rewards read. The prompt is one user message (no system role, so every
chat template takes it), built by ``qa_messages`` from formatted lines: the baselines and the GRPO
datasets reuse the same instructions with their own context.

>>> msgs = answer_messages("Where did Jon go?", {"Jon": ["8 May, 2023: Jon went to Paris"],
...                                              "Gina": []}, ["Jon", "Gina"])
>>> "- 8 May, 2023: Jon went to Paris" in msgs[0]["content"], msgs[0]["role"]
(True, 'user')
>>> parse_answer_output("**Memories selected as relevant:**\\n- 8 May, 2023: Jon went to Paris\\n"
...                     "**Answer:** Paris")
(['8 May, 2023: Jon went to Paris'], 'Paris')
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from memr1.data.locomo import QA
from memr1.errors import ConfigError
from memr1.llm.generate import GREEDY, Generation, Generator, Messages, Sampling
from memr1.memory.bank import MemoryBank
from memr1.memory.retrieve import K_PER_SPEAKER, Retrieved, retrieve

ANSWER_PROMPT_VERSION = "answer-v1"
"""Bump whenever the wording of the prompt changes; recorded with every result."""
STYLES = ("distill", "direct")
"""distill: list the relevant memories, then answer (Memory-R1); direct: the answer line only (a
small model on a CPU cannot afford the list within a short completion cap: docs/design.md §Answer format)."""

SELECTION_HEADER = "**Memories selected as relevant:**"
ANSWER_MARKER = "**Answer:**"


@dataclass(frozen=True)
class Material:
    """What a prompt's context consists of: item noun (plural, singular) and a describing sentence."""

    plural: str
    singular: str
    description: str


MEMORIES = Material(
    "memories",
    "memory",
    "You do not see the conversation itself, only memories extracted from it: short "
    "facts, grouped by the person they are about, each stamped with the date and time "
    "of the session it comes from.",
)
TRANSCRIPT = Material(
    "lines",
    "line",
    "You see the conversation transcript itself, session by session; each session "
    "header gives the date and time it took place.",
)
EXCERPTS = Material(
    "excerpts",
    "excerpt",
    "You do not see the whole conversation, only single turns retrieved from it, "
    "each prefixed with the date and time of its session.",
)

_TEMPLATE = """\
You answer questions about a long conversation between {a} and {b} that took place over many \
sessions on different dates. {description}

Rules:
1. Base the answer only on the {plural} below. When the question asks what is likely, reason \
from them; do not bring in facts they do not contain.
2. Mind the timestamps. When two {plural} disagree, trust the most recent one.
3. A relative time expression ("yesterday", "last week", "two months ago", "next year") is \
relative to the date of its {singular}. Turn it into an absolute date or period, e.g. \
"last year" in a {singular} from 8 May 2023 means 2022.
4. {a} and {b} are two different people. Never credit one of them with what the other said, \
did or owns.
5. The answer is a short phrase of at most about six words, not a sentence.

{reply_format}

{context}

Question: {question}

{last_line}"""

_REPLY = {
    "distill": (
        "Reply in exactly this format:\n{header}\n- <timestamp>: <a {singular} you rely on, copied from "
        "below>\n(one bullet per relevant {singular})\n{marker} <short answer>",
        "First list the relevant {plural} under {header}, then give the answer after {marker}",
    ),
    "direct": (
        "Reply with one line in exactly this format:\n{marker} <short answer>",
        "Give only the short answer after {marker}",
    ),
}


def check_style(style: str) -> str:
    """``style`` when it is one of ``STYLES``; else a ConfigError."""
    if style not in STYLES:
        raise ConfigError(f"answer style must be one of {STYLES}, got {style!r}")
    return style


def render_context(blocks: Sequence[tuple[str, Sequence[str]]]) -> str:
    """Context blocks as text: ``"header:"``, then its lines as ``- `` bullets (or ``(none)``).

    >>> render_context([("Memories of Jon", ["a", "b"]), ("Memories of Gina", [])])
    'Memories of Jon:\\n- a\\n- b\\n\\nMemories of Gina:\\n(none)'
    """
    return "\n\n".join(
        f"{header}:\n" + ("\n".join(f"- {line}" for line in lines) if lines else "(none)") for header, lines in blocks
    )


def qa_messages(
    question: str,
    blocks: Sequence[tuple[str, Sequence[str]]],
    speakers: Sequence[str],
    material: Material = MEMORIES,
    style: str = "distill",
) -> Messages:
    """The prompt family every answerer shares: instructions, context blocks, question.

    Args:
        question: the question text.
        blocks: ``(header, formatted lines)`` pairs shown in order (see ``render_context``).
        speakers: the two people of the conversation (names used in the instructions).
        material: what the context consists of (``MEMORIES``, ``TRANSCRIPT``, ``EXCERPTS``).
        style: one of ``STYLES``: ``distill`` (selected lines, then the answer) or ``direct``.
    """
    check_style(style)
    names = list(speakers) + ["the other person"] * max(0, 2 - len(speakers))
    words = {
        "header": SELECTION_HEADER,
        "marker": ANSWER_MARKER,
        "plural": material.plural,
        "singular": material.singular,
    }
    reply_format, last_line = (part.format(**words) for part in _REPLY[style])
    text = _TEMPLATE.format(
        a=names[0],
        b=names[1],
        description=material.description,
        reply_format=reply_format,
        last_line=last_line,
        context=render_context(blocks),
        question=question.strip(),
        **words,
    )
    return [{"role": "user", "content": text}]


def answer_messages(
    question: str, memories: Mapping[str, Sequence[str]], speakers: Sequence[str] | None = None, style: str = "distill"
) -> Messages:
    """The Answer-Agent prompt; ``memories``: speaker → formatted lines (``entry.as_context()``).

    Blocks follow ``speakers`` (default: the mapping's order); a speaker without any shows "(none)".
    """
    speakers = list(memories) if speakers is None else list(speakers)
    blocks = [(f"Memories of {sp}", list(memories.get(sp, ()))) for sp in speakers]
    return qa_messages(question, blocks, speakers, MEMORIES, style)


def memory_lines(retrieved: Sequence[Retrieved], speakers: Sequence[str]) -> dict[str, list[str]]:
    """Group retrieved entries per speaker (retrieval order kept) as ``as_context()`` lines."""
    out: dict[str, list[str]] = {sp: [] for sp in speakers}
    for r in retrieved:
        out.setdefault(r.speaker, []).append(r.entry.as_context())
    return out


def answer_prompts(
    asks: Sequence[tuple[str, Mapping[str, MemoryBank]]], k_per_speaker: int = K_PER_SPEAKER, style: str = "distill"
) -> list[tuple[Messages, list[Retrieved]]]:
    """The one retrieve → memory lines → answer messages chain, for each ``(question, banks)``.

    Used by the Answer Agent, its GRPO rows (``memr1.rl.datasets``) and the Memory-Manager reward
    (``memr1.rl.rewards``), so all three show the model the same prompt. Speakers follow each
    mapping's order; all questions are embedded in one call with the first bank's embedder (every
    bank must share it, as ``retrieve`` requires).

    Returns:
        ``(messages, retrieved memories)`` per ask, in order.
    """
    if not asks:
        return []
    first = next(iter(asks[0][1].values()))
    vectors = first.embedder.embed([question for question, _ in asks])
    out = []
    for (question, banks), vec in zip(asks, vectors):
        speakers = list(banks)
        got = retrieve(banks, vec, k_per_speaker)
        out.append((answer_messages(question, memory_lines(got, speakers), speakers, style), got))
    return out


_HEADER_RE = re.compile(r"\**\s*memories\s+selected(?:\s+as\s+relevant)?\s*:?\s*\**\s*:?", re.IGNORECASE)
_MARKER_RE = re.compile(r"\*\*\s*answer\s*:?\s*\*\*\s*:?", re.IGNORECASE)  # also **Answer**: and **answer:**
_BULLET_RE = re.compile(r"^\s*(?:[-*•+]|\d{1,3}[.)])\s+(.*\S)")


def extract_answer(output: str | None) -> str:
    """Text after the last ``**Answer:**`` marker (the whole output when there is none), one line.

    The only part of an answer metrics and rewards read.

    >>> extract_answer("**Memories selected as relevant:**\\n- x\\n**Answer:** 7 May 2023")
    '7 May 2023'
    """
    output = "" if output is None else str(output)
    parts = _MARKER_RE.split(output)
    answer = (parts[-1] if len(parts) > 1 else output).strip()
    return answer.splitlines()[0].strip() if answer else ""


def parse_answer_output(raw: str | None) -> tuple[list[str], str]:
    """The selected memory lines and the answer of one completion; never raises.

    Selected lines are the bullets (``-``, ``*``, ``•``, ``+`` or ``1.``/``1)``) after the last
    selection header and before the last ``**Answer:**``; without a header, every bullet before the
    answer marker counts. The answer is ``extract_answer(raw)``.

    >>> parse_answer_output("1. 8 May: a\\n2) b\\n**Answer:** yes")
    (['8 May: a', 'b'], 'yes')
    >>> parse_answer_output("")
    ([], '')
    """
    try:
        text = "" if raw is None else str(raw)
        markers = list(_MARKER_RE.finditer(text))
        region = text[: markers[-1].start()] if markers else text
        headers = list(_HEADER_RE.finditer(region))
        if headers:
            region = region[headers[-1].end() :]
        selected = [m.group(1).strip() for m in map(_BULLET_RE.match, region.splitlines()) if m]
        return selected, extract_answer(text)
    except Exception:  # noqa: BLE001 - model output must never crash an evaluation or reward
        return [], ""


@dataclass(frozen=True)
class AnswerRecord:
    """One answered question: prompt, raw output, its parse, the context shown, the cost."""

    qid: str
    question: str
    gold: str
    category: int
    messages: Messages
    raw: str
    answer: str
    """Text after the last ``**Answer:**`` of ``raw`` (what metrics and rewards read)."""
    selected: tuple[str, ...]
    """Lines the model listed as relevant (``parse_answer_output``)."""
    retrieved: tuple[Retrieved, ...]
    """Memories shown to the model (AnswerAgent); empty for the baselines."""
    generation: Generation | None
    context_note: str = ""
    """Free text about the context, e.g. the full-context baseline's truncation; "" otherwise."""
    sources: tuple[str, ...] = ()
    """Dialogue ids of the raw turns shown as context, in prompt order (RagAnswerer); else empty."""

    def as_row(self) -> dict:
        """Flat scalars for a DataFrame / metrics table (messages and entries left out)."""
        g = self.generation
        return {
            "qid": self.qid,
            "category": self.category,
            "question": self.question,
            "gold": self.gold,
            "answer": self.answer,
            "n_selected": len(self.selected),
            "n_context": len(self.retrieved) or len(self.sources),
            "context_note": self.context_note,
            **{k: getattr(g, k, None) for k in ("prompt_tokens", "completion_tokens", "latency_s")},
        }


def generate_batched(
    generator: Generator, prompts: Sequence[Messages], sampling: Sampling = GREEDY, batch_size: int = 8
) -> list[Generation]:
    """One ``generator.generate`` call per ``batch_size`` prompts; results in prompt order."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    out: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        gens = list(generator.generate(batch, sampling))
        if len(gens) != len(batch):
            raise RuntimeError(
                f"generator {getattr(generator, 'name', generator)!r} returned {len(gens)} "
                f"completions for {len(batch)} prompts; it must return one per prompt"
            )
        out.extend(gens)
    return out


def make_record(
    qa: QA,
    messages: Messages,
    generation: Generation,
    *,
    retrieved: Sequence[Retrieved] = (),
    context_note: str = "",
    sources: Sequence[str] = (),
) -> AnswerRecord:
    """Parse ``generation`` and bundle it with the question and the context it answered from."""
    selected, answer = parse_answer_output(generation.text)
    return AnswerRecord(
        qid=qa.qid,
        question=qa.question,
        gold=qa.answer,
        category=qa.category,
        messages=messages,
        raw=generation.text,
        answer=answer,
        selected=tuple(selected),
        retrieved=tuple(retrieved),
        generation=generation,
        context_note=context_note,
        sources=tuple(sources),
    )


class AnswerAgent:
    """Retrieve per-speaker memories for each question, prompt the policy, parse its answer.

    Args:
        generator: any ``memr1.llm.generate.Generator``.
        sampling: decoding settings (greedy for evaluation, temperature 1.0 for RL rollouts).
        k_per_speaker: memories retrieved from each speaker's bank (Memory-R1: 30).
        batch_size: prompts per ``generate`` call.
        style: ``distill`` (Memory-R1: selected memories, then the answer) or ``direct`` (answer only).
    """

    def __init__(
        self,
        generator: Generator,
        sampling: Sampling = GREEDY,
        k_per_speaker: int = K_PER_SPEAKER,
        batch_size: int = 8,
        style: str = "distill",
    ):
        if k_per_speaker < 1 or batch_size < 1:
            raise ConfigError(f"k_per_speaker and batch_size must be >= 1, got {k_per_speaker}, {batch_size}")
        check_style(style)
        self.generator, self.sampling = generator, sampling
        self.k_per_speaker, self.batch_size, self.style = k_per_speaker, batch_size, style

    def prompts(
        self, questions: Sequence[QA], banks: Mapping[str, MemoryBank]
    ) -> list[tuple[Messages, list[Retrieved]]]:
        """Prompt and retrieved memories per question (all questions embedded in one call)."""
        if not banks:
            raise ConfigError("AnswerAgent.answer needs one memory bank per speaker; got none")
        return answer_prompts([(qa.question, banks) for qa in questions], self.k_per_speaker, self.style)

    def answer(self, questions: Sequence[QA], banks: Mapping[str, MemoryBank]) -> list[AnswerRecord]:
        """One ``AnswerRecord`` per question, in the order given."""
        built = self.prompts(questions, banks)
        gens = generate_batched(self.generator, [m for m, _ in built], self.sampling, self.batch_size)
        return [make_record(qa, msgs, gen, retrieved=got) for qa, (msgs, got), gen in zip(questions, built, gens)]

"""Answer-side baselines that skip the memory bank, with the Answer Agent's prompt and output.

``FullContextAnswerer`` shows the whole conversation (sessions with their date-times), cut to a
token budget by dropping the *oldest* turns; ``RagAnswerer`` (LoCoMo's RAG baseline) shows the
top-k raw dialogue turns most similar to the question; ``OracleAnswerer`` shows the question's own
evidence turns (an upper bound on what any retrieval can hand the answerer). All build their prompts with
``memr1.agents.answer.qa_messages`` (same rules, same ``**Memories selected as relevant:**`` /
``**Answer:**`` format) and return the same ``AnswerRecord`` as ``AnswerAgent``, so metrics, tables
and widgets treat them alike. Their records leave ``retrieved`` empty; ``RagAnswerer`` and
``OracleAnswerer`` list the dialogue ids of the turns they showed in ``AnswerRecord.sources`` (prompt order).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from memr1.agents.answer import (
    EXCERPTS,
    TRANSCRIPT,
    AnswerRecord,
    check_style,
    generate_batched,
    make_record,
    qa_messages,
    render_context,
)
from memr1.data.locomo import QA, Conversation, Turn
from memr1.errors import ConfigError
from memr1.llm.generate import GREEDY, Generator, Sampling, count_words
from memr1.memory.embed import Embedder

Blocks = list[tuple[str, list[str]]]


def _check_questions(questions: Sequence[QA], conv: Conversation) -> None:
    foreign = sorted({q.sample_id for q in questions if q.sample_id != conv.sample_id})
    if foreign:
        raise ConfigError(
            f"questions of {foreign} were passed with conversation {conv.sample_id!r}; "
            "answer each conversation's questions with that conversation"
        )


def session_blocks(conv: Conversation, turns: Sequence[Turn]) -> Blocks:
    """Group ``turns`` (in conversation order) into ``("Session i, <date-time>", lines)`` blocks."""
    blocks: Blocks = []
    current = None
    for t in turns:
        if t.session != current:
            current = t.session
            blocks.append((f"Session {t.session}, {conv.session_time(t.session)}", []))
        blocks[-1][1].append(t.render())
    return blocks


class FullContextAnswerer:
    """The whole conversation as context, truncated to the most recent turns that fit a budget.

    Args:
        generator: any ``Generator``.
        count_tokens: length of a text in tokens, e.g. ``lambda s: len(tok(s).input_ids)``;
            default: whitespace words.
        max_context_tokens: budget for the transcript part of the prompt (session headers and
            turns, measured with ``count_tokens`` on the rendered text); the instructions and the
            question (about 300 tokens) come on top. None: never truncate.
        sampling: decoding settings.
        batch_size: prompts per ``generate`` call. 1 by default: every prompt of a conversation shares the
            whole transcript, which a prefix cache encodes once, and each row of a batch then carries its own
            copy of that key/value cache through decoding (``bench/bench_full_context.py``: 7.7x slower per
            question at 8 rows than at 1 on a 7k-token transcript, SmolLM2-135M on a CPU).
        style: the reply format, as ``AnswerAgent``'s (``distill`` or ``direct``).
    """

    def __init__(
        self,
        generator: Generator,
        count_tokens: Callable[[str], int] | None = None,
        max_context_tokens: int | None = None,
        sampling: Sampling = GREEDY,
        batch_size: int = 1,
        style: str = "distill",
    ):
        if max_context_tokens is not None and max_context_tokens < 0:
            raise ConfigError(f"max_context_tokens must be >= 0 or None, got {max_context_tokens}")
        self.generator, self.sampling, self.batch_size = generator, sampling, batch_size
        self.style = check_style(style)
        self.count_tokens = count_tokens or count_words
        self.max_context_tokens = max_context_tokens
        self._cache: dict[str, tuple[Blocks, str, int]] = {}

    def context(self, conv: Conversation) -> tuple[Blocks, str, int]:
        """``(blocks, context_note, turns kept)`` for ``conv``; computed once per sample_id."""
        if conv.sample_id not in self._cache:
            self._cache[conv.sample_id] = self._truncate(conv)
        return self._cache[conv.sample_id]

    def _truncate(self, conv: Conversation) -> tuple[Blocks, str, int]:
        turns, budget, count = list(conv.turns()), self.max_context_tokens, self.count_tokens
        start = 0
        if budget is not None:
            # estimate from the end with per-piece counts, then confirm on the rendered text
            used, seen_sessions, start = 0, set(), len(turns)
            for i in range(len(turns) - 1, -1, -1):
                t = turns[i]
                cost = count(f"- {t.render()}")
                if t.session not in seen_sessions:
                    cost += count(f"Session {t.session}, {conv.session_time(t.session)}:")
                if used + cost > budget:
                    break
                used, start = used + cost, i
                seen_sessions.add(t.session)
            while start < len(turns) and count(render_context(session_blocks(conv, turns[start:]))) > budget:
                start += 1
        blocks = session_blocks(conv, turns[start:])
        tokens = count(render_context(blocks)) if blocks else 0
        kept, total = len(turns) - start, len(turns)
        dropped = f"dropped the oldest {start}" if start else "nothing dropped"
        return blocks, f"kept {kept}/{total} turns ({dropped}; {tokens} tokens)", kept

    def answer(self, questions: Sequence[QA], conv: Conversation) -> list[AnswerRecord]:
        """One record per question of ``conv``, in the order given."""
        _check_questions(questions, conv)
        blocks, note, _ = self.context(conv)
        prompts = [qa_messages(q.question, blocks, conv.speakers, TRANSCRIPT, self.style) for q in questions]
        gens = generate_batched(self.generator, prompts, self.sampling, self.batch_size)
        return [make_record(q, m, g, context_note=note) for q, m, g in zip(questions, prompts, gens)]


def kept_turns(note: str) -> int | None:
    """The number of newest turns a ``FullContextAnswerer`` record's ``context_note`` says it read; None for
    another note."""
    found = re.match(r"kept (\d+)/\d+ turns", note or "")
    return int(found.group(1)) if found else None


class ExcerptAnswerer(ABC):
    """Answers from dated dialogue excerpts that ``top_turns`` picks per question, shown under ``heading``; the
    shared part of ``RagAnswerer`` and ``OracleAnswerer`` (each says which turns and how to describe them)."""

    heading = "Conversation excerpts"
    generator: Generator
    sampling: Sampling
    batch_size: int
    style: str
    """The reply format, as ``AnswerAgent``'s (``distill`` or ``direct``)."""

    @abstractmethod
    def top_turns(self, questions: Sequence[QA], conv: Conversation) -> list[list[tuple[Turn, float]]]:
        """Per question, the turns to show (with a score), in the order shown."""

    @abstractmethod
    def note(self, shown: int, total: int) -> str:
        """The record's ``context_note`` for ``shown`` excerpts of a conversation of ``total`` turns."""

    def answer(self, questions: Sequence[QA], conv: Conversation) -> list[AnswerRecord]:
        """One record per question of ``conv``, in the order given."""
        _check_questions(questions, conv)
        tops = self.top_turns(questions, conv)
        prompts = []
        for q, top in zip(questions, tops):
            lines = [f"{conv.session_time(t.session)}: {t.render()}" for t, _ in top]
            prompts.append(qa_messages(q.question, [(self.heading, lines)], conv.speakers, EXCERPTS, self.style))
        gens = generate_batched(self.generator, prompts, self.sampling, self.batch_size)
        n = conv.num_turns()
        return [
            make_record(q, m, g, sources=[t.dia_id for t, _ in top], context_note=self.note(len(top), n))
            for q, m, g, top in zip(questions, prompts, gens, tops)
        ]


class RagAnswerer(ExcerptAnswerer):
    """LoCoMo-RAG: the top-k dialogue turns most similar to the question, as dated excerpts.

    Turns are embedded as ``turn.render()`` (speaker, text, image caption) once per conversation and
    cached on the instance by sample_id; each is shown as ``"{session date-time}: {Speaker}: {text}"``,
    most similar first. ``AnswerRecord.sources`` lists their dialogue ids in that order.

    Args:
        generator: any ``Generator``.
        embedder: any ``Embedder`` (the same kind the memory banks use, for a fair comparison).
        k: turns shown per question.
        sampling: decoding settings.
        batch_size: prompts per ``generate`` call.
        style: the reply format, as ``AnswerAgent``'s (``distill`` or ``direct``).
    """

    heading = "Conversation excerpts, most relevant first"

    def __init__(
        self,
        generator: Generator,
        embedder: Embedder,
        k: int = 30,
        sampling: Sampling = GREEDY,
        batch_size: int = 8,
        style: str = "distill",
    ):
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.generator, self.embedder, self.k = generator, embedder, k
        self.sampling, self.batch_size, self.style = sampling, batch_size, check_style(style)
        self._index: dict[str, tuple[list[Turn], np.ndarray]] = {}

    def index(self, conv: Conversation) -> tuple[list[Turn], np.ndarray]:
        """The conversation's turns and their embeddings (rows in turn order), cached."""
        if conv.sample_id not in self._index:
            turns = list(conv.turns())
            self._index[conv.sample_id] = (
                turns,
                np.asarray(self.embedder.embed([t.render() for t in turns]), dtype=np.float32),
            )
        return self._index[conv.sample_id]

    def top_turns(self, questions: Sequence[QA], conv: Conversation) -> list[list[tuple[Turn, float]]]:
        """Per question, the ``k`` most similar turns, best first (ties: earlier turn first)."""
        if not questions:
            return []
        turns, mat = self.index(conv)
        qvecs = np.asarray(self.embedder.embed([q.question for q in questions]), dtype=np.float32)
        out = []
        for scores in qvecs @ mat.T:
            order = np.lexsort((np.arange(len(turns)), -scores))[: self.k]
            out.append([(turns[i], float(scores[i])) for i in order])
        return out

    def note(self, shown: int, total: int) -> str:
        return f"top {shown} of {total} turns by similarity"


class OracleAnswerer(ExcerptAnswerer):
    """The question's gold evidence turns (LoCoMo's ``evidence`` dialogue ids) as dated excerpts, in conversation
    order: what a perfect retriever would show, the reference for what better memory and retrieval could give this
    answerer. Evidence past the end of ``conv`` (a conversation cut after its first turns) is not shown.

    Args:
        generator: any ``Generator``.
        sampling: decoding settings.
        batch_size: prompts per ``generate`` call.
        style: the reply format, as ``AnswerAgent``'s (``distill`` or ``direct``).
    """

    heading = "Conversation excerpts that hold the answer"

    def __init__(self, generator: Generator, sampling: Sampling = GREEDY, batch_size: int = 8, style: str = "distill"):
        self.generator, self.sampling, self.batch_size = generator, sampling, batch_size
        self.style = check_style(style)

    def top_turns(self, questions: Sequence[QA], conv: Conversation) -> list[list[tuple[Turn, float]]]:
        """Per question, its evidence turns that ``conv`` holds, in conversation order (score 1.0 each)."""
        turns = {t.dia_id: t for t in conv.turns()}
        shown = [[turns[e] for e in dict.fromkeys(q.evidence) if e in turns] for q in questions]
        return [[(t, 1.0) for t in sorted(ts, key=lambda t: t.position)] for ts in shown]

    def note(self, shown: int, total: int) -> str:
        return f"{shown} evidence turn(s) of {total} turns"

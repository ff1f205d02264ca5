"""What a MEM1 turn reads and writes: the task prompt, worked examples, each turn's context, and the parse
of each turn (the loop that uses them is ``memr1.agents.mem1``).

After MEM1 (Zhou, Qu et al., arXiv 2506.15841). Each turn the model writes ``<IS>…</IS>`` (its internal
state), then ``<query>…</query>`` (answered with ``<info>…</info>``) or ``<answer>…</answer>``;
``build_context`` renders what it sees in each context mode (``MODES``, described in ``memr1.agents.mem1``)
and ``parse_action`` reads what it wrote.

Prompt styles (``PROMPT_STYLES``): "plain" shows only the instructions (``task_prompt``), as MEM1
does; "examples" shortens them and puts a worked episode before them (``example_messages``:
invented questions and documents, searches, then the answer, rendered exactly as real turns are),
a constant prefix of every context in every mode. SmolLM2-135M wrote almost no valid turn under "plain" (it
repeated the instructions; docs/results/mem1_horizon_plain.md) and mostly valid ones under "examples"
(docs/results/mem1_horizon.md).

The last user message ends with a turns-left hint. All N questions are answered in one ``<answer>``,
in question order, separated by ``" ; "`` (MEM1) or one per line (numbering like ``1.`` or ``Q2:`` is
stripped). Turn budget (``turn_budget``): MEM1 allows 6 turns for 1 to 4 objectives and 20 for harder
tasks. Generation stops at ``</query>`` or ``</answer>`` (``STOP_STRINGS``), so no time is spent on text
the loop would throw away.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memr1.data.corpus import Passage
from memr1.data.tasks import Task
from memr1.errors import ConfigError
from memr1.llm.generate import Messages

MODES = ("mem1", "full", "truncate")
PROMPT_STYLES = ("plain", "examples")
ANSWER_SEPARATOR = " ; "
STOP_STRINGS = ("</query>", "</answer>")
"""Generation ends after the turn's action tag, as in MEM1's inference code."""
TURNS_SHORT, TURNS_LONG, SHORT_UP_TO = 6, 20, 4
"""MEM1's turn caps: 6 turns for tasks of 1 to 4 objectives, 20 for harder ones."""
INVALID_HINT = "Write <IS>...</IS> then <query>...</query> or <answer>...</answer>."


@dataclass(frozen=True)
class TokenCounter:
    """A token-counting function with the tokenizer's name (recorded in every episode)."""

    fn: Callable[[str], int]
    name: str

    def __call__(self, text: str) -> int:
        return int(self.fn(text))


WHITESPACE = TokenCounter(lambda s: len(s.split()), "whitespace")


def turn_budget(n_objectives: int) -> int:
    """Turns an N-objective task gets: MEM1's rule, 6 up to 4 objectives and 20 beyond.

    The paper states it for its own runs (6 turns for 1–4 objectives, 20 for harder tasks); its
    released inference code hard-codes 6, which cannot even query each of 8 or 16 questions once.

    >>> [turn_budget(n) for n in (1, 2, 4, 8, 16)]
    [6, 6, 6, 20, 20]
    """
    if n_objectives < 1:
        raise ConfigError(f"n_objectives must be >= 1, got {n_objectives}")
    return TURNS_SHORT if n_objectives <= SHORT_UP_TO else TURNS_LONG


def resolve_turns(max_turns: int, n_objectives: int) -> int:
    """``max_turns`` when it is >= 1, ``turn_budget(n_objectives)`` when it is -1."""
    if max_turns == -1:
        return turn_budget(n_objectives)
    if max_turns < 1:
        raise ConfigError(f"max_turns must be >= 1, or -1 for MEM1's rule (turn_budget), got {max_turns}")
    return max_turns


def task_prompt(task: Task, style: str = "plain") -> str:
    """The task prompt (constant over an episode): the questions and the rules of the loop."""
    return questions_prompt([o.question for o in task.objectives], style)


def questions_prompt(questions: Sequence[str], style: str = "plain") -> str:
    """``task_prompt`` of any list of questions (the worked examples use it too).

    "plain" spells out MEM1's rules; "examples" states them in two sentences, since its worked
    episode shows them (SmolLM2-135M copied the long rules back instead of following them).
    """
    n = len(questions)
    qs = "\n".join(f"{i}. {q.strip()}" for i, q in enumerate(questions, 1))
    if style == "examples":
        answer = "<answer>your answer</answer>" if n == 1 else "<answer>answer 1 ; answer 2 ; ...</answer>"
        return (
            f"Questions:\n{qs}\n\nSearch the documents, one search per turn. Each turn write <IS>notes: the "
            "answers found so far, by question number, and what is still missing</IS>, then <query>search "
            f"words</query>, or, once every question has an answer, {answer}."
        )
    fmt = (
        "<answer>your answer</answer> to finish with one short answer"
        if n == 1
        else "<answer>answer 1 ; answer 2 ; ...</answer> to finish: one short answer per "
        'question, in question order, separated by " ; " (or one numbered line per question)'
    )
    return (
        f"Answer {'this question' if n == 1 else f'these {n} questions'} by searching a document "
        f"collection, one search per turn.\n\nQuestions:\n{qs}\n\nEvery turn, reply in this order:\n"
        "1. <IS>...</IS>: your internal state, rewritten in full each turn. Next turn you will see only "
        "this task, your latest state, your latest query and its results; all else is erased. Keep in "
        "the state every answer found so far (by question number), what is still missing and your "
        "next step. Keep it short.\n"
        "2. Then exactly one of:\n"
        "<query>search words</query> to search for one question; the top documents come back inside "
        "<info>...</info>.\n"
        f"{fmt}. Write unknown where you found nothing. You answer once, and that ends the task.\n"
        "A bracketed line at the end of each message says how many turns are left."
    )


def turns_hint(turns_left: int) -> str:
    return "[Last turn: give the <answer> now.]" if turns_left <= 1 else f"[{turns_left} turns left]"


def format_docs(passages: Sequence[Passage]) -> str:
    """Retrieved passages as MEM1 shows them: ``Doc k (Title: ...) text``, one per line."""
    return "\n".join(f"Doc {i} (Title: {p.title}) {p.text}" for i, p in enumerate(passages, 1)) or "No documents."


def render_turn(state: str, query: str | None) -> str:
    """What a previous turn leaves in the context (the assistant message)."""
    return f"<IS>{state}</IS>" + (f"\n<query>{query}</query>" if query else "")


def render_info(info: str, turns_left: int) -> str:
    """The environment's reply (a user message), with the turns-left hint."""
    return f"<info>\n{info}\n</info>\n{turns_hint(turns_left)}"


# The worked episodes of the "examples" style: invented people, places and documents (no dataset
# question leaks in), one per answer shape: a single question, and two answered with " ; ".
_EXAMPLE_Q1 = "Which river flows through the birthplace of the painter Lena Ostrova?"
_EXAMPLE_Q2 = "In which year did the Harbour Line tram open?"
_EXAMPLE_DOCS = {
    "Lena Ostrova painter birthplace": [
        Passage("x1", "Lena Ostrova", "Lena Ostrova (1931-2004) was a painter born in Velmar."),
        Passage("x2", "Ostrova Prize", "The Ostrova Prize is an art award given every two years."),
        Passage("x3", "Velmar Museum", "The Velmar Museum shows local crafts."),
    ],
    "Velmar river": [
        Passage("x4", "Velmar", "Velmar is a market town on the river Tessa."),
        Passage("x5", "Tessa", "The Tessa is a river 120 km long."),
        Passage("x1", "Lena Ostrova", "Lena Ostrova (1931-2004) was a painter born in Velmar."),
    ],
    "Harbour Line tram opened": [
        Passage("x6", "Harbour Line", "The Harbour Line is a tram line of Port Ellis, opened in 1908."),
        Passage("x7", "Port Ellis", "Port Ellis is a harbour town."),
        Passage("x8", "Trams", "Trams run on rails laid in the street."),
    ],
}
_EXAMPLE_EPISODES = {
    1: (
        [_EXAMPLE_Q1],
        [
            ("Q1: need where Lena Ostrova was born.", "Lena Ostrova painter birthplace"),
            ("Q1: she was born in Velmar; need its river.", "Velmar river"),
        ],
        ("Q1: Tessa.", ["Tessa"]),
    ),
    2: (
        [_EXAMPLE_Q1, _EXAMPLE_Q2],
        [
            ("Q1: need where Lena Ostrova was born. Q2: not searched yet.", "Lena Ostrova painter birthplace"),
            ("Q1: born in Velmar; need its river. Q2: not searched yet.", "Velmar river"),
            ("Q1: Tessa. Q2: not searched yet.", "Harbour Line tram opened"),
        ],
        ("Q1: Tessa. Q2: 1908.", ["Tessa", "1908"]),
    ),
}


def example_messages(n_objectives: int, style: str = "examples") -> Messages:
    """The constant prefix a prompt style puts before the task: nothing for "plain"; for "examples" a
    worked episode (one question when N is 1, two otherwise) as earlier chat turns.

    >>> [m["role"] for m in example_messages(1)]
    ['user', 'assistant', 'user', 'assistant', 'user', 'assistant']
    >>> example_messages(3, "plain")
    []
    """
    if style not in PROMPT_STYLES:
        raise ConfigError(f"unknown prompt style {style!r}; choose one of {PROMPT_STYLES}")
    if style == "plain":
        return []
    questions, searches, (state, answers) = _EXAMPLE_EPISODES[1 if n_objectives == 1 else 2]
    left = TURNS_SHORT
    msgs: Messages = [{"role": "user", "content": f"{questions_prompt(questions, style)}\n\n{turns_hint(left)}"}]
    for s, query in searches:
        left -= 1
        msgs.append({"role": "assistant", "content": render_turn(s, query)})
        msgs.append({"role": "user", "content": render_info(format_docs(_EXAMPLE_DOCS[query]), left)})
    msgs.append(
        {"role": "assistant", "content": f"<IS>{state}</IS>\n<answer>{ANSWER_SEPARATOR.join(answers)}</answer>"}
    )
    return msgs


def build_context(
    task: Task,
    turn: int,
    state: str,
    last_query: str | None,
    last_info: str,
    turns_left: int,
    mode: str = "mem1",
    *,
    history: Sequence[tuple[str, str | None, str]] = (),
    budget_tokens: int = 0,
    count_tokens: Callable[[str], int] = WHITESPACE,
    prompt_style: str = "plain",
) -> Messages:
    """The messages the model sees at ``turn`` (a pure function: same arguments, same messages).

    ``turn`` is 0-based (turn 0 ignores state, last_query, last_info); state, last_query (None: no
    query) and last_info (``format_docs`` text) come from the previous turn; ``turns_left`` counts
    this turn. "full" and "truncate" also need ``history``: the (state, query, info) of the ``turn - 1``
    turns before the previous one, oldest first ("mem1" ignores it); "truncate" keeps the newest
    turns whose ``count_tokens`` fit ``budget_tokens`` (prompt included; the newest turn always stays).
    ``prompt_style`` "examples" puts ``example_messages`` first (outside the truncation budget).
    """
    if mode not in MODES:
        raise ConfigError(f"unknown context mode {mode!r}; choose one of {MODES}")
    prompt, prefix = task_prompt(task, prompt_style), example_messages(task.n_objectives, prompt_style)
    if turn == 0:
        return [*prefix, {"role": "user", "content": f"{prompt}\n\n{turns_hint(turns_left)}"}]
    if mode == "mem1":
        past = [(state, last_query, last_info)]
    elif len(history) != turn - 1:
        raise ConfigError(
            f"mode {mode!r} at turn {turn} needs the {turn - 1} older turns in history, got {len(history)}"
        )
    else:
        past = [*history, (state, last_query, last_info)]
    pairs = [
        [{"role": "assistant", "content": render_turn(s, q)}, {"role": "user", "content": f"<info>\n{i}\n</info>"}]
        for s, q, i in past
    ]
    pairs[-1][1]["content"] = render_info(last_info, turns_left)
    if mode == "truncate":
        if budget_tokens <= 0:
            raise ConfigError("mode 'truncate' needs budget_tokens > 0")
        used = count_tokens(prompt)
        kept: list[list[dict[str, str]]] = []
        for pair in reversed(pairs):
            cost = sum(count_tokens(m["content"]) for m in pair)
            if kept and used + cost > budget_tokens:
                break
            kept.insert(0, pair)
            used += cost
        pairs = kept
    return [*prefix, {"role": "user", "content": prompt}] + [m for pair in pairs for m in pair]


@dataclass(frozen=True)
class Action:
    """A parsed model turn. ``ok`` is False when neither a query nor an answer could be read."""

    state: str
    query: str | None = None
    answers: tuple[str, ...] | None = None
    ok: bool = False
    error: str = ""

    @property
    def kind(self) -> str:
        return "answer" if self.answers is not None else "query" if self.query is not None else "invalid"


_TAG = r"<\s*/?\s*(?:IS|think|query|search|answer|info|information)\s*>"
_STATE = re.compile(r"<\s*(IS|think)\s*>(.*?)<\s*/\s*\1\s*>", re.I | re.S)
_OPEN_STATE = re.compile(r"<\s*(IS|think)\s*>(.*?)(?=<\s*(?:query|search|answer)\s*>|\Z)", re.I | re.S)
_ACTION = re.compile(r"<\s*(query|search|answer)\s*>(.*?)(?:<\s*/\s*\1\s*>|\Z)", re.I | re.S)
_STOP = re.compile(r"<\s*/\s*(?:query|search|answer)\s*>", re.I)
_NUMBERING = re.compile(
    r"^\s*(?:\(\d{1,2}\)|\d{1,2}[.):](?=\s)|\d{1,2}\)|[QA]\d{1,2}\s*[:.)=-]|"
    r"answer\s*\d{1,2}\s*[:.)=-])\s*",
    re.I,
)


def cut_at_stop(text: str) -> str:
    """The text up to its first ``</query>`` or ``</answer>`` (what decoding with MEM1's stop strings returns)."""
    m = _STOP.search(text)
    return text[: m.end()] if m else text


def _clean(text: str) -> str:
    return " ".join(re.sub(_TAG, " ", text, flags=re.I).split())


def parse_answers(body: str, n_objectives: int | None = None) -> tuple[str, ...]:
    """Split an ``<answer>`` body: lines when there are several, else ``;``; one answer when N is 1."""
    lines = [ln for ln in str(body).splitlines() if ln.strip()]
    if n_objectives == 1:
        parts = [" ".join(lines)]
    else:
        parts = lines if len(lines) > 1 else str(body).split(";")
    return tuple(_clean(_NUMBERING.sub("", p)) for p in parts)


def parse_action(text: Any, n_objectives: int | None = None) -> Action:
    """Read ``<IS>`` and the first ``<query>`` or ``<answer>`` after it; never raises.

    Tolerates a missing closing tag at the end of the text, MEM1's own tag names (``<think>``,
    ``<search>``) and any case; text after the first action is ignored (MEM1 stops generating there).

    >>> parse_action("<IS>Q1=Paris</IS><answer>Paris ; 1945</answer>").answers
    ('Paris', '1945')
    >>> parse_action("rambling").ok
    False
    """
    if not isinstance(text, str):
        return Action("", ok=False, error=f"output is {type(text).__name__}, not text")
    m = _STATE.search(text) or _OPEN_STATE.search(text)  # a closed state wins over an unclosed one
    state = _clean(m.group(2)) if m else ""
    act = _ACTION.search(text)
    if act and m and m.start() <= act.start() < m.end():  # a tag quoted inside the state is not an action
        act = _ACTION.search(text, m.end())
    if act is None:
        return Action(state, ok=False, error="no <query> or <answer>")
    body = _clean(act.group(2)) if act.group(1).lower() != "answer" else act.group(2)
    if not _clean(body):
        return Action(state, ok=False, error=f"empty <{act.group(1).lower()}>")
    if act.group(1).lower() == "answer":
        return Action(state, answers=parse_answers(body, n_objectives), ok=True)
    return Action(state, query=body, ok=True)

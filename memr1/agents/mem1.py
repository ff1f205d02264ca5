"""The MEM1 agent loop: one compact internal state per turn, everything older dropped.

After MEM1 (Zhou, Qu et al., arXiv 2506.15841). Each turn the model writes ``<IS>…</IS>`` (its
internal state), then ``<query>…</query>`` (answered with ``<info>…</info>``, top-3 passages) or
``<answer>…</answer>``. Context modes: ``"mem1"``: turn t ≥ 1 sees *exactly* the prompt (user), the
previous state and query (assistant, re-rendered as ``<IS>s</IS>\n<query>q</query>``; anything else
the model wrote is dropped) and the previous info (user); ``"full"``: the prompt and every previous
turn; ``"truncate"``: the prompt and the newest turns that fit ``budget_tokens`` (the newest always
stays). The paper's "truncate" baseline is our ``"mem1"`` mode with an untrained model.

One loop, ``run_batch``, serves evaluation and training alike: all live episodes (tasks × group
members) advance together, one batched model call per turn, through a small step interface
(``TurnPolicy``): inference wraps any ``Generator`` (``GeneratorPolicy``, stop strings set), training
plugs in a token sampler that also returns the prompt ids, the sampled ids and their log-probs
(``memr1.rl.mem1_trainer.TokenSampler``), so the same turns, pruning and stop rules produce both.

Turn budget (``turn_budget``): MEM1 allows 6 turns for 1 to 4 objectives and 20 for harder tasks.
Generation stops at ``</query>`` or ``</answer>`` (``STOP_STRINGS``), so no time is spent on text the
loop would throw away.

Prompt styles (``PROMPT_STYLES``): "plain" shows only the instructions (``task_prompt``), as MEM1
does; "examples" shortens them and puts a worked episode before them (``example_messages``:
invented questions and documents, searches, then the answer, rendered exactly as real turns are),
a constant prefix of every context in every mode. SmolLM2-135M wrote almost no valid turn under "plain" (it repeated the
instructions; docs/results/mem1_horizon_plain.md) and mostly valid ones under "examples"
(docs/results/mem1_horizon.md).

The last user message ends with a turns-left hint. All N questions are answered in one ``<answer>``,
in question order, separated by ``" ; "`` (MEM1) or one per line (numbering like ``1.`` or ``Q2:`` is
stripped); each is scored by position with the ``score`` function the caller passes (the evaluation
layer's ``memr1.eval.mem1_metrics.score_answer``: EM and set F1, best over gold aliases; MEM1's
evaluation also zeroes a task whose answer count is not N: ``Episode.answer_count_ok``). Invalid
output ends the episode, as in MEM1.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from memr1.data.corpus import Passage
from memr1.data.tasks import Task
from memr1.errors import ConfigError
from memr1.llm.generate import Generator, Messages, Sampling
from memr1.memory.passages import Retriever, retriever_for

MODES = ("mem1", "full", "truncate")
PROMPT_STYLES = ("plain", "examples")
ANSWER_SEPARATOR = " ; "
STOP_STRINGS = ("</query>", "</answer>")
"""Generation ends after the turn's action tag, as in MEM1's inference code."""
STOPS = ("answer", "invalid", "max_turns", "context_window")
"""Why an episode ended: an answer, an invalid turn, its turn budget, or a context the model cannot read
(prompt and the turn's new tokens past the policy's ``context_window``; the turn is not generated)."""
CHAT_TOKENS_PER_MESSAGE = 8
"""Tokens the chat template adds around each message (role markers; SmolLM2 adds 5), a safe margin
for the context-window check, which counts message contents only."""
DEFAULT_SAMPLING = Sampling(max_new_tokens=256, stop=STOP_STRINGS)
TURNS_SHORT, TURNS_LONG, SHORT_UP_TO = 6, 20, 4
"""MEM1's turn caps: 6 turns for tasks of 1 to 4 objectives, 20 for harder ones."""
INVALID_HINT = "Write <IS>...</IS> then <query>...</query> or <answer>...</answer>."
Scorer = Callable[[str, Sequence[str]], tuple[float, float]]
"""``(prediction, gold aliases) -> (EM, F1)`` of one objective's answer."""


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


@dataclass
class TurnRecord:
    """One turn: ``context`` is exactly what the model saw, ``raw`` what it wrote up to its first action
    (``cut_at_stop``), ``prompt_tokens`` the prompt's share of ``context_tokens``, ``info`` the documents.

    ``state_tokens`` counts the internal state written this turn and ``context_state_tokens`` the
    states shown in the context (MEM1's counting adds them a second time). ``prompt_ids``,
    ``completion_ids`` and ``logprobs`` are filled by a token-level policy (training) only.
    """

    turn: int
    context: Messages
    context_tokens: int
    prompt_tokens: int
    generated_tokens: int
    raw: str
    state: str
    query: str | None
    answers: tuple[str, ...] | None
    retrieved_ids: list[str]
    info: str
    ok: bool
    wall_s: float
    finish_reason: str = ""
    state_tokens: int = 0
    context_state_tokens: int = 0
    prompt_ids: tuple[int, ...] = ()
    completion_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()


@dataclass
class Episode:
    """One task run: ``policy`` is the generator name, ``tokenizer`` the counter behind every count,
    ``em`` / ``f1`` are per objective, ``stop`` is one of ``STOPS``, ``max_turns`` the turn budget it
    had."""

    task_id: str
    mode: str
    policy: str
    tokenizer: str
    n_objectives: int
    max_turns: int
    turns: list[TurnRecord] = field(default_factory=list)
    answers: tuple[str, ...] = ()
    em: list[float] = field(default_factory=list)
    f1: list[float] = field(default_factory=list)
    stop: str = ""
    wall_s: float = 0.0

    @property
    def answer_count_ok(self) -> bool:
        return len(self.answers) == self.n_objectives


# --------------------------------------------------------------------------- the step interface


@dataclass(frozen=True)
class StepOutput:
    """What a policy returns for one context: the text, and the token ids and their log-probs when
    the policy works on tokens (training); ``latency_s`` is the context's share of the batched call."""

    text: str
    latency_s: float = 0.0
    finish_reason: str = "stop"
    prompt_ids: tuple[int, ...] = ()
    completion_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()


@runtime_checkable
class TurnPolicy(Protocol):
    """Writes one turn for each of a batch of contexts (one batched model call)."""

    name: str

    def step(self, contexts: Sequence[Messages]) -> list[StepOutput]: ...


class GeneratorPolicy:
    """Inference: a ``Generator`` decoding with ``sampling``, the MEM1 stop strings added when it has none."""

    def __init__(self, generator: Generator, sampling: Sampling = DEFAULT_SAMPLING):
        self.generator, self.name = generator, getattr(generator, "name", "?")
        self.sampling = sampling if sampling.stop else dataclasses.replace(sampling, stop=STOP_STRINGS)

    @property
    def context_window(self) -> int | None:
        return getattr(self.generator, "context_window", None)

    @property
    def max_new_tokens(self) -> int:
        return self.sampling.max_new_tokens

    def step(self, contexts: Sequence[Messages]) -> list[StepOutput]:
        outs = self.generator.generate(list(contexts), self.sampling)
        return [StepOutput(g.text, g.latency_s, g.finish_reason) for g in outs]


def as_policy(policy: Generator | TurnPolicy, sampling: Sampling = DEFAULT_SAMPLING) -> TurnPolicy:
    """A ``TurnPolicy`` as it is; a ``Generator`` wrapped in ``GeneratorPolicy``."""
    if callable(getattr(policy, "step", None)):
        return policy  # type: ignore[return-value]
    if callable(getattr(policy, "generate", None)):
        return GeneratorPolicy(policy, sampling)  # type: ignore[arg-type]
    raise ConfigError(f"policy must be a Generator or a TurnPolicy (with step()), got {type(policy).__name__}")


# --------------------------------------------------------------------------- the loop


def run_episode(
    task: Task,
    generator: Generator | TurnPolicy,
    retriever: Retriever | None = None,
    mode: str = "mem1",
    max_turns: int = -1,
    sampling: Sampling = DEFAULT_SAMPLING,
    count_tokens: Callable[[str], int] = WHITESPACE,
    *,
    score: Scorer,
    k: int = 3,
    budget_tokens: int = 1024,
    stop_on_invalid: bool = True,
    prompt_style: str = "plain",
) -> Episode:
    """Run one task to an answer, an invalid turn or its turn budget; score the answers per objective.

    ``retriever`` None uses BM25 over the task's corpus (built once per corpus). ``count_tokens``
    gives every token number in the records; pass a ``TokenCounter`` so its name is recorded.
    ``max_turns`` -1 follows ``turn_budget``.
    """
    return run_batch(
        [task],
        generator,
        [retriever],
        mode,
        max_turns,
        sampling,
        count_tokens,
        score=score,
        k=k,
        budget_tokens=budget_tokens,
        stop_on_invalid=stop_on_invalid,
        prompt_style=prompt_style,
    )[0]


_STATE_IN_CONTEXT = re.compile(r"<IS>(.*?)</IS>", re.S)


def run_batch(
    tasks: Sequence[Task],
    generator: Generator | TurnPolicy,
    retrievers: Sequence[Retriever | None] | None = None,
    mode: str = "mem1",
    max_turns: int = -1,
    sampling: Sampling = DEFAULT_SAMPLING,
    count_tokens: Callable[[str], int] = WHITESPACE,
    *,
    score: Scorer,
    k: int = 3,
    budget_tokens: int = 1024,
    stop_on_invalid: bool = True,
    prompt_style: str = "plain",
    progress: bool = False,
) -> list[Episode]:
    """``run_episode`` for several tasks in lockstep: one batched ``step`` per turn for all live episodes.

    The one episode loop of the project: evaluation passes a ``Generator`` (decoded with
    ``sampling``, stop strings included), training a token-level ``TurnPolicy``; a task may appear
    several times (a training group). Each task gets ``max_turns`` turns, or ``turn_budget`` of its
    N when ``max_turns`` is -1. A turn's wall time is its share of the batched call plus its own
    retrieval. ``prompt_style`` (``PROMPT_STYLES``) counts as prompt: its examples are in
    ``prompt_tokens`` and their states are not in ``context_state_tokens``.

    When the policy knows its ``context_window``, a context that would not fit with the turn's
    ``max_new_tokens`` ends its episode (stop "context_window") instead of being generated past the
    window; the check counts with ``count_tokens``, so pass the model's ``TokenCounter``.
    ``progress`` shows a bar over turns with the live episodes and the longest context.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown context mode {mode!r}; choose one of {MODES}")
    prefixes = {t.n_objectives: example_messages(t.n_objectives, prompt_style) for t in tasks}
    prompt_counts = [  # constant over an episode: counted once
        count_tokens(task_prompt(t, prompt_style)) + sum(count_tokens(m["content"]) for m in prefixes[t.n_objectives])
        for t in tasks
    ]
    policy = as_policy(generator, sampling)
    budgets = [resolve_turns(max_turns, t.n_objectives) for t in tasks]
    rets = [r or retriever_for(t.corpus) for t, r in zip(tasks, retrievers or [None] * len(tasks))]
    counter = getattr(count_tokens, "name", "custom")
    eps = [Episode(t.id, mode, policy.name, counter, t.n_objectives, b) for t, b in zip(tasks, budgets)]
    pasts: list[list[tuple[str, str | None, str]]] = [[] for _ in tasks]
    window = getattr(policy, "context_window", None)
    reserve = getattr(policy, "max_new_tokens", sampling.max_new_tokens)
    live = list(range(len(tasks)))
    turn = 0
    bar = tqdm(total=max(budgets, default=0), desc=f"{mode} episodes", unit="turn", disable=not progress)
    while live:
        start = time.perf_counter()
        contexts = [
            build_context(
                tasks[i],
                turn,
                *(pasts[i][-1] if pasts[i] else ("", None, "")),
                budgets[i] - turn,
                mode,
                history=pasts[i][:-1],
                budget_tokens=budget_tokens,
                count_tokens=count_tokens,
                prompt_style=prompt_style,
            )
            for i in live
        ]
        sizes = [sum(count_tokens(m["content"]) for m in msgs) for msgs in contexts]
        if window:
            fits = [n + CHAT_TOKENS_PER_MESSAGE * len(m) + reserve <= window for n, m in zip(sizes, contexts)]
            for i, ok in zip(live, fits):
                if not ok:
                    eps[i].stop = "context_window"
            keep = [j for j, ok in enumerate(fits) if ok]
            live, contexts, sizes = [live[j] for j in keep], [contexts[j] for j in keep], [sizes[j] for j in keep]
            if not live:
                break
        outputs = policy.step(contexts)
        share = (time.perf_counter() - start) / len(live)
        still = []
        for i, msgs, size, out in zip(live, contexts, sizes, outputs):
            t0, task, ep = time.perf_counter(), tasks[i], eps[i]
            text = cut_at_stop(out.text)  # a server may run past the action; nothing after it counts
            action = parse_action(text, task.n_objectives)
            hits = rets[i].search(action.query, k) if action.query is not None else []
            info = format_docs(hits) if action.query is not None else ""
            if not action.ok and not stop_on_invalid:
                info = f"Invalid turn ({action.error}). {INVALID_HINT}"
            prefix = prefixes[task.n_objectives]
            episode_msgs = msgs[len(prefix) :]
            shown = [
                s for m in episode_msgs if m["role"] == "assistant" for s in _STATE_IN_CONTEXT.findall(m["content"])
            ]
            ep.turns.append(
                TurnRecord(
                    turn,
                    msgs,
                    size,
                    prompt_counts[i],
                    count_tokens(text),
                    text,
                    action.state,
                    action.query,
                    action.answers,
                    [p.id for p in hits],
                    info,
                    action.ok,
                    share + time.perf_counter() - t0,
                    finish_reason=out.finish_reason,
                    state_tokens=count_tokens(action.state),
                    context_state_tokens=sum(count_tokens(x) for x in shown),
                    prompt_ids=out.prompt_ids,
                    completion_ids=out.completion_ids,
                    logprobs=out.logprobs,
                )
            )
            if action.answers is not None or (not action.ok and stop_on_invalid):
                ep.answers, ep.stop = action.answers or (), "answer" if action.answers is not None else "invalid"
            elif turn + 1 < budgets[i]:
                pasts[i].append((action.state, action.query, info))
                still.append(i)
        live, turn = still, turn + 1
        bar.set_postfix(live=len(live), context=max(sizes))
        bar.update()
    bar.close()
    for task, ep in zip(tasks, eps):
        ep.stop, ep.wall_s = ep.stop or "max_turns", sum(t.wall_s for t in ep.turns)
        for i, obj in enumerate(task.objectives):
            pred = ep.answers[i] if i < len(ep.answers) else ""
            em, f1 = score(pred, obj.answers) if pred else (0.0, 0.0)
            ep.em.append(em)
            ep.f1.append(f1)
    return eps

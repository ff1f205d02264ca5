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

What a turn reads and writes (prompts, prompt styles, worked examples, contexts, parsing, turn
budgets) lives in ``memr1.agents.mem1_text``; its names are importable from here too. Each answer
is scored by position with the ``score`` function the caller passes (the evaluation layer's
``memr1.eval.mem1_metrics.score_answer``: EM and set F1, best over gold aliases; MEM1's evaluation
also zeroes a task whose answer count is not N: ``Episode.answer_count_ok``). Invalid output ends
the episode, as in MEM1.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tqdm.auto import tqdm

from memr1.agents.mem1_text import (
    ANSWER_SEPARATOR,
    INVALID_HINT,
    MODES,
    PROMPT_STYLES,
    STOP_STRINGS,
    WHITESPACE,
    Action,
    TokenCounter,
    build_context,
    cut_at_stop,
    example_messages,
    format_docs,
    parse_action,
    parse_answers,
    questions_prompt,
    render_info,
    render_turn,
    resolve_turns,
    task_prompt,
    turn_budget,
    turns_hint,
)
from memr1.data.tasks import Task
from memr1.errors import ConfigError
from memr1.llm.generate import Generator, Messages, Sampling
from memr1.memory.passages import Retriever, retriever_for

STOPS = ("answer", "invalid", "max_turns", "context_window")
"""Why an episode ended: an answer, an invalid turn, its turn budget, or a context the model cannot read
(prompt and the turn's new tokens past the policy's ``context_window``; the turn is not generated)."""
CHAT_TOKENS_PER_MESSAGE = 8
"""Tokens the chat template adds around each message (role markers; SmolLM2 adds 5), a safe margin
for the context-window check, which counts message contents only."""
DEFAULT_SAMPLING = Sampling(max_new_tokens=256, stop=STOP_STRINGS)
Scorer = Callable[[str, Sequence[str]], tuple[float, float]]
"""``(prediction, gold aliases) -> (EM, F1)`` of one objective's answer."""

__all__ = [  # the loop's own names, and mem1_text's for the callers that import them from here
    "ANSWER_SEPARATOR", "CHAT_TOKENS_PER_MESSAGE", "DEFAULT_SAMPLING", "INVALID_HINT", "MODES", "PROMPT_STYLES",
    "STOPS", "STOP_STRINGS", "WHITESPACE", "Action", "Episode", "GeneratorPolicy", "Scorer", "StepOutput",
    "TokenCounter", "TurnPolicy", "TurnRecord", "as_policy", "build_context", "cut_at_stop", "example_messages",
    "format_docs", "parse_action", "parse_answers", "questions_prompt", "render_info", "render_turn",
    "resolve_turns", "run_batch", "run_episode", "task_prompt", "turn_budget", "turns_hint",
]  # fmt: skip


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

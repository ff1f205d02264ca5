"""MEM1 measures, the scripted gold policy, and running tasks under several context modes.

Used by stage 06 (``memr1.stages.mem1``), ``experiments/mem1_horizon.py`` and ``bench/bench_mem1.py``.
Two countings side by side, each named (docs/design.md §mem1 measures). For turn t with context c_t
tokens, task prompt p_t, g_t generated tokens, s_t tokens of the internal state written and S_t
tokens of the internal states shown in the context:

*This project's counting* (the whole context the model reads, the model's tokenizer):

- **em / f1**: summed over a task's objectives (counts from 0 to N, as MEM1's tables print them);
  **em_strict / f1_strict** zero a task whose answer count differs from N (MEM1's ``eval.py`` rule).
- **peak_tokens** = max_t c_t: the whole context, task prompt included.
- **dependency** = Σ_t Σ_{i<g_t} (c_t + i) = Σ_t g_t·c_t + g_t(g_t - 1)/2: every generated token
  attends to the context plus the tokens generated before it.

*MEM1's counting* (its released ``eval.py``; the same tokenizer here, MEM1 used tiktoken o200k):

- **peak_mem1** = max_t (c_t - p_t + S_t + g_t + s_t): the prompt left out, the turn's own output
  in, and every internal state counted twice (MEM1 stores the state alone and again inside the
  full response, and sums both). In the tables it is averaged over the tasks with EM > 0 only, as
  MEM1 does (``peak_mem1_all_tasks`` averages over all; NaN when no task scored).
- **dependency_mem1** = Σ_t (C_t + ⌊s_t/2⌋)·s_t + (C_t + s_t + ⌊g_t/2⌋)·g_t with C_t = c_t - p_t + S_t:
  the state and the full response as two generated segments, the prompt left out.

- **wall_s**: seconds per task (its share of the batched generation + its retrieval).

>>> dependency([(10, 3)])            # 10 + 11 + 12
33
>>> dependency([(10, 3), (5, 2)])    # 33 + (5 + 6)
44
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from memr1.agents.mem1 import (
    ANSWER_SEPARATOR,
    DEFAULT_SAMPLING,
    MODES,
    WHITESPACE,
    Action,
    Episode,
    TokenCounter,
    parse_action,
    resolve_turns,
    run_batch,
    run_episode,
)
from memr1.data.tasks import Task
from memr1.errors import ConfigError
from memr1.eval.metrics import exact_match, f1_mem0
from memr1.llm.generate import Generator, Messages, Sampling, ScriptedGenerator
from memr1.memory.passages import retriever_for

GOLD = "gold"
"""Pass as ``policy`` to ``run_episodes`` for the scripted gold policy."""


# --------------------------------------------------------------------------- measures


def score_answer(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """EM and set F1 (mem0 family) of one objective's answer, best over its gold aliases.

    >>> score_answer("Paris", ["paris", "Paris, France"])
    (1.0, 1.0)
    """
    return max(exact_match(prediction, a) for a in golds), max(f1_mem0(prediction, a) for a in golds)


def dependency(turns: Iterable[tuple[int, int]]) -> int:
    """Σ over turns (c, g) of Σ_{i<g} (c + i): the attention work of generation, in token pairs."""
    return sum(g * c + g * (g - 1) // 2 for c, g in turns)


def peak_tokens(ep: Episode) -> int:
    """Longest context over the episode's turns (0 for an episode with no turn)."""
    return max((t.context_tokens for t in ep.turns), default=0)


def _mem1_context(t: Any) -> int:
    """A turn's context as MEM1 counts it: no task prompt, each shown internal state twice."""
    return t.context_tokens - t.prompt_tokens + t.context_state_tokens


def peak_mem1(ep: Episode) -> int:
    """MEM1's peak of one episode: context without the task prompt plus the turn's output, every
    internal state counted twice (0 for an episode with no turn)."""
    return max((_mem1_context(t) + t.generated_tokens + t.state_tokens for t in ep.turns), default=0)


def dependency_mem1(ep: Episode) -> int:
    """MEM1's dependency: the state and the full response as two segments, the prompt left out."""
    total = 0
    for t in ep.turns:
        c, s, g = _mem1_context(t), t.state_tokens, t.generated_tokens
        total += (c + s // 2) * s + (c + s + g // 2) * g
    return total


def episode_metrics(ep: Episode) -> dict[str, Any]:
    """One flat row of measures for an episode."""
    em, f1 = float(sum(ep.em)), float(sum(ep.f1))
    return {
        "task_id": ep.task_id,
        "policy": ep.policy,
        "mode": ep.mode,
        "tokenizer": ep.tokenizer,
        "n_objectives": ep.n_objectives,
        "turns": len(ep.turns),
        "stop": ep.stop,
        "em": em,
        "f1": f1,
        "em_strict": em if ep.answer_count_ok else 0.0,
        "f1_strict": f1 if ep.answer_count_ok else 0.0,
        "peak_tokens": peak_tokens(ep),
        "dependency": dependency((t.context_tokens, t.generated_tokens) for t in ep.turns),
        "peak_mem1": peak_mem1(ep),
        "dependency_mem1": dependency_mem1(ep),
        "max_turns": ep.max_turns,
        "wall_s": ep.wall_s,
    }


OURS = ("em", "f1", "em_strict", "f1_strict", "peak_tokens", "dependency")
"""This project's counting: prompt included, the model's tokenizer."""
MEM1S = ("peak_mem1", "peak_mem1_all_tasks", "dependency_mem1")
"""MEM1's counting: prompt excluded, each internal state twice; ``peak_mem1`` over tasks with EM > 0."""
MEANS = (*OURS, "peak_mem1_all_tasks", "dependency_mem1", "turns", "wall_s")


def aggregate(episodes: Sequence[Episode]) -> pd.DataFrame:
    """Means per (policy, mode, N) over tasks, with the task count, the tokens' counter and the turn budget.

    ``peak_mem1`` is MEM1's mean: over the tasks with EM > 0 only (``tasks_em_nonzero`` of them;
    NaN when none); every other column is a mean over all tasks.
    """
    if not episodes:
        raise ConfigError("aggregate needs at least one episode")
    df = pd.DataFrame([episode_metrics(e) for e in episodes])
    df["peak_mem1_all_tasks"] = df["peak_mem1"]
    df["peak_mem1"] = df["peak_mem1"].where(df["em"] > 0)  # NaN rows are left out of the mean
    df["em_nonzero"] = df["em"] > 0
    keys = ["policy", "mode", "n_objectives"]
    out = (
        df.groupby(keys, sort=False)
        .agg(
            tasks=("task_id", "size"),
            tokenizer=("tokenizer", "first"),
            max_turns=("max_turns", "max"),
            tasks_em_nonzero=("em_nonzero", "sum"),
            peak_mem1=("peak_mem1", "mean"),
            **{m: (m, "mean") for m in MEANS},
        )
        .reset_index()
    )
    return out.sort_values(["policy", "mode", "n_objectives"], kind="stable", ignore_index=True)


def peak_ratio(
    table: pd.DataFrame, mode: str, hi: int, lo: int, column: str = "peak_tokens", policy: str | None = None
) -> float:
    """``column`` at N = hi over N = lo for one mode (and policy) of an ``aggregate`` table."""
    rows = table[(table["mode"] == mode) & ((table["policy"] == policy) if policy else True)]
    at = dict(zip(rows["n_objectives"], rows[column]))
    if hi not in at or lo not in at:
        raise ConfigError(f"table has no {mode!r} rows for N = {hi} and N = {lo}")
    return float(at[hi]) / float(at[lo])


# --------------------------------------------------------------------------- scripted gold policy


def gold_policy(task: Task, name: str = "gold-scripted") -> ScriptedGenerator:
    """A scripted oracle that reads the gold passages, remembering progress *only* in its state.

    For the first unsettled objective it queries the titles of all its gold passages, then each
    missing passage's title plus its first 12 words. Once every gold passage of that objective has
    appeared in an ``<info>``, it writes ``Qk=answer`` into its state (``Qk=unknown`` when its last
    query fails); items are separated by ``; ``, partial finds kept as ``Qk has 1``. It answers from
    its state once every objective is settled (``" ; "``-separated, or numbered lines when an answer
    holds a ``;``). Between turns it knows only what its context shows (the last ``<IS>``,
    ``<query>`` and ``<info>``), so it works under every context mode; its state grows by one short
    item per objective.
    """
    objs = task.objectives

    def candidates(k: int) -> list[tuple[str, int]]:
        """(query, gold index it targets; -1 for all) in the order they are tried."""
        ps = task.gold_passages(k)  # whitespace collapsed, as parse_action returns the query
        out = {" ".join(" ".join(p.title for p in ps).split()): -1}
        for j, p in enumerate(ps):
            out.setdefault(" ".join(p.title.split() + p.text.split()[:12]), j)
        return list(out.items())

    def render(answers: dict[int, str], have: dict[int, set[int]], query: str | None) -> str:
        items = [f"Q{k + 1}={a}" for k, a in sorted(answers.items())]
        items += [f"Q{k + 1} has {','.join(str(j + 1) for j in sorted(js))}" for k, js in sorted(have.items()) if js]
        out = f"<IS>{'; '.join(items) or 'nothing found yet'}</IS>"
        if query:
            return f"{out}\n<query>{query}</query>"
        vals = [answers[k] for k in range(len(objs))]
        body = (
            "\n".join(f"{i}. {a}" for i, a in enumerate(vals, 1))
            if any(";" in a for a in vals)
            else ANSWER_SEPARATOR.join(vals)
        )
        return f"{out}\n<answer>{body}</answer>"

    def act(messages: Messages) -> str:
        first = not messages[-1]["content"].startswith("<info>")  # turn 0, after any worked examples
        prev = Action("") if first else parse_action(messages[-2]["content"])
        info = "" if first else messages[-1]["content"]
        answers: dict[int, str] = {}
        have: dict[int, set[int]] = {}
        for item in filter(None, (s.strip() for s in re.split(r";\s*(?=Q\d+(?:=| has ))", prev.state))):
            if m := re.fullmatch(r"Q(\d+)=(.*)", item):
                answers[int(m.group(1)) - 1] = m.group(2)
            elif m := re.fullmatch(r"Q(\d+) has ([\d,]+)", item):
                have[int(m.group(1)) - 1] = {int(x) - 1 for x in m.group(2).split(",")}
        todo = [k for k in range(len(objs)) if k not in answers]
        if todo and prev.query:  # the last query was for the first unsettled objective
            k = todo[0]
            got = have.setdefault(k, set())
            got |= {j for j, p in enumerate(task.gold_passages(k)) if f"(Title: {p.title}) {p.text}" in info}
            options = candidates(k)
            pos = [q for q, _ in options].index(prev.query) if prev.query in dict(options) else -1
            left = [q for q, j in options[pos + 1 :] if j not in got]
            if len(got) < len(objs[k].gold_ids) and left:
                return render(answers, have, left[0])
            answers[k] = objs[k].answers[0] if len(got) == len(objs[k].gold_ids) else "unknown"
            have.pop(k)
            todo = todo[1:]
        return render(answers, have, candidates(todo[0])[0][0] if todo else None)

    return ScriptedGenerator(act, name=name)


# --------------------------------------------------------------------------- running


def run_episodes(
    tasks: Sequence[Task],
    policy: Generator | str,
    modes: Sequence[str] = ("mem1", "full"),
    *,
    max_turns: int = -1,
    count_tokens: Any = WHITESPACE,
    sampling: Sampling = DEFAULT_SAMPLING,
    retriever: str = "bm25",
    embedder: str = "minilm",
    budget_tokens: int = 1024,
    stop_on_invalid: bool = True,
    prompt_style: str = "plain",
    progress: bool = False,
) -> list[Episode]:
    """Every task under every mode, with ``policy`` a generator or ``"gold"`` (``gold_policy`` per task).

    ``max_turns`` -1 gives each task MEM1's budget for its N (``turn_budget``); ``retriever`` "bm25"
    or "dense" (with ``embedder``, MiniLM by default); ``prompt_style`` and ``progress`` as in
    ``run_batch``."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ConfigError(f"unknown mode(s) {unknown}; choose from {MODES}")
    episodes: list[Episode] = []
    kw: dict[str, Any] = {
        "budget_tokens": budget_tokens,
        "stop_on_invalid": stop_on_invalid,
        "prompt_style": prompt_style,
    }
    for mode in modes:
        rets = [retriever_for(t.corpus, retriever, embedder) for t in tasks]
        if policy == GOLD:
            episodes += [
                run_episode(t, gold_policy(t), r, mode, max_turns, sampling, count_tokens, score=score_answer, **kw)
                for t, r in zip(tasks, rets)
            ]
        else:  # one batched generate call per turn for all live tasks
            if isinstance(policy, str):
                raise ConfigError(f"policy must be a Generator or {GOLD!r}, got {policy!r}")
            episodes += run_batch(
                tasks,
                policy,
                rets,
                mode,
                max_turns,
                sampling,
                count_tokens,
                score=score_answer,
                progress=progress,
                **kw,
            )
    return episodes


def hf_token_counter(tokenizer: Any, name: str = "") -> TokenCounter:
    """Count with a transformers tokenizer (or a path or hub id to load one), no special tokens; cached,
    since contexts repeat the same messages turn after turn."""
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        name, tokenizer = name or tokenizer, AutoTokenizer.from_pretrained(tokenizer)
    label = name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return TokenCounter(
        functools.lru_cache(maxsize=1 << 16)(lambda s: len(tokenizer(s, add_special_tokens=False).input_ids)), label
    )


def token_counter_for(generator: Generator) -> TokenCounter:
    """The generator's own token count (its model's tokenizer; whitespace words for remote or scripted
    models), cached, since contexts repeat the same messages turn after turn."""
    return TokenCounter(functools.lru_cache(maxsize=1 << 16)(generator.count_tokens), generator.tokenizer_name)


def tiny_token_counter() -> TokenCounter:
    """The smoke profile's tiny model tokenizer (byte-level BPE, 1,024 ids, trained on LoCoMo turns)."""
    from memr1.llm.tiny import tiny_model_path

    return hf_token_counter(str(tiny_model_path()), name="memr1 tiny BPE (vocab 1024)")


def tasks_frame(tasks: Sequence[Task]) -> pd.DataFrame:
    """One row per objective: task, question, gold answers and gold passage ids."""
    return pd.DataFrame(
        [
            {
                "task": t.id,
                "k": k + 1,
                "question": o.question,
                "answers": " | ".join(o.answers),
                "gold_ids": ", ".join(o.gold_ids),
                "corpus": t.corpus_id,
            }
            for t in tasks
            for k, o in enumerate(t.objectives)
        ]
    )


def gold_max_turns(n_objectives: int, max_turns: int = -1) -> int:
    """Turn cap for the gold policy: the agent's cap (-1: ``turn_budget``) or enough for up to 3
    queries per objective, whichever is larger."""
    return max(resolve_turns(max_turns, n_objectives), 3 * n_objectives + 2)


def episodes_of(episodes: Sequence[Episode], task_id: str | None = None) -> list[Episode]:
    """The episodes (every mode and policy) of one task; default the first task seen."""
    if not episodes:
        return []
    task_id = task_id or episodes[0].task_id
    return [e for e in episodes if e.task_id == task_id]

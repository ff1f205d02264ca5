"""MEM1 measures, the scripted gold policy, and running tasks under several context modes.

Used by stage 06 (``memr1.stages.mem1``) and ``bench/bench_mem1.py``. Measures follow MEM1 (Zhou,
Qu et al., arXiv 2506.15841) and docs/design.md §mem1 measures. For turn t with context c_t tokens
and g_t generated tokens:

- **EM / F1**: summed over a task's objectives (counts from 0 to N, as MEM1's tables print them);
  ``em_strict`` zeroes a task whose answer count differs from N (MEM1's ``eval.py`` rule).
- **peak_tokens** = max_t c_t: the whole context, task prompt included.
- **peak_paper** = max_t (c_t - prompt + g_t): MEM1's counting (prompt excluded, the turn's own
  output included). The released code counts each internal state twice; we count it once.
- **dependency** = Σ_t Σ_{i<g_t} (c_t + i) = Σ_t g_t·c_t + g_t(g_t - 1)/2: every generated token
  attends to the context plus the tokens generated before it (prompt included here; MEM1 excludes it).
- **wall_s**: seconds per task (generation + retrieval).

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


def peak_paper(ep: Episode) -> int:
    """MEM1's peak: context without the task prompt, plus the turn's own output."""
    return max((t.context_tokens - t.prompt_tokens + t.generated_tokens for t in ep.turns), default=0)


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
        "peak_paper": peak_paper(ep),
        "dependency": dependency((t.context_tokens, t.generated_tokens) for t in ep.turns),
        "wall_s": ep.wall_s,
    }


MEANS = ("em", "f1", "em_strict", "peak_tokens", "peak_paper", "dependency", "turns", "wall_s")


def aggregate(episodes: Sequence[Episode]) -> pd.DataFrame:
    """Means per (policy, mode, N) over tasks, with the task count and the tokenizer."""
    if not episodes:
        raise ConfigError("aggregate needs at least one episode")
    df = pd.DataFrame([episode_metrics(e) for e in episodes])
    keys = ["policy", "mode", "n_objectives"]
    out = (
        df.groupby(keys, sort=False)
        .agg(tasks=("task_id", "size"), tokenizer=("tokenizer", "first"), **{m: (m, "mean") for m in MEANS})
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
        prev = parse_action(messages[-2]["content"]) if len(messages) >= 3 else Action("")
        info = messages[-1]["content"] if len(messages) >= 3 else ""
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
    max_turns: int = 6,
    count_tokens: Any = WHITESPACE,
    sampling: Sampling = DEFAULT_SAMPLING,
    retriever: str = "bm25",
    embedder: str = "hash",
    budget_tokens: int = 1024,
    stop_on_invalid: bool = True,
) -> list[Episode]:
    """Every task under every mode, with ``policy`` a generator or ``"gold"`` (``gold_policy`` per task)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ConfigError(f"unknown mode(s) {unknown}; choose from {MODES}")
    episodes: list[Episode] = []
    kw: dict[str, Any] = {"budget_tokens": budget_tokens, "stop_on_invalid": stop_on_invalid}
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
                tasks, policy, rets, mode, max_turns, sampling, count_tokens, score=score_answer, **kw
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


def gold_max_turns(n_objectives: int, max_turns: int) -> int:
    """Turn cap for the gold policy: ``max_turns`` or enough for up to 3 queries per objective."""
    return max(max_turns, 3 * n_objectives + 2)


def episodes_of(episodes: Sequence[Episode], task_id: str | None = None) -> list[Episode]:
    """The episodes (every mode and policy) of one task; default the first task seen."""
    if not episodes:
        return []
    task_id = task_id or episodes[0].task_id
    return [e for e in episodes if e.task_id == task_id]

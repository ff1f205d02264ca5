"""MEM1 measures, the scripted gold policy, and the helpers that stage 06 and the benchmark call.

Measures follow MEM1 (Zhou, Qu et al., arXiv 2506.15841; digest §5.1) and DESIGN §14. For turn t
with context c_t tokens and g_t generated tokens:

- **EM / F1**: summed over a task's objectives (counts from 0 to N, as MEM1's tables print them);
  ``em_strict`` zeroes a task whose answer count differs from N (MEM1's ``eval.py`` rule).
- **peak_tokens** = max_t c_t: the whole context, task prompt included (DESIGN §14).
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
import importlib
import importlib.util
import re
from typing import Any, Iterable, Sequence

import pandas as pd

from memr1.agents.mem1 import (ANSWER_SEPARATOR, DEFAULT_SAMPLING, MODES, WHITESPACE, Action, Episode,
                               TokenCounter, parse_action, run_batch, run_episode)
from memr1.data.retrieval import retriever_for
from memr1.data.tasks import Task
from memr1.errors import ConfigError
from memr1.llm.generate import Generator, Messages, Sampling, ScriptedGenerator

GOLD = "gold"
"""Pass as ``policy`` to ``run_episodes`` for the scripted gold policy."""


# --------------------------------------------------------------------------- measures

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
    return {"task_id": ep.task_id, "policy": ep.policy, "mode": ep.mode, "tokenizer": ep.tokenizer,
            "n_objectives": ep.n_objectives, "turns": len(ep.turns), "stop": ep.stop, "em": em, "f1": f1,
            "em_strict": em if ep.answer_count_ok else 0.0, "f1_strict": f1 if ep.answer_count_ok else 0.0,
            "peak_tokens": peak_tokens(ep), "peak_paper": peak_paper(ep),
            "dependency": dependency((t.context_tokens, t.generated_tokens) for t in ep.turns),
            "wall_s": ep.wall_s}


MEANS = ("em", "f1", "em_strict", "peak_tokens", "peak_paper", "dependency", "turns", "wall_s")


def aggregate(episodes: Sequence[Episode]) -> pd.DataFrame:
    """Means per (policy, mode, N) over tasks, with the task count and the tokenizer."""
    if not episodes:
        raise ConfigError("aggregate needs at least one episode")
    df = pd.DataFrame([episode_metrics(e) for e in episodes])
    keys = ["policy", "mode", "n_objectives"]
    out = df.groupby(keys, sort=False).agg(tasks=("task_id", "size"), tokenizer=("tokenizer", "first"),
                                           **{m: (m, "mean") for m in MEANS}).reset_index()
    return out.sort_values(["policy", "mode", "n_objectives"], kind="stable", ignore_index=True)


def peak_ratio(table: pd.DataFrame, mode: str, hi: int, lo: int, column: str = "peak_tokens",
               policy: str | None = None) -> float:
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
        body = ("\n".join(f"{i}. {a}" for i, a in enumerate(vals, 1)) if any(";" in a for a in vals)
                else ANSWER_SEPARATOR.join(vals))
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
            left = [q for q, j in options[pos + 1:] if j not in got]
            if len(got) < len(objs[k].gold_ids) and left:
                return render(answers, have, left[0])
            answers[k] = objs[k].answers[0] if len(got) == len(objs[k].gold_ids) else "unknown"
            have.pop(k)
            todo = todo[1:]
        return render(answers, have, candidates(todo[0])[0][0] if todo else None)

    return ScriptedGenerator(act, name=name)


# --------------------------------------------------------------------------- running

def run_episodes(tasks: Sequence[Task], policy: Generator | str, modes: Sequence[str] = ("mem1", "full"), *,
                 max_turns: int = 6, count_tokens: Any = WHITESPACE, sampling: Sampling = DEFAULT_SAMPLING,
                 retriever: str = "bm25", embedder: str = "hash", budget_tokens: int = 1024,
                 stop_on_invalid: bool = True) -> list[Episode]:
    """Every task under every mode, with ``policy`` a generator or ``"gold"`` (``gold_policy`` per task)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ConfigError(f"unknown mode(s) {unknown}; choose from {MODES}")
    episodes: list[Episode] = []
    kw = {"budget_tokens": budget_tokens, "stop_on_invalid": stop_on_invalid}
    for mode in modes:
        rets = [retriever_for(t.corpus, retriever, embedder) for t in tasks]
        if policy == GOLD:
            episodes += [run_episode(t, gold_policy(t), r, mode, max_turns, sampling, count_tokens, **kw)
                         for t, r in zip(tasks, rets)]
        else:  # one batched generate call per turn for all live tasks
            episodes += run_batch(tasks, policy, rets, mode, max_turns, sampling, count_tokens, **kw)
    return episodes


STAGE_MAX_NEW_TOKENS = {"smoke": 48, "cpu": 256, "paper": 1024}
"""Tokens per generated turn in stage 06, by profile (MEM1 allows 1024; the tiny model only needs a few)."""


def stage_sampling(cfg: Any) -> Sampling:
    """Greedy decoding with the profile's cap on tokens per turn."""
    return Sampling(max_new_tokens=STAGE_MAX_NEW_TOKENS.get(cfg.profile, 256))


def hf_token_counter(tokenizer: Any, name: str = "") -> TokenCounter:
    """Count with a transformers tokenizer (or a path or hub id to load one), no special tokens; cached,
    since contexts repeat the same messages turn after turn."""
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        name, tokenizer = name or tokenizer, AutoTokenizer.from_pretrained(tokenizer)
    label = name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return TokenCounter(functools.lru_cache(maxsize=1 << 16)(
        lambda s: len(tokenizer(s, add_special_tokens=False).input_ids)), label)


def token_counter_for(generator: Any) -> TokenCounter:
    """The tokenizer of a local model's generator, else whitespace words (remote or scripted models)."""
    policy = getattr(generator, "policy", None)
    tok = getattr(policy, "tokenizer", None)
    return hf_token_counter(tok, name=f"{policy.name} tokenizer") if tok is not None else WHITESPACE


def tiny_token_counter() -> TokenCounter:
    """The smoke profile's tiny model tokenizer (byte-level BPE, 1,024 ids, trained on LoCoMo turns)."""
    from memr1.llm.tiny import tiny_model_path

    return hf_token_counter(str(tiny_model_path()), name="memr1 tiny BPE (vocab 1024)")


def tasks_frame(tasks: Sequence[Task]) -> pd.DataFrame:
    """One row per objective: task, question, gold answers and gold passage ids."""
    return pd.DataFrame([{"task": t.id, "k": k + 1, "question": o.question, "answers": " | ".join(o.answers),
                          "gold_ids": ", ".join(o.gold_ids), "corpus": t.corpus_id}
                         for t in tasks for k, o in enumerate(t.objectives)])


def gold_max_turns(n_objectives: int, max_turns: int) -> int:
    """Turn cap for the gold policy: ``max_turns`` or enough for up to 3 queries per objective."""
    return max(max_turns, 3 * n_objectives + 2)


def episodes_of(episodes: Sequence[Episode], task_id: str | None = None) -> list[Episode]:
    """The episodes (every mode and policy) of one task; default the first task seen."""
    if not episodes:
        return []
    task_id = task_id or episodes[0].task_id
    return [e for e in episodes if e.task_id == task_id]


# --------------------------------------------------------------------------- stage 06 helpers

def stage_generator(cfg: Any) -> tuple[Generator, TokenCounter]:
    """The profile's (or the configured) model as a generator, and a counter using its tokenizer."""
    from memr1.config import get_profile
    from memr1.llm.backends import make_generator

    cfg = cfg.resolved()
    gen = make_generator(cfg.model, cfg.backend, fallback=get_profile(cfg.profile).fallback_model)
    return gen, token_counter_for(gen)


def maybe_train(cfg: Any, tasks: Sequence[Task] | None = None) -> Generator | None:
    """Train with ``memr1.rl.mem1_trainer.train_mem1`` when ``cfg.steps > 0`` and that module exists.

    Returns a generator over the trained model, or None (after printing why) when nothing was trained.
    The trainer gets a ``Mem1TrainConfig`` built from the fields both configs share, with
    ``run_dir/train`` as its folder, and these tasks.
    """
    if cfg.steps <= 0:
        print("Training is not run (steps = 0): the untrained model is evaluated.")
        return None
    try:
        found = importlib.util.find_spec("memr1.rl.mem1_trainer") is not None
    except ImportError:
        found = False
    from memr1 import config

    train_cls = getattr(config, "Mem1TrainConfig", None)
    trainer = importlib.import_module("memr1.rl.mem1_trainer") if found else None
    if trainer is None or train_cls is None or not hasattr(trainer, "train_mem1"):
        print("Training is not run: memr1.rl.mem1_trainer.train_mem1 or memr1.config.Mem1TrainConfig "
              "is not available in this installation.")
        return None
    import dataclasses
    from pathlib import Path

    names = {f.name for f in dataclasses.fields(train_cls)}
    params = {k: v for k, v in cfg.to_dict().items() if k in names and k != "run_dir"}
    result = trainer.train_mem1(train_cls.from_params({**params, "run_dir": str(Path(cfg.run_dir) / "train")}),
                                tasks=tasks)
    from memr1.llm.backends import TransformersGenerator
    from memr1.llm.load import Policy

    tok = result.tokenizer
    tok.padding_side = "left"
    return TransformersGenerator(Policy(result.model, tok, f"{cfg.resolved().model}+mem1-rl",
                                        str(result.run_dir), "transformers"))


def compare_with_memory_r1(cfg: Any, generator: Generator, count_tokens: Any = WHITESPACE, *,
                           system: str = "replay", conversation: str = "conv-26",
                           progress: bool = False) -> pd.DataFrame:
    """MEM1 and Memory-R1 on the same LoCoMo questions: EM, F1 (per question, 0 to 1) and peak tokens.

    Tasks: ``cfg.n_tasks`` tasks of ``cfg.n_objectives`` questions of ``conversation`` (default
    conv-26, the train split, which ``evaluate`` reaches with a small ``limit``), drawn from its
    first ``max_questions`` eligible questions of the profile (all when 0; on smoke only the first
    ``n_tasks * N``, so that few questions need a Memory-R1 answer). Rows: the MEM1 agent
    with ``generator`` (pruned context), the scripted gold policy (ceiling), and Memory-R1's
    pipeline (``memr1.eval.report.evaluate`` with ``system`` "replay" or "heuristic", all turns,
    the same generator as Answer Agent) restricted to those questions. Memory-R1's peak is its
    Answer Agent prompt (60 memories and one question), as the generator counts it (the model
    tokenizer with the chat template for local models); MEM1's peak holds all N questions.
    """
    from pathlib import Path

    from memr1.config import EvalConfig, get_profile
    from memr1.data.locomo import load_locomo
    from memr1.data.splits import PAPER_SPLIT, split_questions
    from memr1.eval.report import evaluate

    if system not in ("replay", "heuristic"):
        raise ConfigError(f"compare_with_memory_r1 runs system replay or heuristic, got {system!r}")
    cfg = cfg.resolved()
    n, prof = cfg.n_objectives, get_profile(cfg.profile)
    data = load_locomo(cfg.data_dir or None)
    pool = max(2 * n, cfg.n_tasks * n) if cfg.profile == "smoke" else prof.max_questions  # smoke: few to evaluate
    tasks = make_tasks_for_comparison(data, cfg, conversation, pool)
    split = next((s for s, ids in PAPER_SPLIT.items() if conversation in ids), "test")
    order = {q.qid: i for i, q in enumerate(split_questions(data, split))}
    qids = {o.qid for t in tasks for o in t.objectives}
    rows = []
    for label, policy, turns in ((f"MEM1 agent ({getattr(generator, 'name', '?')}, pruned)", generator, cfg.max_turns),
                                 ("MEM1 gold-scripted policy (ceiling)", GOLD, gold_max_turns(n, cfg.max_turns))):
        eps = run_episodes(tasks, policy, ("mem1",), max_turns=turns, count_tokens=count_tokens,
                           sampling=stage_sampling(cfg))
        per_q = pd.DataFrame([{"qid": o.qid, "em": e.em[k], "f1": e.f1[k]} for t, e in zip(tasks, eps)
                              for k, o in enumerate(t.objectives)]).groupby("qid").mean()
        peaks = [peak_tokens(e) for e in eps]
        rows.append({"system": label, "questions": len(per_q), "em": per_q.em.mean(), "f1": per_q.f1.mean(),
                     "peak_tokens_mean": sum(peaks) / len(peaks), "peak_tokens_max": max(peaks),
                     "tokens": getattr(count_tokens, "name", "custom")})
    ecfg = EvalConfig(profile=cfg.profile, data_dir=cfg.data_dir, system=system, model=cfg.model,
                      backend=cfg.backend, split=split, limit=1 + max(order[q] for q in qids), max_turns=0,
                      embedder="hash" if cfg.profile == "smoke" else "minilm",
                      max_new_tokens=min(128, stage_sampling(cfg).max_new_tokens),
                      run_dir=str(Path(cfg.run_dir) / "memory_r1"), seed=cfg.seed)
    rec = evaluate(ecfg, generator=generator, progress=progress).records
    rec = rec[rec.qid.isin(qids)]
    rows.append({"system": f"Memory-R1 pipeline ({system}, Answer Agent {getattr(generator, 'name', '?')})",
                 "questions": len(rec), "em": rec.em.mean(), "f1": rec.f1.mean(),
                 "peak_tokens_mean": float(rec.prompt_tokens.mean()), "peak_tokens_max": int(rec.prompt_tokens.max()),
                 "tokens": "generator prompt_tokens"})
    return pd.DataFrame(rows)


def make_tasks_for_comparison(data: Any, cfg: Any, conversation: str, pool: int) -> list[Task]:
    """The LoCoMo tasks of ``compare_with_memory_r1`` (the pool is at least twice N)."""
    from memr1.data.tasks import make_tasks

    pool = max(pool, 2 * cfg.n_objectives) if pool else 0
    return make_tasks(data, cfg.n_objectives, cfg.n_tasks, cfg.seed, conversation=conversation, pool=pool)


def stage_metrics(cfg: Any, table: pd.DataFrame, comparison: pd.DataFrame | None = None) -> dict[str, Any]:
    """What stage 06 writes to metrics.json: the per-mode table, peak ratios (when N varies) and the comparison."""
    records = table.astype(object).where(table.notna(), None).to_dict("records")
    out: dict[str, Any] = {"environment": cfg.environment, "n_objectives": cfg.n_objectives, "tasks": cfg.n_tasks,
                           "model": cfg.resolved().model, "tokenizer": table["tokenizer"].iloc[0], "table": records}
    if comparison is not None:
        out["memory_r1_comparison"] = comparison.astype(object).where(comparison.notna(), None).to_dict("records")
    return out

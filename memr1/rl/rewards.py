"""GRPO rewards for Memory-R1 (docs/design.md §rewards): exact match only, no format reward.

Both follow TRL's reward-function contract (checked in trl 1.14.2 ``GRPOTrainer._calculate_rewards``):
``f(prompts=..., completions=..., completion_ids=..., **columns, trainer_state=..., log_extra=...,
log_metric=...) -> list[float]``. Every dataset column except ``prompt`` arrives as a list with one
entry per completion; completions are strings for plain prompts and ``[{"role": "assistant",
"content": str}]`` for chat prompts. The trainer logs each function as ``rewards/<__name__>/mean``.

`answer_em_reward` scores the Answer Agent: EM of the text after ``**Answer:**`` against the gold.

`ManagerReward` scores the Memory Manager: the sampled operations are applied to a fork of the
speaker's snapshot bank; the *frozen* Answer Agent answers the turn's linked questions from
{speaker: fork, other speaker: its snapshot}; the reward is the mean EM over those questions, and 0
when the output was rejected (docs/design.md §operations). Snapshots are read-only checkouts, cached per
(store, sample_id, speaker, snapshot_turn), never changed.

Op log layout: one parquet file per reward call,
``<log_dir>/op_rewards/step-<step>-rank<RANK>-call<n>.parquet``, written to a temp name and renamed,
so a crash never leaves half a file, nothing is ever rewritten, and several processes never write the
same file; `read_op_log` concatenates them. One row per completion: ``step`` is the optimizer
step the completion trains (the trainer's ``global_step`` + 1, numbered like the training curves),
or the reward's own call counter when called outside TRL (then
``from_trainer`` is False, e.g. for a validation pass), ``call`` that counter.

>>> answer_em_reward(["**Answer:** Paris", [{"role": "assistant", "content": "**Answer:** Rome"}]],
...                  gold=["paris", "Paris"])
[1.0, 0.0]
"""

from __future__ import annotations

import json
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from memr1.agents.answer import ANSWER_MARKER, AnswerAgent, answer_prompts, extract_answer
from memr1.errors import ConfigError
from memr1.eval.metrics import exact_match, f1_mem0
from memr1.files import atomic_path
from memr1.llm.generate import Messages
from memr1.memory.apply import apply_manager_output
from memr1.memory.bank import MemoryBank
from memr1.memory.embed import Embedder
from memr1.memory.entry import OpKind, TurnContext
from memr1.memory.retrieve import K_PER_SPEAKER
from memr1.rl.datasets import open_teacher_bank, snapshot

OP_LOG_DIR = "op_rewards"
OP_KINDS = tuple(k.value.lower() for k in OpKind)
"""Operation kinds as the op log's ``n_<kind>`` columns name them: add, update, delete, noop."""
OP_LOG_COLUMNS = (
    "step",
    "call",
    "from_trainer",
    "sample_id",
    "speaker",
    "turn",
    "dia_id",
    "n_add",
    "n_update",
    "n_delete",
    "n_noop",
    "valid",
    "rejections",
    "n_questions",
    "reward",
)


def completion_text(completion: Any) -> str:
    """The text of one completion: a string as is, a chat completion's last message content.

    >>> completion_text([{"role": "assistant", "content": "hi"}]), completion_text(None)
    ('hi', '')
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence):
        return completion_text(completion[-1]) if len(completion) else ""
    return str(completion)


def _check_lengths(name: str, n: int, **columns: Sequence) -> None:
    bad = {k: len(v) for k, v in columns.items() if len(v) != n}
    if bad:
        raise ConfigError(f"{name}: got {n} completions but column lengths {bad}; TRL passes one entry per completion")


def answer_em_reward(completions: Sequence[Any], gold: Sequence[str], **kwargs: Any) -> list[float]:
    """Answer-Agent reward: 1.0 when the text after ``**Answer:**`` exactly matches the gold.

    Matching is `memr1.eval.metrics.exact_match` (lower-case, no punctuation or articles).
    """
    _check_lengths("answer_em_reward", len(completions), gold=gold)
    return [exact_match(extract_answer(completion_text(c)), g) for c, g in zip(completions, gold)]


def answer_f1_reward(completions: Sequence[Any], gold: Sequence[str], **kwargs: Any) -> list[float]:
    """Ablation of ``answer_em_reward``: set F1 (mem0 family, 0 to 1) of the answer span.

    Not the paper's reward (EM only, no partial credit); a named alternative for models too small to
    hit exact matches often enough for GRPO groups to differ (docs/design.md §Rewards).
    """
    _check_lengths("answer_f1_reward", len(completions), gold=gold)
    return [f1_mem0(extract_answer(completion_text(c)), g) for c, g in zip(completions, gold)]


FORMAT_BONUS = 0.2
"""What ``answer_f1_format_reward`` adds for an output that writes the ``**Answer:**`` line."""


def answer_f1_format_reward(completions: Sequence[Any], gold: Sequence[str], **kwargs: Any) -> list[float]:
    """Shaping, not the paper's reward: ``answer_f1_reward`` plus ``FORMAT_BONUS`` when the output writes
    the answer line (``**Answer:**``), which a 135M model omits in about half of its outputs
    (docs/results/answer_format.md); without the line the whole output is scored as the answer."""
    f1 = answer_f1_reward(completions, gold)
    return [f + FORMAT_BONUS * (ANSWER_MARKER in completion_text(c)) for f, c in zip(f1, completions)]


ANSWER_REWARDS = {"em": answer_em_reward, "f1": answer_f1_reward, "f1_format": answer_f1_format_reward}
"""Answer-Agent rewards by name; ``em`` is Memory-R1's, ``f1`` an ablation, ``f1_format`` F1 plus format shaping."""
ANSWER_SCORES = {"em": exact_match, "f1": f1_mem0}
"""How the Memory-Manager reward scores each frozen-agent answer, by the same names."""


def _as_id_map(raw: Any) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    try:
        parsed = json.loads(raw)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        raise ConfigError(
            f"id_map must be a JSON object of small id → real id (as manager_rows writes it), got {str(raw)[:80]!r}"
        )
    return {str(k): str(v) for k, v in parsed.items()}


class ManagerReward:
    """Memory-Manager reward: mean EM (or F1) of a frozen Answer Agent over the turn's linked questions.

    Args:
        answer_agent: the frozen Answer Agent (its generator and sampling are used; retrieval
            here takes ``k_per_speaker`` per speaker).
        embedder: the embedder the teacher stores were written with (also embeds questions).
        log_dir: where the op log goes (`read_op_log`); None keeps it in memory only (`log`).
        k_per_speaker: memories per speaker shown to the Answer Agent (Memory-R1: 30).
        cache_size: snapshot banks kept in memory (least recently used dropped first).
        score: ``em`` (Memory-R1) or ``f1`` (the ablation for small models) of each answer
            (`ANSWER_SCORES`); TRL logs the reward as ``manager_<score>``.
    """

    def __init__(
        self,
        answer_agent: AnswerAgent,
        embedder: Embedder,
        *,
        log_dir: str | Path | None = None,
        k_per_speaker: int = K_PER_SPEAKER,
        cache_size: int = 1024,
        score: str = "em",
    ):
        if k_per_speaker < 1 or cache_size < 1:
            raise ConfigError(
                f"ManagerReward needs k_per_speaker >= 1 and cache_size >= 1, got {k_per_speaker} and {cache_size}"
            )
        if score not in ANSWER_SCORES:
            raise ConfigError(f"ManagerReward score must be one of {', '.join(ANSWER_SCORES)}, got {score!r}")
        self.score, self.__name__ = ANSWER_SCORES[score], f"manager_{score}"
        self.answer_agent, self.embedder = answer_agent, embedder
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.k_per_speaker, self.cache_size = k_per_speaker, cache_size
        self.log: list[dict] = []
        """Every logged row since construction (one per scored completion)."""
        self.generate_calls = 0
        """How many times the frozen agent's generator was called."""
        self._calls = 0
        self._stores: dict[tuple[str, str, str], MemoryBank] = {}
        self._snapshots: OrderedDict[tuple[str, str, str, int], MemoryBank] = OrderedDict()

    def snapshot(self, store: str, sample_id: str, speaker: str, turn: int) -> MemoryBank:
        """The speaker's teacher bank right after ``turn`` (-1: empty), cached; never change it."""
        key = (str(store), sample_id, speaker, int(turn))
        bank = self._snapshots.get(key)
        if bank is None:
            opened = self._stores.get(key[:3])
            if opened is None:
                opened = self._stores[key[:3]] = open_teacher_bank(store, sample_id, speaker, self.embedder)
            bank = self._snapshots[key] = snapshot(opened, int(turn))
            while len(self._snapshots) > self.cache_size:
                self._snapshots.popitem(last=False)
        self._snapshots.move_to_end(key)
        return bank

    def __call__(
        self,
        completions: Sequence[Any],
        store: Sequence[str],
        sample_id: Sequence[str],
        speaker: Sequence[str],
        snapshot_turn: Sequence[int],
        id_map: Sequence[str],
        questions: Sequence[Sequence[str]],
        answers: Sequence[Sequence[str]],
        turn: Sequence[int],
        dia_id: Sequence[str],
        **kwargs: Any,
    ) -> list[float]:
        """Score each completion (see the class docstring); columns come from `manager_rows`.

        Also reads the ``speakers`` and ``session_time`` columns from ``kwargs`` and TRL's
        ``trainer_state`` and ``log_metric``.

        Raises:
            ConfigError: a column is missing or has the wrong length, or the frozen agent's
                generator returned the wrong number of completions.
        """
        n = len(completions)
        speakers = kwargs.get("speakers")
        if speakers is None:
            raise ConfigError(
                "ManagerReward needs the 'speakers' column of manager_rows (both speakers of each row's conversation)"
            )
        session_time = kwargs.get("session_time") or [""] * n
        _check_lengths(
            "ManagerReward",
            n,
            store=store,
            sample_id=sample_id,
            speaker=speaker,
            snapshot_turn=snapshot_turn,
            id_map=id_map,
            questions=questions,
            answers=answers,
            turn=turn,
            dia_id=dia_id,
            speakers=speakers,
            session_time=session_time,
        )
        state = kwargs.get("trainer_state")
        # +1: completions sampled while global_step is k train optimizer step k + 1, which is how the
        # training curves number it (TRL logs after the step), so both views count steps alike
        step = int(getattr(state, "global_step", self._calls)) + 1 if state is not None else self._calls
        rows: list[dict[str, Any]] = []
        jobs = []  # (completion index, question, gold, banks in speaker order)
        for i in range(n):
            own = self.snapshot(store[i], sample_id[i], speaker[i], snapshot_turn[i])
            fork = own.fork()
            ctx = TurnContext(int(turn[i]), str(dia_id[i]), str(session_time[i] or ""))
            result, applied = apply_manager_output(fork, completion_text(completions[i]), _as_id_map(id_map[i]), ctx)
            counts = result.counts_by_kind() if applied is not None else dict.fromkeys(OpKind, 0)
            rejected = ",".join(f"{k}:{v}" for k, v in sorted(result.rejections.items()))
            rows.append(
                {
                    "step": step,
                    "call": self._calls,
                    "from_trainer": state is not None,
                    "sample_id": str(sample_id[i]),
                    "speaker": str(speaker[i]),
                    "turn": int(turn[i]),
                    "dia_id": str(dia_id[i]),
                    **{f"n_{k.value.lower()}": counts[k] for k in OpKind},
                    "valid": applied is not None,
                    "rejections": rejected,
                    "n_questions": len(questions[i]),
                    "reward": 0.0,
                }
            )
            if applied is None:
                continue
            banks = {
                sp: fork if sp == speaker[i] else self.snapshot(store[i], sample_id[i], sp, snapshot_turn[i])
                for sp in speakers[i]
            }
            jobs += [(i, q, g, banks) for q, g in zip(questions[i], answers[i])]
        texts = self._answer([(q, banks) for _, q, _, banks in jobs])
        scores: dict[int, list[float]] = {}
        for (i, _, gold, _), text in zip(jobs, texts):
            scores.setdefault(i, []).append(self.score(extract_answer(text), gold))
        for i, got in scores.items():
            rows[i]["reward"] = sum(got) / len(got)
        self._record(rows, kwargs.get("log_metric"))
        return [row["reward"] for row in rows]

    def _answer(self, asks: Sequence[tuple[str, Mapping[str, MemoryBank]]]) -> list[str]:
        """The frozen agent's raw output for each (question, banks), in one ``generate`` call.

        Under greedy decoding identical prompts (e.g. from completions that all did nothing) are
        generated once.
        """
        if not asks:
            return []
        prompts = [messages for messages, _ in answer_prompts(asks, self.k_per_speaker, self.answer_agent.style)]
        agent = self.answer_agent
        greedy = agent.sampling.temperature == 0
        keys = [json.dumps(p, sort_keys=True) if greedy else str(i) for i, p in enumerate(prompts)]
        unique: dict[str, Messages] = {}
        for key, prompt in zip(keys, prompts):
            unique.setdefault(key, prompt)
        gens = agent.generator.generate(list(unique.values()), agent.sampling)
        self.generate_calls += 1
        if len(gens) != len(unique):
            raise ConfigError(
                f"the frozen answer agent's generator returned {len(gens)} completions "
                f"for {len(unique)} prompts; it must return one per prompt"
            )
        by_key = {key: gen.text for key, gen in zip(unique, gens)}
        return [by_key[key] for key in keys]

    def _record(self, rows: list[dict], log_metric: Callable[[str, float], None] | None) -> None:
        """Keep the rows, write this call's parquet part, and report op fractions to TRL."""
        self._calls += 1
        self.log.extend(rows)
        if self.log_dir is not None and rows:
            rank = os.environ.get("RANK", "0")
            name = f"step-{rows[0]['step']:06d}-rank{rank}-call{rows[0]['call']:05d}.parquet"
            _write_parquet_atomic(pd.DataFrame(rows, columns=list(OP_LOG_COLUMNS)), self.log_dir / OP_LOG_DIR / name)
        if callable(log_metric) and rows:
            for name, value in op_fractions(rows).items():
                log_metric(name, value)


def op_fractions(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``ops/<kind>_frac`` over the valid outputs' operations and ``ops/rejected_frac`` over outputs.

    >>> fr = op_fractions([{"n_add": 3, "n_update": 1, "n_delete": 0, "n_noop": 0, "valid": True},
    ...                    {"n_add": 0, "n_update": 0, "n_delete": 0, "n_noop": 0, "valid": False}])
    >>> fr["ops/add_frac"], fr["ops/update_frac"], fr["ops/noop_frac"], fr["ops/rejected_frac"]
    (0.75, 0.25, 0.0, 0.5)
    """
    totals: Counter[str] = Counter()
    for row in rows:
        for kind in OP_KINDS:
            totals[kind] += int(row[f"n_{kind}"])
    n_ops = sum(totals.values())
    out = {f"ops/{k}_frac": (totals[k] / n_ops if n_ops else 0.0) for k in OP_KINDS}
    out["ops/rejected_frac"] = sum(not row["valid"] for row in rows) / len(rows) if rows else 0.0
    return out


def op_mix(log: pd.DataFrame, *, split: float = 0.25) -> list[dict[str, Any]]:
    """Share of each operation kind (and of rejected outputs) in the first and the last ``split`` of
    the training steps of an op log (`read_op_log`); validation rows are left out.

    One record per phase: ``phase`` ("first steps (1–2)"), the ``OP_KINDS`` shares, ``rejected``
    and ``completions``; no records when the log has no training rows. Stage 04 keeps these in its
    metrics.json; the op-reward widget draws them.
    """
    train = log[log["from_trainer"].astype(bool)] if "from_trainer" in log else log
    steps = sorted(train["step"].unique())
    if not steps:
        return []
    cut = max(1, int(len(steps) * split))
    out = []
    for phase, chosen in (("first steps", steps[:cut]), ("last steps", steps[-cut:])):
        part = train[train["step"].isin(chosen)]
        fractions = op_fractions(part.to_dict("records"))
        out.append(
            {
                "phase": f"{phase} ({chosen[0]}–{chosen[-1]})",
                **{k: fractions[f"ops/{k}_frac"] for k in OP_KINDS},
                "rejected": fractions["ops/rejected_frac"],
                "completions": len(part),
            }
        )
    return out


def _write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def read_op_log(log_dir: str | Path) -> pd.DataFrame:
    """All op-log rows `ManagerReward` wrote under ``log_dir``, ordered by step, then call.

    Returns an empty frame with the log's columns when nothing was written yet.
    """
    parts = sorted((Path(log_dir) / OP_LOG_DIR).glob("step-*.parquet"))
    if not parts:
        return pd.DataFrame(columns=list(OP_LOG_COLUMNS))
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return frame.sort_values(["step", "call"], kind="stable").reset_index(drop=True)

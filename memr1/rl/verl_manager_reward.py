"""The Memory-Manager reward for verl: memr1's `ManagerReward` behind verl's ``compute_score`` contract.

`memr1 export-verl --task manager` writes ``reward_manager.py``, which imports `compute_score` from
here; verl's workers therefore need memr1 and the few packages this path uses (LanceDB for the teacher
banks, the embedder, transformers or an HTTP client for the frozen agent), installed into verl's
environment without memr1's own pins: ``make verl-env`` does it. Nothing here imports verl.

Per response, exactly what memr1's own manager training does (`memr1.rl.rewards.ManagerReward`): the
row's ``extra_info`` (the `memr1.rl.datasets.manager_rows` columns) names the teacher store, the speaker
and the turn; the response's operations are applied to a fork of that speaker's teacher bank as of the
turn before; a frozen Answer Agent answers the questions linked to the turn from {fork, the other
speaker's bank}; the score is their mean EM (``score="f1"``: F1), and 0 for a rejected output. The
result is a dict: ``score`` plus ``valid`` and the operation counts, which verl logs beside the reward.

The frozen agent is built once per process from the config's ``reward_kwargs`` (`frozen_reward`): a
hub id or local folder, optionally with a LoRA adapter or a stage 03 run folder (``answer_adapter``),
on the ``transformers`` backend in the reward worker, or ``openai`` for a served model (e.g. vLLM
serving the trained answer agent, with ``base_url``). verl's reward manager calls ``compute_score``
from a thread pool; a lock serialises the calls, since the snapshot cache and a local generator are
not thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from memr1.errors import ConfigError
from memr1.rl import verl_reward
from memr1.rl.rewards import OP_KINDS, ManagerReward

COLUMNS = (
    "store",
    "sample_id",
    "speaker",
    "speakers",
    "snapshot_turn",
    "id_map",
    "questions",
    "answers",
    "turn",
    "dia_id",
    "session_time",
)
"""The ``extra_info`` fields the reward reads (all written by ``export-verl --task manager``)."""

REWARD_KWARGS = (
    "answer_model",
    "answer_adapter",
    "backend",
    "base_url",
    "embedder",
    "score",
    "k_per_speaker",
    "answer_tokens",
    "answer_style",
)
"""The ``reward_kwargs`` a manager config may set: the arguments of `frozen_reward`."""
VERL_KWARGS = ("reward_router_address", "reward_model_tokenizer")
"""Keywords verl's reward manager adds when a reward model is served; ignored here."""

_LOCK = threading.RLock()
_REWARDS: dict[tuple, ManagerReward] = {}


def frozen_reward(
    answer_model: str,
    *,
    answer_adapter: str = "",
    backend: str = "transformers",
    base_url: str = "",
    embedder: str = "minilm",
    score: str = "em",
    k_per_speaker: int = 30,
    answer_tokens: int = 128,
    answer_style: str = "distill",
) -> ManagerReward:
    """The `ManagerReward` for these settings, built on first use and kept for the process.

    Args:
        answer_model: the frozen Answer Agent's base model (hub id, local folder or a memr1 model name).
        answer_adapter: "" for the base model, or a LoRA adapter folder / answer-agent run folder.
        backend: ``transformers`` (loaded in the reward worker) or ``openai`` (a served model).
        base_url: the server for ``openai``.
        embedder: the embedder the teacher stores were written with (``minilm`` or ``hash``).
        score: ``em`` (Memory-R1) or ``f1`` per answered question.
        k_per_speaker: memories per speaker shown to the frozen agent (Memory-R1: 30).
        answer_tokens: token cap of each frozen-agent answer.
        answer_style: the frozen agent's prompt style (``distill`` or ``direct``).
    """
    key = (answer_model, answer_adapter, backend, base_url, embedder, score, k_per_speaker, answer_tokens, answer_style)
    with _LOCK:
        if key not in _REWARDS:
            from memr1.agents.answer import AnswerAgent
            from memr1.llm.backends import make_generator
            from memr1.llm.generate import Sampling
            from memr1.memory.embed import make_embedder
            from memr1.rl.grpo import resolve_adapter

            if not answer_model:
                raise ConfigError("the manager reward needs answer_model (reward_kwargs): the frozen Answer Agent")
            base, lora = resolve_adapter(answer_adapter, answer_model)
            generator = make_generator(base, backend, base_url=base_url, lora_path=lora)
            agent = AnswerAgent(
                generator, Sampling(max_new_tokens=answer_tokens), k_per_speaker=k_per_speaker, style=answer_style
            )
            _REWARDS[key] = ManagerReward(agent, make_embedder(embedder), k_per_speaker=k_per_speaker, score=score)
        return _REWARDS[key]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **reward_kwargs: Any,
) -> dict[str, float] | float:
    """verl's custom reward entry point; rows of other memr1 tasks go to the standard-library rewards.

    Raises:
        ConfigError: a manager row whose ``extra_info`` lacks a `COLUMNS` field.
    """
    if data_source != verl_reward.MANAGER_SOURCE:
        return verl_reward.compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)
    info = dict(extra_info or {})
    missing = [c for c in COLUMNS if c not in info]
    if missing:
        raise ConfigError(f"manager row without {missing} in extra_info; re-export it with `memr1 export-verl`")
    unknown = set(reward_kwargs) - set(REWARD_KWARGS) - set(VERL_KWARGS)
    if unknown:
        raise ConfigError(f"unknown manager reward_kwargs {sorted(unknown)}; known: {list(REWARD_KWARGS)}")
    settings = {k: v for k, v in reward_kwargs.items() if k in REWARD_KWARGS}
    with _LOCK:
        reward = frozen_reward(**settings)
        (value,) = reward([solution_str], **{c: [_plain(info[c])] for c in COLUMNS})
        row = reward.log.pop()  # the reward's in-memory log would grow for the whole run
    return {"score": value, "valid": float(row["valid"]), **{f"n_{k}": float(row[f"n_{k}"]) for k in OP_KINDS}}


def _plain(value: Any) -> Any:
    """Arrays (verl may hand nested lists over as numpy arrays) as Python lists."""
    return value.tolist() if hasattr(value, "tolist") else value

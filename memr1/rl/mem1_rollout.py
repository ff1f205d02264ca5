"""MEM1 rollouts: grouped multi-turn episodes sampled token by token, and the reward of each episode.

* ``TokenSampler`` / ``rollout_groups``: ``group_size`` episodes of every task of a step, all
  advancing together through the agent's own loop (``memr1.agents.mem1.run_batch``: one batched
  model call per turn for all of them; evaluation runs the same loop with a ``Generator``). The
  sampler is the training side of ``memr1.agents.mem1.TurnPolicy``: it tokenises each pruned
  context with the chat template and samples every row together (left padding, a KV cache, the
  plain softmax at ``temperature``: no top-k, top-p or repetition penalty, so the behaviour policy
  is exactly what the loss scores), stops a row at an end-of-turn token or once its text holds
  ``</query>`` / ``</answer>``, and keeps prompt ids, sampled ids and their log-probs: nothing is
  decoded and re-tokenised. It writes its own loop rather than calling ``generate``, whose
  ``output_scores`` would hold steps × batch × vocabulary floats (gigabytes at a 150k vocabulary).
* ``episode_reward`` (``REWARDS``): objectives answered correctly (``em``: exact match by position,
  MEM1's), or the sum of their F1 (``f1``: a denser signal for a small model that rarely matches
  exactly); ``em_format`` / ``f1_format`` add a named format-validity shaping term
  (``format_score`` × ``FORMAT_BONUS``). MEM1 has no format reward in its training code and its paper
  reports that a −1 penalty with early stop on a tag error converged faster but cut 2-objective EM
  (docs/design.md §Rewards); the shaping exists because SmolLM2-135M scored 0 under EM and F1 in
  nearly every rollout (docs/results/mem1_horizon.md), which leaves no group a signal to learn from
  (``experiments/mem1_signal.py`` measures how often a group has one under each reward).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memr1.agents.mem1 import STOP_STRINGS, Episode, StepOutput
from memr1.errors import ConfigError
from memr1.rl.sampling import encode_messages, ends_with_stop, eos_ids, sample_batch

if TYPE_CHECKING:
    from memr1.rl.packing import Trajectory

REWARDS = ("em", "f1", "em_format", "f1_format")
FORMAT_BONUS = 0.2
"""What ``em_format`` / ``f1_format`` add for a fully well-formed episode (one correct objective is 1)."""


def format_score(episode: Episode) -> float:
    """How well an episode follows MEM1's protocol, from 0 to 1.

    Half for the share of its turns that wrote an internal state and a readable ``<query>`` or
    ``<answer>`` (``memr1.agents.mem1.parse_action``; an invalid turn ends the episode, as in MEM1,
    so it also cuts the share), half for ending with an ``<answer>`` that holds N answers (MEM1's
    evaluation rule, ``Episode.answer_count_ok``). An episode with no turn scores 0.
    """
    if not episode.turns:
        return 0.0
    valid = sum(t.ok and bool(t.state) for t in episode.turns) / len(episode.turns)
    answered = episode.stop == "answer" and episode.answer_count_ok
    return 0.5 * valid + 0.5 * float(answered)


def episode_reward(episode: Episode, reward: str) -> float:
    """The training reward of one scored episode under ``reward`` (one of ``REWARDS``)."""
    if reward not in REWARDS:
        raise ConfigError(f"reward must be one of {REWARDS}, got {reward!r}")
    score = float(sum(episode.em if reward.startswith("em") else episode.f1))
    return score + (FORMAT_BONUS * format_score(episode) if reward.endswith("_format") else 0.0)


class TokenSampler:
    """The training ``TurnPolicy``: batched sampling that keeps prompt ids, sampled ids and log-probs.

    Args:
        model, tokenizer: the policy being trained (switched to eval mode while sampling).
        max_new_tokens: cap per turn.
        temperature: sampling temperature (> 0); the loss scores at the same temperature.
        seed: seeds the sampler's own ``torch.Generator``: the same seed and batch give the same
            samples, and the global RNG is left alone.
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, max_new_tokens: int, temperature: float, seed: int, name: str = ""
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.context_window: int | None = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        import torch

        self.name = name or getattr(getattr(model, "config", None), "name_or_path", "") or "policy"
        self.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)

    def step(self, contexts: Sequence[Sequence[dict[str, str]]]) -> list[StepOutput]:
        start = time.perf_counter()
        prompts = [encode_messages(self.tokenizer, m) for m in contexts]
        was_training = self.model.training
        self.model.eval()
        try:
            comps, lps = sample_batch(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                generator=self.generator,
                stop_strings=STOP_STRINGS,
            )
        finally:
            self.model.train(was_training)
        each = (time.perf_counter() - start) / max(1, len(prompts))
        stops = eos_ids(self.model, self.tokenizer)
        return [
            StepOutput(
                self.tokenizer.decode(c, skip_special_tokens=True),
                each,
                "stop" if c[-1] in stops or ends_with_stop(self.tokenizer, c, STOP_STRINGS) else "length",
                tuple(p),
                tuple(c),
                tuple(lp),
            )
            for p, c, lp in zip(prompts, comps, lps)
        ]


def rollout_groups(
    tasks: Sequence[Any],
    policy: Any,
    tokenizer: Any,
    retriever: Any = None,
    *,
    group_size: int,
    max_turns: int,
    temperature: float,
    seed: int,
    max_new_tokens: int = 128,
    k: int = 3,
    reward: str = "em",
    prompt_style: str = "plain",
) -> list[list[Trajectory]]:
    """``group_size`` MEM1 episodes of every task, all advancing together; one group per task.

    The episodes are ``memr1.agents.mem1.run_batch`` in "mem1" mode with a ``TokenSampler``
    (seeded with ``seed``); a query goes to ``retriever.search(query, k)`` (None: BM25 over each
    task's corpus). ``max_turns`` -1 follows MEM1's turn budget for the task's N. A trajectory's
    reward is ``episode_reward`` under ``reward``; its ``info`` holds the ``Episode`` and its ``format_score``.
    """
    from memr1.agents.mem1 import run_batch
    from memr1.eval.mem1_metrics import score_answer
    from memr1.rl.packing import Trajectory, TrajectoryTurn

    if reward not in REWARDS:
        raise ConfigError(f"reward must be one of {REWARDS}, got {reward!r}")
    if group_size < 1 or not tasks:
        raise ConfigError(f"rollout_groups needs tasks and group_size >= 1, got {len(tasks)} tasks, {group_size}")
    sampler = TokenSampler(policy, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    members = [t for t in tasks for _ in range(group_size)]
    episodes = run_batch(
        members,
        sampler,
        [retriever] * len(members),
        "mem1",
        max_turns,
        score=score_answer,
        k=k,
        prompt_style=prompt_style,
    )
    groups: list[list[Trajectory]] = []
    for g in range(len(tasks)):
        group = []
        for member, ep in enumerate(episodes[g * group_size : (g + 1) * group_size]):
            turns = [TrajectoryTurn(t.prompt_ids, t.completion_ids) for t in ep.turns]
            info = {
                "member": member,
                "answers": ep.answers,
                "stop": ep.stop,
                "format": format_score(ep),
                "logprobs": [t.logprobs for t in ep.turns],
                "episode": ep,  # scored under any other reward by episode_reward (experiments/mem1_signal.py)
            }
            group.append(Trajectory(turns, episode_reward(ep, reward), info))
        groups.append(group)
    return groups

"""Stage 06: horizon generalisation of the MEM1 agent (pruned internal state) against the full context.

MEM1 (Zhou, Qu et al., arXiv 2506.15841; docs/design.md §MEM1 agent) trains on 2-objective tasks
and is scored on 1- to 16-objective tasks it never saw. Here: optional training (``steps > 0``) on
tasks of ``n_objectives`` questions drawn from the *train* pool only; evaluation on tasks of every N
in ``eval_objectives`` drawn from the *test* pool only (``memr1.data.tasks``, ``split``), under MEM1
pruning and with the full context, for the untrained model, the trained one, and a scripted policy
that reads the gold passages (the ceiling, and the context sizes a working agent would have). The
model then answers LoCoMo test questions as a MEM1 agent and inside the Memory-R1 pipeline
(stage 05). ``memr1 train mem1`` runs the training alone (``train``).

>>> Mem1Config.from_params({"n_objectives": "4"}).resolved().model
'tiny'
>>> Mem1Config().objectives()
[1, 2, 4, 8, 16]
>>> Mem1TrainConfig.from_params({"learning_rate": "2e-5", "lora_r": "8"}).learning_rate
2e-05
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from memr1.agents.mem1 import PROMPT_STYLES
from memr1.config import RunConfig, check_choice, check_min, get_profile, profile_value
from memr1.errors import ConfigError
from memr1.rl.mem1_trainer import ALGORITHMS, REWARDS, Mem1TrainSettings
from memr1.runs import StageResult, save_result, transient

ENVIRONMENTS = ("hotpotqa", "locomo")
MAX_NEW_TOKENS = {"smoke": 48, "cpu": 256, "paper": 1024}
"""Tokens per generated turn, by profile (MEM1 allows 1024; the tiny model only needs a few)."""
MODES = ("mem1", "full")


def parse_objectives(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]: distinct N from 1 to 16, in the order given."""
    try:
        values = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise ConfigError(f"eval_objectives must be comma-separated integers like 1,2,4,8,16, got {text!r}") from None
    if not values or any(not 1 <= v <= 16 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"eval_objectives must list distinct N from 1 to 16, got {text!r}")
    return values


@dataclass
class Mem1Config(RunConfig):
    """Stage 06: MEM1 trained on short tasks, scored on held-out tasks of 1 to 16 objectives."""

    STAGE: ClassVar[str] = "06_mem1"

    environment: str = "hotpotqa"
    """Task source: hotpotqa (sample paragraphs as corpus) or locomo (one conversation, turns as corpus)."""
    n_objectives: int = 2
    """Questions per training task, 1 to 16 (MEM1 trains on 2); also N of the Memory-R1 comparison."""
    eval_objectives: str = "1,2,4,8,16"
    """N of the held-out evaluation tasks, comma-separated (MEM1 tests 1 to 16 objectives)."""
    n_tasks: int = 4
    """Held-out tasks per N, each run in every mode."""
    model: str = ""
    """Policy model: tiny, a hub id or a local folder; "" uses the model of the profile."""
    backend: str = ""
    """auto, transformers or unsloth; "" uses the backend of the profile."""
    steps: int = 0
    """MEM1 training steps on train-pool tasks (memr1.rl.mem1_trainer, in run_dir/train) before evaluation; 0: none."""
    max_turns: int = -1
    """Turn cap per episode; -1 follows the rule of MEM1 (memr1.agents.mem1.turn_budget: 6 up to 4 objectives,
    20 beyond)."""
    max_new_tokens: int = -1
    """Tokens per generated turn, training and evaluation; -1: the cap of the profile (smoke 48, cpu 256,
    paper 1024)."""
    memory_r1_k: int = 30
    """Memories per speaker the Memory-R1 side of the comparison retrieves (Memory-R1: 30)."""
    prompt_style: str = "plain"
    """plain (the instructions of MEM1) or examples (a worked episode first), in training and evaluation."""
    reward: str = "em"
    """Training reward: em (objectives answered exactly, as MEM1), f1 (the sum of their F1 scores), or em_format /
    f1_format (plus a format-validity shaping term of at most 0.2)."""
    algorithm: str = "grpo"
    """Training algorithm: grpo (group-normalised rewards, no critic) or ppo (MEM1's: value head, GAE, clipped updates,
    at the PPO defaults of memr1 train mem1)."""

    def check(self) -> None:
        name = type(self).__name__
        if self.environment not in ENVIRONMENTS:
            raise ConfigError(f"{name}.environment must be hotpotqa or locomo, got {self.environment!r}")
        if self.backend not in ("", "auto", "transformers", "unsloth"):
            raise ConfigError(
                f"{name}.backend must be one of auto, transformers, unsloth or empty, got {self.backend!r}"
            )
        if not 1 <= self.n_objectives <= 16:
            raise ConfigError(f"{name}.n_objectives must be from 1 to 16, got {self.n_objectives}")
        self.objectives()
        check_min(self, 1, "memory_r1_k")
        check_choice(self, "algorithm", ALGORITHMS)
        if self.prompt_style not in PROMPT_STYLES or self.reward not in REWARDS:
            raise ConfigError(
                f"{name}: prompt_style must be one of {PROMPT_STYLES} and reward one of {REWARDS}, "
                f"got {self.prompt_style!r}, {self.reward!r}"
            )
        if self.n_tasks < 1 or self.steps < 0:
            raise ConfigError(f"{name}: n_tasks must be >= 1 and steps >= 0, got {self.n_tasks}, {self.steps}")
        for key in ("max_turns", "max_new_tokens"):
            if getattr(self, key) < 1 and getattr(self, key) != -1:
                raise ConfigError(f"{name}.{key} must be >= 1, or -1 for the default, got {getattr(self, key)}")

    def objectives(self) -> list[int]:
        """``eval_objectives`` as a list of N."""
        return parse_objectives(self.eval_objectives)

    def resolved(self) -> Mem1Config:
        """A validated copy with the profile's model, backend and token cap filled in."""
        p = get_profile(self.profile)
        return self.replace(
            model=profile_value(self.model, p.policy_model, unset=""),
            backend=profile_value(self.backend, p.backend, unset=""),
            max_new_tokens=profile_value(self.max_new_tokens, MAX_NEW_TOKENS.get(self.profile, 256), unset=-1),
        )


@dataclass
class Mem1Result(StageResult):
    """Held-out scores and context sizes per N: untrained and trained model, gold policy; Memory-R1 beside."""

    SCHEMA: ClassVar[int] = 2  # 2: held-out evaluation at several N, both countings

    environment: str
    n_objectives: int
    """N of the training tasks (and of the Memory-R1 comparison)."""
    eval_objectives: list[int]
    """N of the held-out evaluation tasks."""
    tasks: int
    """Held-out tasks per N, run in every mode."""
    model: str
    """The resolved policy model."""
    trained_steps: int
    """MEM1 training steps before evaluation (0: only the untrained model is evaluated)."""
    tokenizer: str
    """What every token count counts with (the model's tokenizer; whitespace words for remote models)."""
    turn_budgets: dict[str, int]
    """Turns each N got (N as text)."""
    table: list[dict[str, Any]]
    """``memr1.eval.mem1_metrics.aggregate`` rows: means per (policy, mode, N) over held-out tasks."""
    memory_r1_comparison: list[dict[str, Any]] | None
    """MEM1 agent, gold policy and Memory-R1 on the same LoCoMo test questions (None when not run)."""
    task_list: Any = transient()
    """The held-out ``Task`` objects that were run, every N."""
    model_episodes: Any = transient()
    """The model's ``Episode`` objects (untrained, then trained), every task under both context modes."""
    gold_episodes: Any = transient()
    """The gold policy's ``Episode`` objects."""
    table_frame: Any = transient()
    """``table`` as the DataFrame ``aggregate`` returned."""
    comparison_frame: Any = transient()
    """``memory_r1_comparison`` as a DataFrame."""


def run(cfg: Mem1Config, *, generator: Any = None) -> Mem1Result:
    """Optionally train on train-pool tasks, score every N of held-out tasks in both context modes,
    run the Memory-R1 comparison; write metrics.json.

    ``generator``: evaluate this instead of the configured model (tests, scripted policies); training,
    when ``steps > 0``, still starts from ``cfg.model``.
    """
    from memr1.agents.mem1 import resolve_turns
    from memr1.data.tasks import make_tasks
    from memr1.eval.mem1_metrics import GOLD, aggregate, gold_max_turns, run_episodes, token_counter_for
    from memr1.seeding import seed_everything

    cfg = cfg.resolved()
    seed_everything(cfg.seed)
    ns = cfg.objectives()
    data_dir = cfg.data_dir or None
    by_n = {n: make_tasks(cfg.environment, n, cfg.n_tasks, cfg.seed, data_dir=data_dir, split="test") for n in ns}
    tasks = [t for n in ns for t in by_n[n]]
    base = generator or stage_generator(cfg)
    counter = token_counter_for(base)
    policies = [base]
    if cfg.steps > 0:
        policies.append(trained_generator(cfg))
    else:
        print("Training is not run (steps = 0): the untrained model is evaluated.")
    model_eps = []
    for policy in policies:  # every N together: one batched call per turn
        model_eps += run_episodes(
            tasks,
            policy,
            MODES,
            max_turns=cfg.max_turns,
            count_tokens=counter,
            sampling=stage_sampling(cfg),
            prompt_style=cfg.prompt_style,
        )
    gold_eps = [
        e
        for n in ns
        for e in run_episodes(
            by_n[n],
            GOLD,
            MODES,
            max_turns=gold_max_turns(n, cfg.max_turns),
            count_tokens=counter,
            prompt_style=cfg.prompt_style,
        )
    ]
    table = aggregate(model_eps + gold_eps)
    comparison = compare_with_memory_r1(cfg, policies[-1], counter, system="replay")
    result = Mem1Result(
        cfg.environment,
        cfg.n_objectives,
        ns,
        cfg.n_tasks,
        cfg.model,
        cfg.steps,
        table["tokenizer"].iloc[0],
        {str(n): resolve_turns(cfg.max_turns, n) for n in ns},
        table.to_dict("records"),
        comparison.to_dict("records"),
        task_list=tasks,
        model_episodes=model_eps,
        gold_episodes=gold_eps,
        table_frame=table,
        comparison_frame=comparison,
    )
    save_result(cfg.run_dir, result, cfg)
    return result


def stage_sampling(cfg: Mem1Config) -> Any:
    """Greedy decoding, ``max_new_tokens`` per turn (of a resolved config), MEM1's stop strings."""
    from memr1.agents.mem1 import STOP_STRINGS
    from memr1.llm.generate import Sampling

    cap = cfg.max_new_tokens if cfg.max_new_tokens > 0 else MAX_NEW_TOKENS.get(cfg.profile, 256)
    return Sampling(max_new_tokens=cap, stop=STOP_STRINGS)


def stage_generator(cfg: Mem1Config) -> Any:
    """The configured model (of a resolved config) as a generator."""
    from memr1.llm.backends import make_generator

    return make_generator(cfg.model, cfg.backend, fallback=get_profile(cfg.profile).fallback_model)


def trained_generator(cfg: Mem1Config) -> Any:
    """Train with the ``Mem1TrainConfig`` of the fields both configs share, in ``run_dir/train``, on
    tasks of the train pool only (``memr1.rl.mem1_trainer.train_mem1``); a generator over the trained model."""
    from pathlib import Path

    from memr1.llm.backends import TransformersGenerator

    names = {f.name for f in dataclasses.fields(Mem1TrainConfig)}
    params = {k: v for k, v in cfg.to_dict().items() if k in names and k != "run_dir"}
    trained = train(Mem1TrainConfig.from_params({**params, "run_dir": str(Path(cfg.run_dir) / "train")}))
    trained.tokenizer.padding_side = "left"  # batched generation pads on the left
    return TransformersGenerator.from_model(trained.model, trained.tokenizer, name=f"{cfg.model}+mem1-rl")


def compare_with_memory_r1(
    cfg: Mem1Config,
    generator: Any,
    count_tokens: Any = None,
    *,
    system: str = "replay",
    conversation: str = "",
    progress: bool = False,
) -> Any:
    """MEM1 and Memory-R1 on the same LoCoMo questions: EM, F1 (per question, 0 to 1) and peak tokens.

    Tasks: ``cfg.n_tasks`` tasks of ``cfg.n_objectives`` questions of ``conversation`` (default ""
    : the first conversation of the test split, which MEM1 training (conv-26 at most) never saw and
    ``evaluate`` reaches with a small ``limit``), drawn from its
    first ``max_questions`` eligible questions of the profile (all when 0; on smoke only the first
    ``n_tasks * N``, so that few questions need a Memory-R1 answer). Rows: the MEM1 agent
    with ``generator`` (pruned context), the scripted gold policy (ceiling), and Memory-R1's
    pipeline (stage 05, ``memr1.stages.evaluate``, with ``system`` "replay" or "heuristic", all
    turns, the same generator as Answer Agent) restricted to those questions. Memory-R1's peak is its
    Answer Agent prompt (60 memories and one question), as the generator counts it (the model
    tokenizer with the chat template for local models); MEM1's peak holds all N questions.
    ``cfg`` is a resolved config; ``count_tokens`` None counts whitespace words.
    """
    from pathlib import Path

    import pandas as pd

    from memr1.agents.mem1 import WHITESPACE
    from memr1.data.locomo import load_locomo
    from memr1.data.splits import PAPER_SPLIT, split_conversations, split_questions
    from memr1.eval.mem1_metrics import GOLD, gold_max_turns, peak_tokens, run_episodes
    from memr1.stages.evaluate import EvalConfig
    from memr1.stages.evaluate import run as evaluate

    if system not in ("replay", "heuristic"):
        raise ConfigError(f"compare_with_memory_r1 runs system replay or heuristic, got {system!r}")
    count_tokens = count_tokens or WHITESPACE
    n, prof = cfg.n_objectives, get_profile(cfg.profile)
    data = load_locomo(cfg.data_dir or None)
    conversation = conversation or split_conversations(data, "test")[0].sample_id
    pool = max(2 * n, cfg.n_tasks * n) if cfg.profile == "smoke" else prof.max_questions  # smoke: few to evaluate
    tasks = make_tasks_for_comparison(data, cfg, conversation, pool)
    split = next((s for s, ids in PAPER_SPLIT.items() if conversation in ids), "test")
    order = {q.qid: i for i, q in enumerate(split_questions(data, split))}
    qids = {o.qid for t in tasks for o in t.objectives}
    rows = []
    for label, policy, turns in (
        (f"MEM1 agent ({getattr(generator, 'name', '?')}, pruned)", generator, cfg.max_turns),
        ("MEM1 gold-scripted policy (ceiling)", GOLD, gold_max_turns(n, cfg.max_turns)),
    ):
        eps = run_episodes(
            tasks,
            policy,
            ("mem1",),
            max_turns=turns,
            count_tokens=count_tokens,
            sampling=stage_sampling(cfg),
            prompt_style=cfg.prompt_style,
        )
        per_q = (
            pd.DataFrame(
                [
                    {"qid": o.qid, "em": e.em[k], "f1": e.f1[k]}
                    for t, e in zip(tasks, eps)
                    for k, o in enumerate(t.objectives)
                ]
            )
            .groupby("qid")
            .mean()
        )
        peaks = [peak_tokens(e) for e in eps]
        rows.append(
            {
                "system": label,
                "questions": len(per_q),
                "em": per_q.em.mean(),
                "f1": per_q.f1.mean(),
                "peak_tokens_mean": sum(peaks) / len(peaks),
                "peak_tokens_max": max(peaks),
                "tokens": getattr(count_tokens, "name", "custom"),
            }
        )
    ecfg = EvalConfig(
        profile=cfg.profile,
        data_dir=cfg.data_dir,
        system=system,
        model=cfg.model,
        backend=cfg.backend,
        split=split,
        limit=1 + max(order[q] for q in qids),
        max_turns=0,
        embedder="hash" if cfg.profile == "smoke" else "minilm",
        answer_tokens=min(128, stage_sampling(cfg).max_new_tokens),
        k_per_speaker=cfg.memory_r1_k,
        run_dir=str(Path(cfg.run_dir) / "memory_r1"),
        seed=cfg.seed,
    )
    rec = evaluate(ecfg, generator=generator, progress=progress).records
    rec = rec[rec.qid.isin(qids)]
    rows.append(
        {
            "system": f"Memory-R1 pipeline ({system}, Answer Agent {getattr(generator, 'name', '?')})",
            "questions": len(rec),
            "em": rec.em.mean(),
            "f1": rec.f1.mean(),
            "peak_tokens_mean": float(rec.prompt_tokens.mean()),
            "peak_tokens_max": int(rec.prompt_tokens.max()),
            "tokens": "generator prompt_tokens",
        }
    )
    return pd.DataFrame(rows)


def make_tasks_for_comparison(data: Any, cfg: Mem1Config, conversation: str, pool: int) -> list[Any]:
    """The LoCoMo tasks of ``compare_with_memory_r1`` (the pool is at least twice N)."""
    from memr1.data.tasks import make_tasks

    pool = max(pool, 2 * cfg.n_objectives) if pool else 0
    return make_tasks(data, cfg.n_objectives, cfg.n_tasks, cfg.seed, conversation=conversation, pool=pool)


# --------------------------------------------------------------------------- memr1 train mem1


@dataclass
class Mem1TrainConfig(Mem1TrainSettings, RunConfig):
    """MEM1 training on its own (``memr1 train mem1``): the run fields and every training setting."""

    STAGE: ClassVar[str] = "train_mem1"

    def resolved(self) -> Mem1TrainConfig:
        """A validated copy with the profile's model filled in."""
        return self.replace(model=profile_value(self.model, get_profile(self.profile).policy_model, unset=""))


@dataclass
class Mem1TrainResult(StageResult):
    """What a MEM1 training run did; the model itself is in ``checkpoint``."""

    steps: int
    """Steps completed in total, earlier runs of this folder included."""
    resumed_from: int
    """Step this run started at (0 for a fresh run)."""
    log_file: str
    """The JSON-lines log, one line per step."""
    checkpoint: str
    """Folder of the last checkpoint (model or adapter, optimiser, RNG states)."""
    history: list[dict[str, Any]]
    """The log lines written by this run: loss, rewards, tokens, gradient norm per step."""
    model: Any = transient()
    """The trained model (a PEFT model when lora_r > 0)."""
    tokenizer: Any = transient()


def train(cfg: Mem1TrainConfig, *, tasks: Any = None) -> Mem1TrainResult:
    """Train (or resume) in ``cfg.run_dir``; ``tasks`` None builds them from the config. Writes metrics.json."""
    from pathlib import Path

    from memr1.rl.mem1_trainer import CHECKPOINT_DIR, LOG_FILE, train_mem1

    cfg = cfg.resolved()
    out = train_mem1(cfg, run_dir=cfg.run_dir, seed=cfg.seed, tasks=tasks, data_dir=cfg.data_dir or None)  # seeds
    run_dir = Path(cfg.run_dir)
    result = Mem1TrainResult(
        out.steps_done,
        out.resumed_from,
        str(run_dir / LOG_FILE),
        str(run_dir / CHECKPOINT_DIR),
        out.history,
        model=out.model,
        tokenizer=out.tokenizer,
    )
    save_result(cfg.run_dir, result, cfg)
    return result

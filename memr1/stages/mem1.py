"""Stage 06: the MEM1 agent (pruned internal state) against the full context, and beside Memory-R1.

MEM1 (Zhou, Qu et al., arXiv 2506.15841; docs/design.md §mem1 agent): N-question tasks (HotpotQA or
LoCoMo) run by the model under MEM1 pruning and with the full context, and by a scripted policy that
reads the gold passages (the ceiling, and the context sizes a working agent would have). The same
model then answers LoCoMo questions as a MEM1 agent and inside the Memory-R1 pipeline (stage 05).
Optional MEM1 training (``steps > 0``) runs first; ``memr1 train mem1`` runs it alone (``train``).

>>> Mem1Config.from_params({"n_objectives": "4"}).resolved().model
'tiny'
>>> Mem1TrainConfig.from_params({"learning_rate": "2e-5", "lora_r": "8"}).learning_rate
2e-05
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from memr1.config import RunConfig, check_min, get_profile, profile_value
from memr1.errors import ConfigError
from memr1.rl.mem1_trainer import Mem1TrainSettings
from memr1.runs import StageResult, save_result, transient

ENVIRONMENTS = ("hotpotqa", "locomo")
MAX_NEW_TOKENS = {"smoke": 48, "cpu": 256, "paper": 1024}
"""Tokens per generated turn, by profile (MEM1 allows 1024; the tiny model only needs a few)."""


@dataclass
class Mem1Config(RunConfig):
    """Stage 06: the MEM1 agent (pruned internal state) against full context, and beside Memory-R1."""

    STAGE: ClassVar[str] = "06_mem1"

    environment: str = "hotpotqa"
    """Task source: hotpotqa (sample paragraphs as corpus) or locomo (one conversation, turns as corpus)."""
    n_objectives: int = 2
    """Questions per task, 1 to 16 (MEM1 trains on 2 and tests up to 16)."""
    n_tasks: int = 4
    """Tasks built and run in every mode."""
    model: str = ""
    """Policy model: tiny, a hub id or a local folder; "" uses the model of the profile."""
    backend: str = ""
    """auto, transformers or unsloth; "" uses the backend of the profile."""
    steps: int = 0
    """MEM1 training steps (memr1.rl.mem1_trainer, in run_dir/train) before evaluation (0 for no training)."""
    max_turns: int = 6
    """Turn cap per episode (MEM1: 6 for up to 4 objectives, 20 for harder tasks)."""
    memory_r1_k: int = 30
    """Memories per speaker the Memory-R1 side of the comparison retrieves (Memory-R1: 30)."""

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
        check_min(self, 1, "memory_r1_k")
        if self.n_tasks < 1 or self.max_turns < 1 or self.steps < 0:
            raise ConfigError(
                f"{name}: n_tasks and max_turns must be >= 1 and steps >= 0, got "
                f"{self.n_tasks}, {self.max_turns}, {self.steps}"
            )

    def resolved(self) -> Mem1Config:
        """A validated copy with the profile's model and backend filled in."""
        p = get_profile(self.profile)
        return self.replace(
            model=profile_value(self.model, p.policy_model, unset=""),
            backend=profile_value(self.backend, p.backend, unset=""),
        )


@dataclass
class Mem1Result(StageResult):
    """Context sizes and scores of the MEM1 agent and the gold policy, and the Memory-R1 comparison."""

    environment: str
    n_objectives: int
    tasks: int
    """Tasks run in every mode."""
    model: str
    """The resolved policy model."""
    tokenizer: str
    """What every token count counts with (the model's tokenizer; whitespace words for remote models)."""
    table: list[dict[str, Any]]
    """``memr1.eval.mem1_metrics.aggregate`` rows: means per (policy, mode, N) over tasks."""
    memory_r1_comparison: list[dict[str, Any]] | None
    """MEM1 agent, gold policy and Memory-R1 on the same LoCoMo questions (None when not run)."""
    task_list: Any = transient()
    """The ``Task`` objects that were run."""
    model_episodes: Any = transient()
    """The model's ``Episode`` objects, every task under both context modes."""
    gold_episodes: Any = transient()
    """The gold policy's ``Episode`` objects."""
    table_frame: Any = transient()
    """``table`` as the DataFrame ``aggregate`` returned."""
    comparison_frame: Any = transient()
    """``memory_r1_comparison`` as a DataFrame."""


def run(cfg: Mem1Config, *, generator: Any = None) -> Mem1Result:
    """Build tasks, optionally train, run both context modes and the comparison; write metrics.json.

    ``generator``: evaluate this instead of the configured model (tests, scripted policies); training,
    when ``steps > 0``, still starts from ``cfg.model``.
    """
    from memr1.data.tasks import make_tasks
    from memr1.eval.mem1_metrics import GOLD, aggregate, gold_max_turns, run_episodes, token_counter_for
    from memr1.seeding import seed_everything

    cfg = cfg.resolved()
    seed_everything(cfg.seed)
    tasks = make_tasks(cfg.environment, cfg.n_objectives, cfg.n_tasks, cfg.seed, data_dir=cfg.data_dir or None)
    generator = generator or stage_generator(cfg)
    counter = token_counter_for(generator)
    if cfg.steps > 0:
        policy = trained_generator(cfg, tasks)
    else:
        print("Training is not run (steps = 0): the untrained model is evaluated.")
        policy = generator
    model_eps = run_episodes(
        tasks, policy, ("mem1", "full"), max_turns=cfg.max_turns, count_tokens=counter, sampling=stage_sampling(cfg)
    )
    gold_eps = run_episodes(
        tasks, GOLD, ("mem1", "full"), max_turns=gold_max_turns(cfg.n_objectives, cfg.max_turns), count_tokens=counter
    )
    table = aggregate(model_eps + gold_eps)
    comparison = compare_with_memory_r1(cfg, policy, counter, system="replay")
    result = Mem1Result(
        cfg.environment,
        cfg.n_objectives,
        cfg.n_tasks,
        cfg.model,
        table["tokenizer"].iloc[0],
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
    """Greedy decoding with the profile's cap on tokens per turn."""
    from memr1.llm.generate import Sampling

    return Sampling(max_new_tokens=MAX_NEW_TOKENS.get(cfg.profile, 256))


def stage_generator(cfg: Mem1Config) -> Any:
    """The configured model (of a resolved config) as a generator."""
    from memr1.llm.backends import make_generator

    return make_generator(cfg.model, cfg.backend, fallback=get_profile(cfg.profile).fallback_model)


def trained_generator(cfg: Mem1Config, tasks: Any) -> Any:
    """Train on ``tasks`` with the ``Mem1TrainConfig`` of the fields both configs share, in
    ``run_dir/train``; a generator over the trained model."""
    from pathlib import Path

    from memr1.llm.backends import TransformersGenerator

    names = {f.name for f in dataclasses.fields(Mem1TrainConfig)}
    params = {k: v for k, v in cfg.to_dict().items() if k in names and k != "run_dir"}
    trained = train(Mem1TrainConfig.from_params({**params, "run_dir": str(Path(cfg.run_dir) / "train")}), tasks=tasks)
    trained.tokenizer.padding_side = "left"  # batched generation pads on the left
    return TransformersGenerator.from_model(trained.model, trained.tokenizer, name=f"{cfg.model}+mem1-rl")


def compare_with_memory_r1(
    cfg: Mem1Config,
    generator: Any,
    count_tokens: Any = None,
    *,
    system: str = "replay",
    conversation: str = "conv-26",
    progress: bool = False,
) -> Any:
    """MEM1 and Memory-R1 on the same LoCoMo questions: EM, F1 (per question, 0 to 1) and peak tokens.

    Tasks: ``cfg.n_tasks`` tasks of ``cfg.n_objectives`` questions of ``conversation`` (default
    conv-26, the train split, which ``evaluate`` reaches with a small ``limit``), drawn from its
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
    from memr1.data.splits import PAPER_SPLIT, split_questions
    from memr1.eval.mem1_metrics import GOLD, gold_max_turns, peak_tokens, run_episodes
    from memr1.stages.evaluate import EvalConfig
    from memr1.stages.evaluate import run as evaluate

    if system not in ("replay", "heuristic"):
        raise ConfigError(f"compare_with_memory_r1 runs system replay or heuristic, got {system!r}")
    count_tokens = count_tokens or WHITESPACE
    n, prof = cfg.n_objectives, get_profile(cfg.profile)
    data = load_locomo(cfg.data_dir or None)
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
            tasks, policy, ("mem1",), max_turns=turns, count_tokens=count_tokens, sampling=stage_sampling(cfg)
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

"""Run profiles and one config dataclass per stage.

Every field carries a one-line docstring right under it (CleanRL style); ``field_docs`` reads them
back, so ``memr1 params`` and the notebook parameter cells can show them. A notebook's parameters
cell holds exactly the fields of its stage config as literals, and the next cell calls
``Config.from_namespace(globals())``, which checks every type and names the offending field.

>>> cfg = DataConfig.from_params({"profile": "smoke", "seed": 3})
>>> cfg.seed, cfg.profile
(3, 'smoke')
>>> DataConfig.from_params({"seed": "three"})
Traceback (most recent call last):
...
memr1.errors.ConfigError: DataConfig.seed must be int, got str 'three'
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from memr1.errors import ConfigError

# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    """A named set of defaults that decides model size and how much of the data a run uses."""

    name: str
    """Profile name."""
    policy_model: str
    """Hub id or local path of the policy LLM; "tiny" means the locally built test model."""
    fallback_model: str
    """Model used when policy_model cannot be downloaded; "" means fail instead."""
    backend: str
    """Model backend: auto, transformers or unsloth."""
    max_questions: int
    """Cap on questions per evaluation split (0 = all)."""
    max_turns: int
    """Cap on dialogue turns fed to memory building per conversation (0 = all)."""
    description: str
    """One line shown at the top of reports."""


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("smoke", "tiny", "", "transformers", 20, 60,
                "tiny local model, no download, a few steps: tests and CI (numbers are not meaningful)"),
        Profile("cpu", "Qwen/Qwen2.5-0.5B-Instruct", "tiny", "transformers", 200, 0,
                "Qwen2.5-0.5B-Instruct on CPU; falls back to the tiny model when the hub is unreachable"),
        Profile("paper", "Qwen/Qwen2.5-7B-Instruct", "", "auto", 0, 0,
                "Qwen2.5-7B-Instruct (or Llama-3.1-8B-Instruct), Unsloth 4-bit LoRA on one GPU, full split"),
    )
}


def get_profile(name: str) -> Profile:
    """Return the profile called ``name``; a ConfigError lists the known ones otherwise."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None


# --------------------------------------------------------------------------- stage configs


class StageConfig:
    """Shared behaviour of the stage configs: strict construction and field documentation."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]):
        """Build from a mapping, rejecting unknown keys and values of the wrong type."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        for key, value in params.items():
            _check_type(cls.__name__, key, value, hints[key])
        cfg = cls(**params)
        cfg.validate()
        return cfg

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]):
        """Build from a notebook's globals: takes exactly the names that are fields."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls.from_params({n: namespace[n] for n in names if n in namespace})

    def validate(self) -> None:
        """Value checks beyond types; stages override and call super()."""
        if hasattr(self, "profile"):
            get_profile(self.profile)
        if getattr(self, "seed", 0) < 0:
            raise ConfigError(f"{type(self).__name__}.seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Map each field name to the docstring written under it in the class body."""
        return field_docs(cls)


def field_docs(cls: type) -> dict[str, str]:
    """Read attribute docstrings (a string literal right after ``name: type = value``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _check_type(owner: str, key: str, value: Any, hint: Any) -> None:
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = typing.get_args(hint) if is_union else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if t in (str, bool) and isinstance(value, t):
            return
    want = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{owner}.{key} must be {want}, got {type(value).__name__} {value!r}")


@dataclass
class DataConfig(StageConfig):
    """Stage 01: load LoCoMo, check the paper split and category counts, plot statistics."""

    profile: str = "smoke"
    """Run profile: smoke, cpu or paper."""
    data_dir: str = ""
    """Folder holding locomo/locomo10.json; "" searches $MEMR1_DATA_DIR, the user cache, then downloads."""
    conversation: str = "conv-26"
    """Sample id of the conversation shown in the per-session figures."""
    run_dir: str = "runs/dev/01_locomo_data"
    """Folder where this stage writes metrics.json."""
    seed: int = 0
    """Seed for random, numpy and torch."""


@dataclass
class BankConfig(StageConfig):
    """Stage 02: replay LoCoMo's observations into per-speaker LanceDB banks; timeline and recall."""

    profile: str = "smoke"
    """Run profile: smoke, cpu or paper."""
    data_dir: str = ""
    """Folder holding locomo/locomo10.json; "" searches $MEMR1_DATA_DIR, the user cache, then downloads."""
    conversation: str = "conv-26"
    """Sample id of the conversation whose banks are built, stored and shown."""
    embedder: str = "minilm"
    """Embedding model: minilm (all-MiniLM-L6-v2, offline) or hash (no model, for quick checks)."""
    k_per_speaker: int = 30
    """Memories retrieved from each speaker's bank per question (Memory-R1: 30, i.e. 60 in all)."""
    recall_scope: str = "conversation"
    """Questions for the recall table: conversation (the one above) or all (1,540 questions, ~1 min)."""
    focus_turn: int = -1
    """Turn the timeline opens at (-1: the last committed turn)."""
    run_dir: str = "runs/dev/02_build_memory_bank"
    """Folder where this stage writes metrics.json and the LanceDB store (run_dir/store)."""
    seed: int = 0
    """Seed for random, numpy and torch."""

    def validate(self) -> None:
        super().validate()
        from memr1.memory.embed import EMBEDDERS

        if self.embedder not in EMBEDDERS:
            raise ConfigError(f"BankConfig.embedder must be one of {EMBEDDERS}, got {self.embedder!r}")
        if self.recall_scope not in ("conversation", "all"):
            raise ConfigError(f"BankConfig.recall_scope must be conversation or all, got {self.recall_scope!r}")
        if self.k_per_speaker < 1:
            raise ConfigError(f"BankConfig.k_per_speaker must be >= 1, got {self.k_per_speaker}")


SYSTEMS = ("base", "heuristic", "replay", "full-context", "rag")
"""Memory systems the evaluation stage can run (see memr1.eval.report)."""


@dataclass
class EvalConfig(StageConfig):
    """Stage 05: run a memory system over a LoCoMo split and score it (F1, BLEU-1, EM, LLM judge)."""

    profile: str = "smoke"
    """Run profile: smoke, cpu or paper (decides the default model, question cap and turn cap)."""
    data_dir: str = ""
    """Folder holding locomo/locomo10.json; "" searches $MEMR1_DATA_DIR, the user cache, then downloads."""
    system: str = "heuristic"
    """base (LLM extractor + LLM manager), heuristic (no-LLM manager), replay (oracle banks), full-context or rag."""
    model: str = ""
    """Policy model for every LLM role; "" uses the model of the profile (tiny for smoke)."""
    backend: str = ""
    """auto, transformers, unsloth or openai; "" uses the backend of the profile."""
    base_url: str = ""
    """OpenAI-compatible endpoint (backend openai), e.g. http://127.0.0.1:8000/v1."""
    split: str = "test"
    """LoCoMo split: train, validation, test or all (category 5 always excluded)."""
    limit: int = -1
    """Questions evaluated, in file order (0 for all, -1 for the cap of the profile)."""
    max_turns: int = -1
    """Dialogue turns per conversation used to build memory (0 for all, -1 for the cap of the profile)."""
    metric_family: str = "mem0"
    """F1/BLEU-1 family shown first: mem0 (Memory-R1's tables) or locomo (the benchmark's scorer)."""
    judge_base_url: str = ""
    """OpenAI-compatible endpoint of the LLM judge; "" skips the judge."""
    judge_model: str = ""
    """Judge model name on that endpoint (e.g. gpt-4o-mini); "" skips the judge."""
    embedder: str = "minilm"
    """Embedding model for memory search: minilm or hash."""
    k_per_speaker: int = 30
    """Memories retrieved per speaker for each question (60 in all, as in Memory-R1)."""
    max_new_tokens: int = 128
    """Generation cap for each LLM call."""
    run_dir: str = "runs/dev/05_evaluate_locomo"
    """Folder where this stage writes records.parquet, the report tables and metrics.json."""
    seed: int = 0
    """Seed for random, numpy and torch."""

    def validate(self) -> None:
        super().validate()
        from memr1.data.splits import SPLITS
        from memr1.eval.metrics import METRIC_FAMILIES
        from memr1.memory.embed import EMBEDDERS

        checks = [("system", self.system, SYSTEMS), ("split", self.split, SPLITS),
                  ("metric_family", self.metric_family, METRIC_FAMILIES), ("embedder", self.embedder, EMBEDDERS),
                  ("backend", self.backend, ("", "auto", "transformers", "unsloth", "openai"))]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"EvalConfig.{name} must be one of {tuple(allowed)}, got {value!r}")
        if self.backend == "openai" and not self.base_url:
            raise ConfigError("EvalConfig.backend='openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if bool(self.judge_base_url) != bool(self.judge_model):
            raise ConfigError("set both judge_base_url and judge_model, or neither (no judge)")
        if self.limit < -1 or self.max_turns < -1 or self.k_per_speaker < 1 or self.max_new_tokens < 1:
            raise ConfigError("EvalConfig: limit and max_turns must be >= -1, k_per_speaker and "
                              "max_new_tokens >= 1")

    def resolved(self) -> "EvalConfig":
        """A copy with the profile's defaults filled in (model, backend, limit, max_turns)."""
        p = get_profile(self.profile)
        return dataclasses.replace(
            self, model=self.model or p.policy_model, backend=self.backend or p.backend,
            limit=p.max_questions if self.limit == -1 else self.limit,
            max_turns=p.max_turns if self.max_turns == -1 else self.max_turns)


GRPO_BACKENDS = ("", "auto", "transformers", "unsloth")
"""Backends a GRPO training stage accepts ("" means the backend of the profile)."""


@dataclass
class GRPOTrainConfig(StageConfig):
    """Shared fields of the GRPO stages (TRL GRPOTrainer with LoRA; Unsloth on CUDA)."""

    profile: str = "smoke"
    """Run profile: smoke, cpu or paper (decides the default model and the question cap)."""
    data_dir: str = ""
    """Folder holding locomo/locomo10.json; "" searches $MEMR1_DATA_DIR, the user cache, then downloads."""
    model: str = ""
    """Policy base model: tiny, a hub id or a local folder; "" uses the model of the profile."""
    backend: str = ""
    """auto, transformers or unsloth (CUDA only); "" uses the backend of the profile."""
    embedder: str = "minilm"
    """Embedding model for memory search: minilm or hash (no model, quick checks)."""
    k_per_speaker: int = 30
    """Memories retrieved per speaker for each question (Memory-R1: 30, so 60 in all)."""
    store_dir: str = ""
    """Folder of the teacher LanceDB stores, reusable by later runs; "" uses run_dir/store."""
    train_limit: int = -1
    """Training rows used, in file order (0 for all, -1 for the question cap of the profile)."""
    steps: int = 4
    """Optimizer steps to run (GRPOConfig max_steps)."""
    learning_rate: float = 1e-5
    """AdamW learning rate of the LoRA weights, held constant (Memory-R1 uses a constant schedule)."""
    num_generations: int = 4
    """Completions sampled per prompt: the GRPO group size."""
    batch_size: int = 4
    """Completions per device per step (per_device_train_batch_size); a multiple of num_generations."""
    max_completion_length: int = 32
    """Token cap of each sampled completion (Memory-R1: 2048)."""
    temperature: float = 1.0
    """Sampling temperature of the training rollouts (Memory-R1: 1.0; validation is greedy)."""
    beta: float = 0.0
    """KL coefficient against the frozen base model (0 loads no reference model, as in TRL)."""
    lora_r: int = 8
    """LoRA rank on the q, k, v and o projections."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by lora_alpha over lora_r)."""
    save_every: int = 2
    """Steps between checkpoints in run_dir/checkpoints (0 for none, which rules out resume)."""
    eval_every: int = 2
    """Steps between validation EM runs on conv-30 under greedy decoding (0 for none)."""
    eval_limit: int = 4
    """Validation rows per evaluation, in file order (0 for all; 81 questions for the answer agent)."""
    resume: bool = False
    """Continue from the last checkpoint in run_dir/checkpoints when there is one."""
    verify_adapter: bool = True
    """After training, load the saved adapter with make_generator to prove it loads."""
    run_dir: str = "runs/dev/03_train_grpo"
    """Folder for checkpoints, tensorboard logs, the final LoRA adapter and the data stores."""
    seed: int = 0
    """Seed for random, numpy, torch and the GRPO sampler."""

    def validate(self) -> None:
        super().validate()
        from memr1.memory.embed import EMBEDDERS

        name = type(self).__name__
        for field, value, allowed in (("backend", self.backend, GRPO_BACKENDS),
                                      ("embedder", self.embedder, EMBEDDERS)):
            if value not in allowed:
                raise ConfigError(f"{name}.{field} must be one of {tuple(allowed)}, got {value!r}")
        if self.num_generations < 2:
            raise ConfigError(f"{name}.num_generations must be >= 2 (GRPO compares completions within a "
                              f"group), got {self.num_generations}")
        if self.batch_size < 1 or self.batch_size % self.num_generations:
            fix = self.num_generations * max(1, self.batch_size // self.num_generations)
            raise ConfigError(f"{name}.batch_size ({self.batch_size}) must be a positive multiple of "
                              f"num_generations ({self.num_generations}): every prompt needs its whole group "
                              f"in one step; try batch_size={fix}")
        positive = {"steps": self.steps, "max_completion_length": self.max_completion_length,
                    "lora_r": self.lora_r, "lora_alpha": self.lora_alpha, "k_per_speaker": self.k_per_speaker}
        non_negative = {"learning_rate": self.learning_rate, "beta": self.beta, "save_every": self.save_every,
                        "eval_every": self.eval_every, "eval_limit": self.eval_limit}
        for field, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}.{field} must be >= 1, got {value}")
        for field, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name}.{field} must be >= 0, got {value}")
        if self.temperature <= 0:
            raise ConfigError(f"{name}.temperature must be > 0 (training samples; validation is greedy), "
                              f"got {self.temperature}")
        if self.train_limit < -1:
            raise ConfigError(f"{name}.train_limit must be >= -1 (-1: the cap of the profile), got {self.train_limit}")

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Field docs of this class and its GRPO base classes, in dataclass field order."""
        docs: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if issubclass(klass, GRPOTrainConfig):
                docs.update(field_docs(klass))
        return {f.name: docs[f.name] for f in dataclasses.fields(cls)}

    def resolved(self):
        """A copy with the profile's defaults filled in (model, backend, train_limit)."""
        p = get_profile(self.profile)
        return dataclasses.replace(self, model=self.model or p.policy_model, backend=self.backend or p.backend,
                                   train_limit=p.max_questions if self.train_limit == -1 else self.train_limit)


@dataclass
class AnswerTrainConfig(GRPOTrainConfig):
    """Stage 03: train the Answer Agent with GRPO on conv-26 (reward: exact match of the answer)."""

    run_dir: str = "runs/dev/03_train_answer_agent"
    """Folder for checkpoints, tensorboard logs, the final LoRA adapter and the data stores."""


@dataclass
class ManagerTrainConfig(GRPOTrainConfig):
    """Stage 04: train the Memory Manager with GRPO; reward: EM of a frozen Answer Agent on the new bank."""

    answer_model: str = ""
    """Frozen Answer Agent: "" for the base model, or an answer-agent run dir or adapter folder (LoRA)."""
    k_similar: int = 5
    """Stored memories shown to the manager per new fact (Mem0 convention: 5)."""
    run_dir: str = "runs/dev/04_train_memory_manager"
    """Folder for checkpoints, tensorboard logs, the final LoRA adapter and the data stores."""

    def validate(self) -> None:
        super().validate()
        if self.k_similar < 1:
            raise ConfigError(f"ManagerTrainConfig.k_similar must be >= 1, got {self.k_similar}")


@dataclass
class Mem1TrainConfig(StageConfig):
    """MEM1 training: grouped multi-turn rollouts, exact per-turn or packed rows, our own GRPO-style loss."""

    profile: str = "smoke"
    """Run profile: smoke, cpu or paper (decides the default model)."""
    model: str = ""
    """Policy base model: tiny, a hub id or a local folder; "" uses the model of the profile."""
    environment: str = "hotpotqa"
    """Task source for memr1.data.tasks.make_tasks: hotpotqa or locomo."""
    n_objectives: int = 2
    """Questions per task; the reward counts those answered correctly (MEM1 trains on 2)."""
    steps: int = 4
    """Optimizer steps; each rolls out one group per task of the step."""
    tasks_per_step: int = 2
    """Tasks per step, each with its own group of rollouts."""
    group_size: int = 4
    """Rollouts per task: the group whose rewards are normalised into advantages."""
    learning_rate: float = 1e-5
    """AdamW learning rate, constant, no weight decay (MEM1: 1e-6 for a 7B model)."""
    max_turns: int = 6
    """Turn cap per episode (MEM1: 6 for up to 4 objectives)."""
    max_new_tokens: int = 128
    """Token cap of each generated turn (MEM1: 1000)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; the loss scores tokens at the same temperature."""
    packed: bool = False
    """Score a whole trajectory in one row with a 4-D additive mask instead of one row per turn."""
    loss_type: str = "token"
    """token: mean over all generated tokens of the step; trajectory: mean of per-trajectory token means."""
    clip_eps: float = 0.2
    """PPO ratio clip (inactive with one update per rollout, where the ratio is 1)."""
    beta: float = 0.0
    """Weight of the KL estimate to the frozen base model (0 loads no reference model)."""
    micro_batch: int = 8
    """Trajectories per forward pass; gradients are accumulated, the result does not depend on it."""
    lora_r: int = 0
    """LoRA rank on every linear layer (alpha is twice the rank); 0 means full fine-tuning."""
    save_every: int = 1
    """Steps between checkpoints in run_dir/checkpoint (the last step is always saved)."""
    run_dir: str = "runs/dev/07_train_mem1"
    """Folder for train_log.jsonl and the checkpoint a rerun resumes from."""
    seed: int = 0
    """Seed for random, numpy, torch and the rollouts of every step."""

    def validate(self) -> None:
        super().validate()
        if self.environment not in ("hotpotqa", "locomo"):
            raise ConfigError(f"Mem1TrainConfig.environment must be hotpotqa or locomo, got {self.environment!r}")
        if self.loss_type not in ("token", "trajectory"):
            raise ConfigError(f"Mem1TrainConfig.loss_type must be token or trajectory, got {self.loss_type!r}")
        for name in ("n_objectives", "steps", "tasks_per_step", "group_size", "max_turns", "max_new_tokens",
                     "micro_batch", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Mem1TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate < 0 or self.beta < 0 or self.lora_r < 0 or self.clip_eps <= 0:
            raise ConfigError("Mem1TrainConfig: learning_rate, beta and lora_r must be >= 0 and clip_eps > 0")
        if self.temperature <= 0:
            raise ConfigError(f"Mem1TrainConfig.temperature must be > 0 (rollouts sample), got {self.temperature}")


@dataclass
class Mem1Config(StageConfig):
    """Stage 06: the MEM1 agent (pruned internal state) against full context, and beside Memory-R1."""

    profile: str = "smoke"
    """Run profile: smoke, cpu or paper (decides the default model; smoke numbers are not meaningful)."""
    data_dir: str = ""
    """Folder holding hotpotqa/ and locomo/ data files; "" searches $MEMR1_DATA_DIR, then the user cache."""
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
    """MEM1 training steps run by memr1.rl.mem1_trainer before evaluation (0 for no training)."""
    max_turns: int = 6
    """Turn cap per episode (MEM1: 6 for up to 4 objectives, 20 for harder tasks)."""
    run_dir: str = "runs/dev/06_mem1"
    """Folder where this stage writes metrics.json and the Memory-R1 comparison store."""
    seed: int = 0
    """Seed for task sampling, random, numpy and torch."""

    def validate(self) -> None:
        super().validate()
        if self.environment not in ("hotpotqa", "locomo"):
            raise ConfigError(f"Mem1Config.environment must be hotpotqa or locomo, got {self.environment!r}")
        if self.backend not in ("", "auto", "transformers", "unsloth"):
            raise ConfigError(f"Mem1Config.backend must be one of auto, transformers, unsloth or empty, "
                              f"got {self.backend!r}")
        if not 1 <= self.n_objectives <= 16:
            raise ConfigError(f"Mem1Config.n_objectives must be from 1 to 16, got {self.n_objectives}")
        if self.n_tasks < 1 or self.max_turns < 1 or self.steps < 0:
            raise ConfigError("Mem1Config: n_tasks and max_turns must be >= 1 and steps >= 0, got "
                              f"{self.n_tasks}, {self.max_turns}, {self.steps}")

    def resolved(self) -> "Mem1Config":
        """A copy with the profile's model and backend filled in."""
        p = get_profile(self.profile)
        return dataclasses.replace(self, model=self.model or p.policy_model, backend=self.backend or p.backend)


@dataclass
class ReportConfig(StageConfig):
    """Stage 07: collect every finished stage of a run folder into one self-contained report.html."""

    profile: str = "smoke"
    """Run profile: smoke, cpu or paper (the report says which, and why)."""
    run_dir: str = "runs/dev/07_report"
    """Folder of this stage; the report covers its parent (the run folder) and is written there."""
    seed: int = 0
    """Seed for random, numpy and torch (the report itself is deterministic)."""


@dataclass
class QuickstartConfig(StageConfig):
    """Notebook 00: a ten-minute tour on one conversation (not a pipeline stage)."""

    profile: str = "smoke"
    """Run profile: smoke, cpu or paper (decides the model; smoke numbers are not meaningful)."""
    data_dir: str = ""
    """Folder holding locomo/locomo10.json; "" searches $MEMR1_DATA_DIR, the user cache, then downloads."""
    conversation: str = "conv-26"
    """Sample id of the conversation toured."""
    embedder: str = "minilm"
    """Embedding model for memory search: minilm or hash."""
    until_turn: int = 120
    """Last dialogue turn (position) replayed into the banks, to keep the tour short."""
    questions: int = 5
    """Questions answered from the banks (those whose evidence lies within the replayed turns)."""
    grpo_steps: int = 2
    """GRPO steps of the Memory-Manager demo (0 skips it)."""
    run_dir: str = "runs/dev/00_quickstart"
    """Folder for the tour: bank store, training run, metrics.json."""
    seed: int = 0
    """Seed for random, numpy and torch."""

    def manager_config(self) -> "ManagerTrainConfig":
        """The small Memory-Manager GRPO run of the tour (8 training turns, short prompts, no checkpoints)."""
        return ManagerTrainConfig(profile=self.profile, data_dir=self.data_dir, embedder=self.embedder,
                                  steps=max(1, self.grpo_steps), train_limit=8, k_per_speaker=5, eval_every=0,
                                  eval_limit=2, save_every=0, run_dir=str(Path(self.run_dir) / "manager"),
                                  seed=self.seed)

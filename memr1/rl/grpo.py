"""GRPO with LoRA through TRL's ``GRPOTrainer`` (docs/design.md §training), for any rows and rewards.

``run_grpo(settings, rows, rewards, run_dir=..., seed=...)`` trains a LoRA adapter on chat-prompt
rows; ``GRPOSettings`` holds the hyperparameters (the training stages' configs derive from it and
add their data fields: ``memr1.stages.train_answer`` and ``train_manager``). ``reward_validator``
builds the validation run every ``eval_every`` steps: greedy completions scored by a reward, logged
as ``eval/em``.

Run folder: ``checkpoints/`` (Trainer checkpoints, ``resume=True`` continues from the last one),
``tensorboard/`` (event files), ``adapter/`` (the final LoRA in PEFT layout, loadable with
``make_generator(base, lora_path=...)``), ``train_config.json`` (settings, seed and the base model the
adapter sits on, which ``resolve_adapter`` reads).

Backends: on CPU the model comes from transformers and LoRA from ``peft_config``; with Unsloth (CUDA
only) from ``FastLanguageModel`` with ``get_peft_model`` and no ``peft_config``. Unsloth is imported
(by ``load_policy``) before trl, transformers and peft, which this module imports inside functions.

Dataset rows reach the reward functions unchanged: the ``datasets.Dataset`` handed to TRL holds only
``prompt`` and a row index, and ``RowReward`` looks the Python row up again, so nested values (a
manager row's ``id_map``) never pass through Arrow, which would add missing keys as None.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memr1.config import StageConfig, check_choice, check_min
from memr1.errors import ConfigError, Memr1Error
from memr1.files import write_json_atomic
from memr1.runs import StageResult

log = logging.getLogger("memr1")

LORA_MODULES = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
"""Modules a LoRA adapter is put on, by the name of ``GRPOSettings.lora_targets``."""
GRPO_BACKENDS = ("", "auto", "transformers", "unsloth")
"""Backends GRPO training accepts ("" means the backend of the profile, filled in by a stage)."""
ENGINES = ("trl", "memr1")
"""Who runs the GRPO loop: TRL's GRPOTrainer (this module) or memr1's own (``memr1.rl.grpo_shared``)."""
ALGORITHMS = ("grpo", "ppo", "sft")
"""grpo and ppo learn from rewards; sft imitates gold completions (the Answer Agent's comparator, ``memr1.rl.sft``)."""
Rows = Sequence[dict[str, Any]]


class TrainingError(Memr1Error):
    """Training could not start or finish (no rows, a run folder in the way, an adapter that will not load)."""


@dataclass
class GRPOSettings(StageConfig):
    """The GRPO and LoRA hyperparameters of a run (TRL ``GRPOConfig`` fields, Memory-R1's values noted).

    A stage config derives from this and from ``RunConfig``; ``run_grpo`` reads only these fields.
    """

    model: str = ""
    """Policy base model: tiny, a hub id or a local folder; "" uses the model of the profile."""
    backend: str = ""
    """auto, transformers or unsloth (CUDA only); "" uses the backend of the profile."""
    engine: str = "trl"
    """trl: the GRPOTrainer of TRL (every completion re-encodes its prompt; Unsloth on CUDA); memr1: our own
    loop, each prompt encoded once per group, exact and 3 to 5 times cheaper on a CPU (memr1.rl.grpo_shared)."""
    steps: int = 4
    """Optimizer steps to run (GRPOConfig max_steps)."""
    learning_rate: float = 1e-5
    """AdamW learning rate of the LoRA weights, held constant (Memory-R1 uses a constant schedule)."""
    num_generations: int = 4
    """Completions sampled per prompt: the GRPO group size."""
    batch_size: int = 4
    """Completions per forward/backward pass (per_device_train_batch_size); a multiple of num_generations."""
    questions_per_step: int = 0
    """Prompts per optimizer step, each with its group of num_generations completions (Memory-R1: 128);
    reached by gradient accumulation over passes of batch_size completions (per process under accelerate).
    0: batch_size / num_generations."""
    max_completion_length: int = 32
    """Token cap of each sampled completion (Memory-R1: 2048)."""
    temperature: float = 1.0
    """Sampling temperature of the training rollouts (Memory-R1: 1.0; validation is greedy)."""
    beta: float = 0.0
    """KL coefficient against the frozen base model (0 loads no reference model, as in TRL)."""
    warmup_steps: int = 0
    """Optimizer steps of linear learning-rate warm-up before the constant rate (0 for none)."""
    max_seq_length: int = 0
    """Prompt + completion tokens the run must fit (the max_seq_length of Unsloth); 0: derived from the data,
    the longest training prompt plus max_completion_length. A prompt that does not fit is an error."""
    lora_r: int = 8
    """LoRA rank of the adapter matrices (their inner dimension)."""
    lora_targets: str = "attention"
    """Layers the LoRA adapts: attention (q, k, v, o projections) or all (also gate, up and down of the MLP)."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by lora_alpha over lora_r)."""
    init_adapter: str = ""
    """Engine memr1: start the LoRA from this trained adapter (or a training run dir holding adapter/) instead
    of zero, e.g. an SFT run, so RL refines a supervised start (the cold start of DeepSeek-R1); its rank, alpha and
    targets must equal lora_r, lora_alpha and lora_targets. The KL reference stays the base model. "": none."""
    save_every: int = 2
    """Steps between checkpoints in run_dir/checkpoints (0 for none, which rules out resume)."""
    eval_every: int = 2
    """Steps between validation EM runs on conv-30 under greedy decoding (0 for none)."""
    resume: bool = False
    """Continue from the last checkpoint in run_dir/checkpoints when there is one."""
    verify_adapter: bool = True
    """After training, load the saved adapter with make_generator to prove it loads."""
    algorithm: str = "grpo"
    """grpo (group-normalised rewards, no critic), ppo (value head, GAE, clipped surrogate; engine memr1 only) or sft
    (supervised fine-tuning on gold answers; the Answer Agent only)."""
    critic_learning_rate: float = 1e-4
    """PPO: AdamW learning rate of the value head (Memory-R1: critic 1e-5, ten times the 1e-6 of the actor)."""
    ppo_epochs: int = 2
    """PPO: passes over the rollouts of each step (MEM1: 1; CleanRL: 4)."""
    minibatches: int = 2
    """PPO: optimizer updates per epoch, each over a share of the groups of the step (at most questions_per_step)."""
    gae_gamma: float = 1.0
    """PPO: discount over generated tokens (MEM1: 1)."""
    gae_lambda: float = 1.0
    """PPO: GAE lambda (MEM1: 1, so advantages are returns minus values)."""
    clip_eps: float = 0.2
    """PPO: ratio clip of the policy surrogate and clip of the value change (MEM1: 0.2)."""
    vf_coef: float = 0.5
    """PPO: weight of the value loss in the loss of the shared LoRA."""
    entropy_coef: float = 0.001
    """PPO: weight of the entropy bonus (MEM1: 0.001)."""
    kl_in_reward: bool = True
    """PPO: beta times log(pi / pi_ref) is taken off the reward of each token (MEM1); False adds beta times the k3
    estimate to the loss, as GRPO does."""

    def check(self) -> None:
        name = type(self).__name__
        check_choice(self, "backend", GRPO_BACKENDS)
        check_choice(self, "engine", ENGINES)
        check_choice(self, "lora_targets", tuple(LORA_MODULES))
        check_choice(self, "algorithm", ALGORITHMS)
        if self.algorithm == "ppo" and self.engine != "memr1":
            raise ConfigError(
                f"{name}: algorithm ppo runs on engine memr1 (TRL ships no PPO trainer); set engine=memr1"
            )
        check_min(self, 1, "ppo_epochs", "minibatches")
        check_min(self, 0, "critic_learning_rate", "vf_coef", "entropy_coef")
        for key in ("gae_gamma", "gae_lambda"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{name}.{key} must lie in [0, 1], got {getattr(self, key)}")
        if self.clip_eps <= 0:
            raise ConfigError(f"{name}.clip_eps must be > 0, got {self.clip_eps}")
        if self.init_adapter and (self.engine != "memr1" or self.algorithm == "sft"):
            raise ConfigError(
                f"{name}.init_adapter starts GRPO or PPO on engine memr1 from a trained adapter; "
                f"got engine={self.engine}, algorithm={self.algorithm}"
            )
        if self.num_generations < 2:
            raise ConfigError(
                f"{name}.num_generations must be >= 2 (GRPO compares completions within a "
                f"group), got {self.num_generations}"
            )
        if self.batch_size < 1 or self.batch_size % self.num_generations:
            fix = self.num_generations * max(1, self.batch_size // self.num_generations)
            raise ConfigError(
                f"{name}.batch_size ({self.batch_size}) must be a positive multiple of "
                f"num_generations ({self.num_generations}): every prompt needs its whole group "
                f"in one step; try batch_size={fix}"
            )
        check_min(self, 1, "steps", "max_completion_length", "lora_r", "lora_alpha")
        check_min(self, 0, "learning_rate", "beta", "save_every", "eval_every", "questions_per_step")
        check_min(self, 0, "warmup_steps", "max_seq_length")
        completions = self.questions_per_step * self.num_generations
        if completions % self.batch_size:
            raise ConfigError(
                f"{name}.questions_per_step ({self.questions_per_step}) x num_generations ({self.num_generations}) "
                f"= {completions} completions must be a multiple of batch_size ({self.batch_size}), which is "
                f"accumulated {completions / self.batch_size:.2f} times"
            )
        if self.temperature <= 0:
            raise ConfigError(
                f"{name}.temperature must be > 0 (training samples; validation is greedy), got {self.temperature}"
            )

    @property
    def accumulation_steps(self) -> int:
        """Forward/backward passes per optimizer step (gradient accumulation)."""
        return max(1, self.questions_per_step * self.num_generations // self.batch_size)


@dataclass
class TrainResult(StageResult):
    """What a GRPO run leaves behind (the training stages' results extend it)."""

    steps: int
    """Optimizer steps done in total (a resumed run counts the steps before the resume)."""
    adapter: str
    """Final LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    resumed_from: str | None
    """Checkpoint folder the run continued from, if any."""
    log_history: list[dict]
    """``trainer.state.log_history``: one dict per step (loss, reward, ...) plus the final summary."""
    eval_history: list[dict]
    """``{"step", "eval/em", ...}`` per validation run (greedy, conv-30)."""

    @property
    def adapter_path(self) -> Path:
        return Path(self.adapter)

    def step_logs(self) -> list[dict]:
        """The per-step training entries of ``log_history`` (those with a ``loss``)."""
        return [e for e in self.log_history if "loss" in e]


class RowReward:
    """A TRL reward function that gets the full dataset rows of its batch back as keyword lists.

    TRL passes the ``row`` column (indices into ``rows``); every other key of those rows is handed to
    ``func`` as a list, exactly as TRL would hand dataset columns, but as the original Python objects.
    """

    def __init__(self, func: Callable[..., list[float]], rows: Rows):
        self.func, self.rows = func, rows
        self.__name__ = getattr(func, "__name__", type(func).__name__)  # TRL logs rewards/<name>/mean

    def __call__(self, completions, row, **kwargs):
        picked = [self.rows[i] for i in row]
        columns = {k: [r[k] for r in picked] for k in picked[0] if k != "prompt"}
        return self.func(completions, **{**kwargs, **columns})


def reward_validator(rows: Rows, reward: Callable[..., list], max_new_tokens: int) -> Callable[[Any, Any], dict]:
    """``(model, tokenizer) -> {"eval/em", "eval/n"}``: greedy completions of ``rows`` scored by ``reward``.

    The reward gets the rows' columns as in training; scores of None (nothing to score) are left out.
    """

    def validate(model, tokenizer) -> dict[str, float]:
        prompts = [r["prompt"] for r in rows]
        texts = greedy_completions(model, tokenizer, prompts, max_new_tokens)
        columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
        scores = [s for s in reward(completions=as_chat(texts), prompts=prompts, **columns) if s is not None]
        return {"eval/em": sum(scores) / max(1, len(scores)), "eval/n": len(scores)}

    return validate


def resolve_adapter(adapter_or_run: str, base_model: str, field: str = "answer_model") -> tuple[str, str]:
    """``(base model, lora_path)`` of a role's model: a trained adapter, or the plain base.

    ``""`` → ``base_model``, no adapter. A folder holding ``adapter_config.json`` (an adapter) or
    ``adapter/adapter_config.json`` (a training run dir of stage 03 or 04): that adapter, on the base
    recorded in the run's ``train_config.json`` (else the adapter's ``base_model_name_or_path``).
    ``field`` names the setting in the error message.
    """
    if not adapter_or_run:
        return base_model, ""
    path = Path(adapter_or_run).expanduser()
    adapter = path / "adapter" if (path / "adapter" / "adapter_config.json").is_file() else path
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(
            f"{field} {adapter_or_run!r} is neither a training run dir (with adapter/) nor "
            'a LoRA adapter folder (with adapter_config.json); pass one, or "" for the base model'
        )
    for cfg_file in (adapter.parent / "train_config.json", adapter / "train_config.json"):
        if cfg_file.is_file():
            saved = json.loads(cfg_file.read_text())
            return saved.get("base_model") or saved["model"], str(adapter)
    return json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"], str(adapter)


def run_grpo(
    settings: GRPOSettings,
    train_rows: Rows,
    reward_funcs: Sequence[Callable],
    *,
    run_dir: str | os.PathLike,
    seed: int,
    fallback: str = "",
    validator: Callable[[Any, Any], dict[str, float]] | None = None,
    generation_kwargs: dict[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    on_model: Callable[[Any, Any], None] | None = None,
) -> TrainResult:
    """Train a LoRA on ``settings.model`` with GRPO over ``train_rows`` (each with a chat ``prompt``).

    Args:
        settings: the hyperparameters, with model and backend filled in (a stage's ``cfg.resolved()``).
        train_rows: dicts with ``prompt`` (a list of messages) and any columns the rewards read.
        reward_funcs: TRL reward functions ``f(completions, **columns) -> list[float]``.
        run_dir: folder for checkpoints/, tensorboard/, adapter/ and train_config.json.
        seed: seeds random, numpy and torch before the model loads (LoRA init), and TRL's sampler.
        fallback: model loaded when ``settings.model`` cannot be had from the hub ("" fails instead).
        validator: ``(model, tokenizer) -> {"eval/em": ...}``, called every ``settings.eval_every`` steps.
        generation_kwargs: extra ``GenerationConfig`` fields for the rollouts (e.g. ``suppress_tokens``).
        callbacks: extra ``transformers.TrainerCallback`` objects.
        on_model: called with ``(model, tokenizer)`` once the trainer holds the LoRA-wrapped model,
            before training (``memr1.rl.frozen.FrozenBase.bind``: a frozen agent on the same weights).
    """
    run_dir = Path(run_dir)
    resume_from, policy = start_trl_run(settings, train_rows, run_dir, seed, fallback, "run_grpo")
    seq_cap = sequence_cap(settings, train_rows, policy)

    from datasets import Dataset

    from memr1.rl.callbacks import ValidationCallback, trainer_class

    model, peft_config = _with_lora(policy, settings, seed)
    args = grpo_args(
        settings, run_dir=run_dir, seed=seed, unsloth=policy.backend == "unsloth", generation_kwargs=generation_kwargs
    )
    dataset = Dataset.from_list([{"prompt": r["prompt"], "row": i} for i, r in enumerate(train_rows)])
    extra = [ValidationCallback(validator, settings.eval_every, policy.tokenizer)] if validator else []
    trainer = trainer_class()(
        model=model,
        reward_funcs=[RowReward(f, train_rows) for f in reward_funcs],
        args=args,
        train_dataset=dataset,
        processing_class=policy.tokenizer,
        peft_config=peft_config,
        callbacks=[*extra, *callbacks],
    )
    if on_model is not None:
        on_model(trainer.model, policy.tokenizer)
    return train_trl(trainer, settings, policy, run_dir, seed, fallback, resume_from, {"sequence_cap": seq_cap})


def start_trl_run(settings: GRPOSettings, rows: Rows, run_dir: Path, seed: int, fallback: str, caller: str):
    """``(checkpoint to resume from or None, policy)``: the checks and model loading of a TRL-trainer run."""
    from memr1.llm.load import load_policy
    from memr1.seeding import seed_everything

    settings.validate()
    if not settings.model or not settings.backend:
        raise ConfigError(
            f"{caller} needs model and backend, got {settings.model!r} and {settings.backend!r}; "
            "a stage fills in its profile's with cfg.resolved()"
        )
    if not rows:
        raise TrainingError("no training rows: check data_dir and train_limit (0 means all rows)")
    ckpt_dir = run_dir / "checkpoints"
    resume_from = latest_checkpoint(ckpt_dir)
    if resume_from is not None and not settings.resume:
        raise TrainingError(
            f"{ckpt_dir} already holds checkpoints; set resume=True to continue that run, or choose a new run_dir"
        )
    seed_everything(seed)
    load_kwargs: dict[str, Any] = {"max_seq_length": settings.max_seq_length} if settings.max_seq_length else {}
    return resume_from, load_policy(settings.model, settings.backend, fallback=fallback, **load_kwargs)


def train_trl(trainer, settings, policy, run_dir: Path, seed: int, fallback: str, resume_from, extra) -> TrainResult:
    """Run a TRL trainer built by a run function (GRPO or SFT): config file, (resumed) training, the adapter
    saved and checked, the result."""
    from transformers.integrations import TensorBoardCallback

    started = time.perf_counter()
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(run_dir / "tensorboard")
    base_model = fallback if policy.fallback_used else settings.model  # what the adapter sits on
    if trainer.accelerator.is_main_process:
        write_json_atomic(
            run_dir / "train_config.json",
            {**settings.to_dict(), "run_dir": str(run_dir), "seed": seed, "base_model": base_model,
             "resolved_model": policy.resolved, **extra},
        )  # fmt: skip
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)

    adapter = run_dir / "adapter"
    trainer.save_model(str(adapter))  # main process only; PEFT layout
    trainer.accelerator.wait_for_everyone()
    if settings.verify_adapter and trainer.accelerator.is_main_process:
        verify_adapter(base_model, adapter, policy.backend)
    history = [dict(e) for e in trainer.state.log_history]
    evals = [
        {"step": e["step"], **{k: v for k, v in e.items() if k.startswith("eval/")}} for e in history if "eval/em" in e
    ]
    log.info(
        "%s: %d steps in %.1f s, adapter in %s",
        settings.algorithm.upper(), trainer.state.global_step, time.perf_counter() - started, adapter,
    )  # fmt: skip
    return TrainResult(
        steps=trainer.state.global_step,
        adapter=str(adapter),
        resumed_from=str(resume_from) if resume_from is not None else None,
        log_history=history,
        eval_history=evals,
    )


def grpo_args(
    settings: GRPOSettings,
    *,
    run_dir: str | os.PathLike,
    seed: int,
    unsloth: bool = False,
    generation_kwargs: dict | None = None,
):
    """The ``GRPOConfig`` of a run: ``settings`` mapped onto TRL's fields, plus the CPU/GPU switches."""
    import torch
    from trl import GRPOConfig

    return GRPOConfig(
        **trainer_args(settings, run_dir=run_dir, seed=seed),
        per_device_train_batch_size=settings.batch_size,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        beta=settings.beta,
        epsilon=settings.clip_eps,
        gradient_checkpointing=torch.cuda.is_available() and not unsloth,  # Unsloth brings its own; on CPU it costs
        generation_kwargs=generation_kwargs,
    )


def trainer_args(settings: GRPOSettings, *, run_dir: str | os.PathLike, seed: int) -> dict[str, Any]:
    """The ``TrainingArguments`` fields every TRL run of memr1 shares (GRPO and SFT): budget, schedule,
    checkpoints, logging and the CPU/GPU switches."""
    import torch

    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(Path(run_dir) / "checkpoints"),
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant_with_warmup" if settings.warmup_steps else "constant",
        warmup_steps=settings.warmup_steps,
        gradient_accumulation_steps=settings.accumulation_steps,
        seed=seed,
        logging_steps=1,
        save_strategy="steps" if settings.save_every else "no",
        save_steps=settings.save_every or 1,
        report_to="tensorboard",
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
    )


def sequence_cap(settings: GRPOSettings, rows: Rows, policy: Any) -> dict[str, int]:
    """The longest prompt of ``rows`` (chat template applied) and the cap it needs; ConfigError if too long.

    The cap is ``settings.max_seq_length``, or when 0 the longest prompt plus ``max_completion_length``;
    it must also fit the model's context window (``max_position_embeddings``; Unsloth's
    ``max_seq_length``). TRL itself no longer truncates prompts, so a prompt over the cap would
    otherwise run into position limits or be cut by Unsloth.
    """
    tok = policy.tokenizer
    texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    longest = max(len(tok(t, add_special_tokens=False).input_ids) for t in texts)
    needed = longest + settings.max_completion_length
    cap = settings.max_seq_length or needed
    window = getattr(policy.model, "max_seq_length", None) or getattr(
        policy.model.config, "max_position_embeddings", None
    )
    if needed > cap or (window and needed > window):
        limit = min(c for c in (cap, window) if c)
        raise ConfigError(
            f"the longest training prompt has {longest} tokens; with max_completion_length "
            f"{settings.max_completion_length} it needs {needed}, over the cap of {limit} "
            "(max_seq_length or the model's window): shorten the prompts (fewer memories) or raise the cap"
        )
    return {"longest_prompt": longest, "max_seq_length": cap}


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step that holds a ``trainer_state.json``."""
    found = [
        (int(p.name.split("-")[-1]), p)
        for p in Path(ckpt_dir).glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(found)[1] if found else None


def verify_adapter(base_model: str, adapter: Path, backend: str = "transformers") -> None:
    """Load ``adapter`` on ``base_model`` with ``make_generator``; TrainingError when it does not load."""
    from memr1.llm.backends import make_generator

    missing = [f for f in ("adapter_config.json", "adapter_model.safetensors") if not (adapter / f).is_file()]
    if missing:
        raise TrainingError(f"{adapter} lacks {missing}: the adapter was not saved in PEFT layout")
    try:
        make_generator(base_model, backend, lora_path=str(adapter))
    except Exception as exc:  # noqa: BLE001 - any loader failure is one typed error
        raise TrainingError(
            f"the adapter in {adapter} does not load on {base_model!r}: {type(exc).__name__}: {exc}"
        ) from exc


def greedy_completions(model: Any, tokenizer: Any, prompts: Sequence[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy completions of the model being trained (validation); draws nothing from any RNG."""
    from memr1.llm.backends import TransformersGenerator
    from memr1.llm.generate import Sampling

    generator = TransformersGenerator.from_model(model, tokenizer, name="policy", batch_size=8)
    return [g.text for g in generator.generate(list(prompts), Sampling(max_new_tokens))]


# --------------------------------------------------------------------------- helpers


def _with_lora(policy, settings: GRPOSettings, seed: int):
    """``(model, peft_config)``: a LoraConfig for TRL on transformers, or an Unsloth PEFT model."""
    if policy.backend == "unsloth":
        # UNTESTED (no CUDA machine here): Unsloth's documented GRPO recipe; it needs peft_config=None.
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            policy.model,
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            target_modules=list(LORA_MODULES[settings.lora_targets]),
            use_gradient_checkpointing="unsloth",
            random_state=seed,
        )
        return model, None
    return policy.model, lora_config(settings)


def lora_config(settings: GRPOSettings):
    """The PEFT ``LoraConfig`` of ``settings`` (rank, alpha, ``lora_targets``, no dropout): both engines use it."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        target_modules=list(LORA_MODULES[settings.lora_targets]),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )


def as_chat(texts: Sequence[str]) -> list[list[dict[str, str]]]:
    """Completions in TRL's conversational form, as the rewards receive them in training."""
    return [[{"role": "assistant", "content": t}] for t in texts]


class main_process_first:
    """Under ``accelerate launch``: rank 0 builds the rows (and the teacher store) before the other ranks."""

    def __enter__(self):
        self._ctx = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self._ctx = PartialState().main_process_first()
            self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc) if self._ctx is not None else False


__all__ = [
    "GRPOSettings",
    "TrainResult",
    "TrainingError",
    "RowReward",
    "run_grpo",
    "grpo_args",
    "sequence_cap",
    "reward_validator",
    "resolve_adapter",
    "latest_checkpoint",
    "verify_adapter",
    "greedy_completions",
    "as_chat",
    "lora_config",
    "LORA_MODULES",
    "ENGINES",
    "ALGORITHMS",
    "main_process_first",
]

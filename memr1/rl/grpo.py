"""GRPO with LoRA through TRL's ``GRPOTrainer`` (docs/design.md §training), for any rows and rewards.

``run_grpo(settings, rows, rewards, run_dir=..., seed=...)`` trains a LoRA adapter on chat-prompt
rows; ``GRPOSettings`` (``memr1.rl.settings``, re-exported here) holds the hyperparameters (the training
stages' configs derive from it and add their data fields: ``memr1.stages.train_answer`` and
``train_manager``). ``reward_validator`` builds the validation run every ``eval_every`` steps: greedy
completions scored by a reward, logged as ``eval/em``.

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
from pathlib import Path
from typing import Any

from memr1.errors import ConfigError
from memr1.files import write_json_atomic
from memr1.rl.settings import (
    ALGORITHMS,
    ENGINES,
    LORA_MODULES,
    GRPOSettings,
    Rows,
    TrainingError,
    TrainResult,
    lora_config,
)

log = logging.getLogger("memr1")


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

"""GRPO training of the Answer Agent and the Memory Manager (TRL ``GRPOTrainer`` + LoRA, DESIGN §11).

``train_answer_agent`` trains on the Answer-Agent rows of conv-26 with the EM reward;
``train_memory_manager`` trains on the manager rows of conv-26, rewarded by the EM of a *frozen*
Answer Agent answering from the bank the sampled operations produce. Both validate on conv-30 every
``eval_every`` steps under greedy decoding (logged as ``eval/em``) and share ``run_grpo``, which
takes any rows and reward functions (the learning test uses it directly).

Run folder: ``checkpoints/`` (Trainer checkpoints, ``resume=True`` continues from the last one),
``tensorboard/`` (event files), ``adapter/`` (the final LoRA in PEFT layout, loadable with
``make_generator(base, lora_path=...)``), ``train_config.json`` (the resolved config), ``store/``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from memr1.config import AnswerTrainConfig, GRPOTrainConfig, ManagerTrainConfig, get_profile
from memr1.errors import ConfigError, Memr1Error

log = logging.getLogger("memr1")

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
Rows = Sequence[dict[str, Any]]


class TrainingError(Memr1Error):
    """Training could not start or finish (no rows, a run folder in the way, an adapter that will not load)."""


@dataclass
class TrainResult:
    """What a GRPO run leaves behind."""

    run_dir: Path
    adapter_path: Path
    """Final LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    log_history: list[dict]
    """``trainer.state.log_history``: one dict per step (loss, reward, ...) plus the final summary."""
    eval_history: list[dict]
    """``{"step", "eval/em", ...}`` per validation run (greedy, conv-30)."""
    steps: int
    """Optimizer steps done in total (a resumed run counts the steps before the resume)."""
    resumed_from: str | None = None
    """Checkpoint folder the run continued from, if any."""

    def step_logs(self) -> list[dict]:
        """The per-step training entries of ``log_history`` (those with a ``loss``)."""
        return [e for e in self.log_history if "loss" in e]

    def metrics(self) -> dict:
        """What the training notebooks write to metrics.json (the report draws the curves from it)."""
        return {"steps": self.steps, "adapter": str(self.adapter_path), "resumed_from": self.resumed_from,
                "log_history": self.log_history, "eval_history": self.eval_history}


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


# --------------------------------------------------------------------------- stages


def train_answer_agent(cfg: AnswerTrainConfig, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """GRPO on the Answer-Agent rows of conv-26, reward ``answer_em_reward``; validation EM on conv-30."""
    from memr1.rl.datasets import answer_agent_rows
    from memr1.rl.rewards import answer_em_reward

    cfg = _checked(cfg, AnswerTrainConfig)
    data, embedder, store = _data(cfg)
    with _main_process_first():
        train = answer_agent_rows(data, "train", embedder, store_dir=store, k_per_speaker=cfg.k_per_speaker,
                                  limit=cfg.train_limit, progress=True)
        val = answer_agent_rows(data, "validation", embedder, store_dir=store, k_per_speaker=cfg.k_per_speaker,
                                limit=cfg.eval_limit, progress=True)

    def validator(model, tokenizer) -> dict[str, float]:
        texts = greedy_completions(model, tokenizer, [r["prompt"] for r in val], cfg.max_completion_length)
        scores = answer_em_reward(_as_chat(texts), gold=[r["gold"] for r in val])
        return {"eval/em": sum(scores) / max(1, len(scores)), "eval/n": len(scores)}

    return run_grpo(cfg, train, [answer_em_reward], validator=validator if val else None, callbacks=callbacks)


def train_memory_manager(cfg: ManagerTrainConfig, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """GRPO on the manager rows of conv-26; reward: EM of the frozen Answer Agent (``cfg.answer_model``)."""
    from memr1.agents.answer import AnswerAgent
    from memr1.llm.backends import make_generator
    from memr1.llm.generate import Sampling
    from memr1.rl.datasets import manager_rows
    from memr1.rl.rewards import ManagerReward

    cfg = _checked(cfg, ManagerTrainConfig)
    data, embedder, store = _data(cfg)
    with _main_process_first():
        train = manager_rows(data, "train", embedder, store_dir=store, k_similar=cfg.k_similar, progress=True)
        val = manager_rows(data, "validation", embedder, store_dir=store, k_similar=cfg.k_similar, progress=True)
    train = train[:cfg.train_limit] if cfg.train_limit else train
    val = val[:cfg.eval_limit] if cfg.eval_limit else val
    base, lora = resolve_answer_model(cfg.answer_model, cfg.model)
    frozen = make_generator(base, cfg.backend, lora_path=lora, fallback=get_profile(cfg.profile).fallback_model)
    greedy = Sampling(max_new_tokens=cfg.max_completion_length)
    agent = AnswerAgent(frozen, greedy, k_per_speaker=cfg.k_per_speaker)
    reward = ManagerReward(agent, embedder, log_dir=Path(cfg.run_dir) / "reward_log", k_per_speaker=cfg.k_per_speaker)

    def validator(model, tokenizer) -> dict[str, float]:
        texts = greedy_completions(model, tokenizer, [r["prompt"] for r in val], cfg.max_completion_length)
        columns = {k: [r[k] for r in val] for k in val[0] if k != "prompt"}
        scores = reward(completions=_as_chat(texts), prompts=[r["prompt"] for r in val], **columns)
        scores = [s for s in scores if s is not None]
        return {"eval/em": sum(scores) / max(1, len(scores)), "eval/n": len(scores)}

    return run_grpo(cfg, train, [reward], validator=validator if val else None, callbacks=callbacks)


def resolve_answer_model(answer_model: str, base_model: str) -> tuple[str, str]:
    """``(base model, lora_path)`` of the frozen Answer Agent.

    ``""`` → the policy's own base, no adapter. A folder holding ``adapter_config.json`` (an adapter)
    or ``adapter/adapter_config.json`` (an answer-agent run dir): that adapter, on the base recorded in
    the run's ``train_config.json`` (else the adapter's ``base_model_name_or_path``).
    """
    if not answer_model:
        return base_model, ""
    path = Path(answer_model).expanduser()
    adapter = path / "adapter" if (path / "adapter" / "adapter_config.json").is_file() else path
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"answer_model {answer_model!r} is neither an answer-agent run dir (with adapter/) nor "
                          "a LoRA adapter folder (with adapter_config.json); pass one, or \"\" for the base model")
    for cfg_file in (adapter.parent / "train_config.json", adapter / "train_config.json"):
        if cfg_file.is_file():
            saved = json.loads(cfg_file.read_text())
            return saved.get("base_model") or saved["model"], str(adapter)
    return json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"], str(adapter)


# --------------------------------------------------------------------------- the shared loop


def run_grpo(cfg: GRPOTrainConfig, train_rows: Rows, reward_funcs: Sequence[Callable], *,
             validator: Callable[[Any, Any], dict[str, float]] | None = None,
             generation_kwargs: dict[str, Any] | None = None, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train a LoRA on ``cfg.model`` with GRPO over ``train_rows`` (each with a chat ``prompt``).

    Args:
        cfg: the stage config (any ``GRPOTrainConfig``); profile defaults are filled in here.
        train_rows: dicts with ``prompt`` (a list of messages) and any columns the rewards read.
        reward_funcs: TRL reward functions ``f(completions, **columns) -> list[float]``.
        validator: ``(model, tokenizer) -> {"eval/em": ...}``, called every ``cfg.eval_every`` steps.
        generation_kwargs: extra ``GenerationConfig`` fields for the rollouts (e.g. ``suppress_tokens``).
        callbacks: extra ``transformers.TrainerCallback`` objects.
    """
    from memr1.llm.load import load_policy
    from memr1.seeding import seed_everything

    cfg = _checked(cfg, GRPOTrainConfig)
    if not train_rows:
        raise TrainingError("no training rows: check data_dir and train_limit (0 means all rows)")
    run_dir, started = Path(cfg.run_dir), time.perf_counter()
    ckpt_dir = run_dir / "checkpoints"
    resume_from = latest_checkpoint(ckpt_dir)
    if resume_from is not None and not cfg.resume:
        raise TrainingError(f"{ckpt_dir} already holds checkpoints; set resume=True to continue that run, "
                            "or choose a new run_dir")
    seed_everything(cfg.seed)
    policy = load_policy(cfg.model, cfg.backend, fallback=get_profile(cfg.profile).fallback_model)  # Unsloth first

    from datasets import Dataset
    from transformers.integrations import TensorBoardCallback

    from memr1.rl.callbacks import ValidationCallback, trainer_class

    model, peft_config = _with_lora(policy, cfg)
    args = grpo_args(cfg, unsloth=policy.backend == "unsloth", generation_kwargs=generation_kwargs)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "row": i} for i, r in enumerate(train_rows)])
    extra = [ValidationCallback(validator, cfg.eval_every, policy.tokenizer)] if validator else []
    trainer = trainer_class()(
        model=model, reward_funcs=[RowReward(f, train_rows) for f in reward_funcs], args=args,
        train_dataset=dataset, processing_class=policy.tokenizer, peft_config=peft_config,
        callbacks=[*extra, *callbacks])
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(run_dir / "tensorboard")
    base_model = get_profile(cfg.profile).fallback_model if policy.fallback_used else cfg.model  # adapter's base
    if trainer.accelerator.is_main_process:
        from memr1.runs import write_json_atomic

        write_json_atomic(run_dir / "train_config.json", {**cfg.to_dict(), "base_model": base_model,
                                                          "resolved_model": policy.resolved})
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)

    adapter = run_dir / "adapter"
    trainer.save_model(str(adapter))  # main process only; PEFT layout
    trainer.accelerator.wait_for_everyone()
    if cfg.verify_adapter and trainer.accelerator.is_main_process:
        verify_adapter(base_model, adapter, policy.backend)
    history = [dict(e) for e in trainer.state.log_history]
    evals = [{"step": e["step"], **{k: v for k, v in e.items() if k.startswith("eval/")}}
             for e in history if "eval/em" in e]
    log.info("GRPO: %d steps in %.1f s, adapter in %s", trainer.state.global_step,
             time.perf_counter() - started, adapter)
    return TrainResult(run_dir, adapter, history, evals, trainer.state.global_step,
                       str(resume_from) if resume_from is not None else None)


def grpo_args(cfg: GRPOTrainConfig, *, unsloth: bool = False, generation_kwargs: dict | None = None):
    """The ``GRPOConfig`` of a run: ``cfg`` mapped onto TRL's fields, plus the CPU/GPU switches."""
    import torch
    from trl import GRPOConfig

    cuda = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=str(Path(cfg.run_dir) / "checkpoints"), max_steps=cfg.steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant", per_device_train_batch_size=cfg.batch_size,
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, beta=cfg.beta, seed=cfg.seed, logging_steps=1,
        save_strategy="steps" if cfg.save_every else "no", save_steps=cfg.save_every or 1,
        report_to="tensorboard", use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=cuda and not unsloth,  # Unsloth brings its own; on CPU it only costs time
        generation_kwargs=generation_kwargs)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step that holds a ``trainer_state.json``."""
    found = [(int(p.name.split("-")[-1]), p) for p in Path(ckpt_dir).glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
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
        raise TrainingError(f"the adapter in {adapter} does not load on {base_model!r}: "
                            f"{type(exc).__name__}: {exc}") from exc


def greedy_completions(model: Any, tokenizer: Any, prompts: Sequence[list[dict]],
                       max_new_tokens: int) -> list[str]:
    """Greedy completions of the model being trained (validation); draws nothing from any RNG."""
    from memr1.llm.backends import TransformersGenerator
    from memr1.llm.generate import Sampling
    from memr1.llm.load import Policy

    policy = Policy(model=model, tokenizer=tokenizer, name="policy", resolved="policy", backend="transformers")
    gens = TransformersGenerator(policy, batch_size=8).generate(list(prompts), Sampling(max_new_tokens))
    return [g.text for g in gens]


# --------------------------------------------------------------------------- helpers


def _checked(cfg: GRPOTrainConfig, kind: type) -> Any:
    if not isinstance(cfg, kind):
        raise ConfigError(f"expected an instance of {kind.__name__}, got {type(cfg).__name__}")
    cfg = cfg.resolved()
    cfg.validate()
    return cfg


def _with_lora(policy, cfg: GRPOTrainConfig):
    """``(model, peft_config)``: a LoraConfig for TRL on transformers, or an Unsloth PEFT model."""
    if policy.backend == "unsloth":
        # UNTESTED (no CUDA machine here): Unsloth's documented GRPO recipe; it needs peft_config=None.
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            policy.model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(LORA_TARGETS),
            use_gradient_checkpointing="unsloth", random_state=cfg.seed)
        return model, None
    from peft import LoraConfig

    return policy.model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(LORA_TARGETS),
                                    lora_dropout=0.0, task_type="CAUSAL_LM")


def _data(cfg: GRPOTrainConfig):
    """LoCoMo, the embedder and the teacher-store folder of a stage."""
    from memr1.data.locomo import load_locomo
    from memr1.memory.embed import make_embedder

    embedder = make_embedder(cfg.embedder)  # one store per embedder: a bank only reopens with its own
    store = Path(cfg.store_dir or Path(cfg.run_dir) / "store") / embedder.name
    return load_locomo(cfg.data_dir or None), embedder, store


def _as_chat(texts: Sequence[str]) -> list[list[dict[str, str]]]:
    """Completions in TRL's conversational form, as the rewards receive them in training."""
    return [[{"role": "assistant", "content": t}] for t in texts]


class _main_process_first:
    """Under ``accelerate launch``: rank 0 builds the rows (and the store) before the other ranks."""

    def __enter__(self):
        self._ctx = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self._ctx = PartialState().main_process_first()
            self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc) if self._ctx is not None else False


__all__ = ["TrainResult", "TrainingError", "RowReward", "run_grpo", "grpo_args", "train_answer_agent",
           "train_memory_manager", "resolve_answer_model", "latest_checkpoint", "verify_adapter", "greedy_completions"]

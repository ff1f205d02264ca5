"""verl trainer configs for memr1's exported tasks: PPO and GRPO with the papers' hyperparameters.

Each config is a Hydra file that extends verl's own ``ppo_trainer`` config (``defaults: [ppo_trainer,
_self_]``, found through ``hydra.searchpath: [pkg://verl.trainer.config]``, the way verl's recipes extend
it), so verl's entry point runs it as it is and any key stays overridable on the command line::

    python -m verl.trainer.main_ppo --config-path=$PWD/runs/verl --config-name=answer_grpo

Every value written carries a comment naming its source, one of ``SOURCES``: the Memory-R1 paper
(Appendix D: verl, PPO and GRPO, global batch 128, micro-batch 2 per GPU, prompt 4096 and response
2048 tokens, actor learning rate 1e-6, critic 1e-5, a constant schedule, rollouts at temperature 1,
greedy validation, 4 GPUs), MEM1's released ``train_ppo.sh`` (PPO with a critic copy of the base model,
GAE gamma = lambda = 1, clip 0.2, entropy 0.001, one epoch, KL 0.001 in the reward), verl's own
examples, or memr1's choice where neither paper says (group size, KL weight and step count of
Memory-R1). Keys verl already sets to the value we want are still written when a paper states them,
so the file reads as the paper's recipe. What memr1's own trainer calls each setting is in
``MEMR1_TO_VERL``.

Algorithms per task (``ALGORITHMS``): Memory-R1 trains both agents with PPO and with GRPO. MEM1 is
exported with PPO only, because that is how MEM1 trains (one rollout per task, a critic, KL in the
reward); the GRPO branch of MEM1's own code is unused and would put every sample in one group (its data never
sets the group id). Group-normalised MEM1 training is memr1's own deviation (``memr1 train mem1``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memr1.errors import ConfigError
from memr1.files import write_text_atomic

ALGORITHMS = {"answer": ("ppo", "grpo"), "manager": ("ppo", "grpo"), "mem1": ("ppo",)}
"""The verl algorithms exported per task."""
PAPER_MODELS = {"answer": "Qwen/Qwen2.5-7B-Instruct", "manager": "Qwen/Qwen2.5-7B-Instruct", "mem1": "Qwen/Qwen2.5-7B"}
"""Default policy per task: a Memory-R1 backbone, and MEM1's base (not instruct) model."""

PAPER, MEM1_CODE = "Memory-R1 paper (App. D)", "MEM1 train_ppo.sh"
VERL_EXAMPLE, MEMR1 = "verl examples (not in the paper)", "memr1 choice (not in the paper)"
SOURCES = (PAPER, MEM1_CODE, VERL_EXAMPLE, MEMR1, "export")

MEMR1_TO_VERL = {
    "model": "actor_rollout_ref.model.path",
    "learning_rate": "actor_rollout_ref.actor.optim.lr",
    "num_generations": "actor_rollout_ref.rollout.n",
    "questions_per_step": "data.train_batch_size",
    "batch_size": "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    "max_completion_length": "data.max_response_length",
    "max_seq_length": "data.max_prompt_length",
    "temperature": "actor_rollout_ref.rollout.temperature",
    "beta": "actor_rollout_ref.actor.kl_loss_coef",
    "kl_in_reward": "algorithm.use_kl_in_reward",
    "warmup_steps": "actor_rollout_ref.actor.optim.lr_warmup_steps",
    "steps": "trainer.total_training_steps",
    "lora_r": "actor_rollout_ref.model.lora_rank",
    "lora_alpha": "actor_rollout_ref.model.lora_alpha",
    "lora_targets": "actor_rollout_ref.model.target_modules",
    "save_every": "trainer.save_freq",
    "eval_every": "trainer.test_freq",
    "resume": "trainer.resume_mode",
    "algorithm": "algorithm.adv_estimator",
    "critic_learning_rate": "critic.optim.lr",
    "ppo_epochs": "actor_rollout_ref.actor.ppo_epochs",
    "minibatches": "actor_rollout_ref.actor.ppo_mini_batch_size",
    "gae_gamma": "algorithm.gamma",
    "gae_lambda": "algorithm.lam",
    "clip_eps": "actor_rollout_ref.actor.clip_ratio",
    "entropy_coef": "actor_rollout_ref.actor.entropy_coeff",
}
"""`memr1.rl.settings.GRPOSettings` field → the verl key that plays its part. Not one to one: ``minibatches``
is ``train_batch_size / ppo_mini_batch_size``; ``max_seq_length`` is prompt plus response length;
``beta`` is ``algorithm.kl_ctrl.kl_coef`` instead when ``kl_in_reward``; ``batch_size`` counts
completions per pass, verl per GPU; ``clip_eps`` also clips memr1's value loss, verl's critic uses
``critic.cliprange_value``."""
NO_VERL_EQUIVALENT = {
    "backend": "verl trains with FSDP or Megatron and samples with vLLM or SGLang; Unsloth has no place",
    "engine": "memr1's own GRPO loop versus TRL; verl is a third engine",
    "verify_adapter": "memr1 reloads its saved LoRA adapter; verl checkpoints through its own manager",
    "vf_coef": "memr1's critic is a value head sharing the policy's LoRA; verl's is a separate model "
    "with its own optimizer (critic.optim.lr), so the two losses are never summed",
    "init_adapter": "verl starts from actor_rollout_ref.model.path: merge the SFT adapter into the base "
    "(PEFT merge_and_unload), save it, and export with --model pointing at that folder",
}
"""GRPOSettings fields with no verl key, and why."""


@dataclass(frozen=True)
class Setting:
    """One verl config value and where it comes from."""

    key: str
    """Dotted path in verl's ``ppo_trainer`` config."""
    value: Any
    source: str


def memory_r1_settings(algorithm: str, n_train: int, model: str) -> list[Setting]:
    """Memory-R1's recipe, the same for both agents, with ``ppo`` or ``grpo``."""
    group = 5 if algorithm == "grpo" else 1
    batch = _batch(min(128, n_train), group, n_gpus=4)
    steps = 200
    out = [
        Setting("data.train_batch_size", batch, PAPER if batch == 128 else "export: the paper's 128, cut to the rows"),
        Setting("data.max_prompt_length", 4096, PAPER),
        Setting("data.max_response_length", 2048, PAPER),
        Setting("actor_rollout_ref.model.path", model, "export (--model)"),
        Setting("actor_rollout_ref.actor.optim.lr", 1e-6, PAPER),
        Setting("actor_rollout_ref.actor.optim.lr_scheduler_type", "constant", PAPER),
        Setting("actor_rollout_ref.actor.ppo_mini_batch_size", batch, MEMR1 + ": one update per batch"),
        Setting("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", 2, PAPER),
        Setting("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", 2, PAPER + ": the micro-batch"),
        Setting("actor_rollout_ref.rollout.temperature", 1.0, PAPER),
        Setting("actor_rollout_ref.rollout.val_kwargs.do_sample", False, PAPER + ": greedy validation"),
        Setting("trainer.n_gpus_per_node", 4, PAPER + ": 4 x H100"),
        Setting("trainer.total_training_steps", steps, MEMR1 + ": docs/design.md §Training"),
        Setting("trainer.total_epochs", _epochs(steps, n_train, batch), "export: enough epochs for the steps"),
        Setting("trainer.save_freq", 20, MEMR1),
        Setting("trainer.test_freq", 10, MEMR1),
    ]
    if algorithm == "grpo":
        return out + [
            Setting("algorithm.adv_estimator", "grpo", PAPER),
            Setting("algorithm.norm_adv_by_std_in_grpo", True, PAPER + ": A = (r - mean) / std"),
            Setting("actor_rollout_ref.rollout.n", group, VERL_EXAMPLE),
            Setting("actor_rollout_ref.actor.use_kl_loss", True, PAPER + ": a beta KL term; beta is not given"),
            Setting("actor_rollout_ref.actor.kl_loss_coef", 0.001, VERL_EXAMPLE),
            Setting("actor_rollout_ref.actor.kl_loss_type", "low_var_kl", VERL_EXAMPLE),
            Setting("actor_rollout_ref.actor.entropy_coeff", 0.0, VERL_EXAMPLE),
            Setting("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", 2, PAPER + ": the micro-batch"),
        ]
    return out + [
        Setting("algorithm.adv_estimator", "gae", PAPER + ": PPO with a critic"),
        Setting("algorithm.gamma", 1.0, VERL_EXAMPLE),
        Setting("algorithm.lam", 1.0, VERL_EXAMPLE),
        Setting("algorithm.use_kl_in_reward", False, VERL_EXAMPLE),
        Setting("actor_rollout_ref.rollout.n", 1, PAPER + ": PPO samples one response per prompt"),
        Setting("actor_rollout_ref.actor.clip_ratio", 0.2, VERL_EXAMPLE),
        Setting("critic.model.path", model, PAPER + ": a critic model of the policy's size"),
        Setting("critic.optim.lr", 1e-5, PAPER),
        Setting("critic.ppo_micro_batch_size_per_gpu", 2, PAPER),
    ]


def mem1_settings(n_train: int, model: str) -> list[Setting]:
    """MEM1's PPO recipe (its ``train_ppo.sh``, QA environment), one rollout per task."""
    batch = _batch(min(128, n_train), 1, n_gpus=4)
    steps = 500
    return [
        Setting("data.train_batch_size", batch, MEM1_CODE if batch == 128 else "export: MEM1's 128, cut to the rows"),
        Setting("data.max_prompt_length", 4096, MEM1_CODE),
        Setting("data.max_response_length", 1000, MEM1_CODE + ": per turn"),
        Setting("actor_rollout_ref.model.path", model, "export (--model); MEM1: Qwen2.5-7B base"),
        Setting("actor_rollout_ref.actor.optim.lr", 1e-6, MEM1_CODE),
        Setting("actor_rollout_ref.actor.optim.lr_warmup_steps_ratio", 0.05, MEM1_CODE),
        Setting("actor_rollout_ref.actor.ppo_mini_batch_size", min(64, batch), MEM1_CODE),
        Setting("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", 4, MEM1_CODE),
        Setting("actor_rollout_ref.actor.ppo_epochs", 1, MEM1_CODE),
        Setting("actor_rollout_ref.actor.clip_ratio", 0.2, MEM1_CODE),
        Setting("actor_rollout_ref.actor.entropy_coeff", 0.001, MEM1_CODE),
        Setting("actor_rollout_ref.actor.use_kl_loss", False, MEM1_CODE + ": KL in the reward instead"),
        Setting("actor_rollout_ref.rollout.n", 1, MEM1_CODE),
        Setting("actor_rollout_ref.rollout.temperature", 1.0, MEM1_CODE),
        Setting("actor_rollout_ref.rollout.top_p", 0.95, MEM1_CODE),
        Setting("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", 4, MEM1_CODE),
        Setting("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", 4, MEM1_CODE),
        Setting("algorithm.adv_estimator", "gae", MEM1_CODE),
        Setting("algorithm.gamma", 1.0, MEM1_CODE),
        Setting("algorithm.lam", 1.0, MEM1_CODE),
        Setting("algorithm.use_kl_in_reward", True, MEM1_CODE),
        Setting("algorithm.kl_penalty", "kl", MEM1_CODE),
        Setting("algorithm.kl_ctrl.type", "fixed", MEM1_CODE),
        Setting("algorithm.kl_ctrl.kl_coef", 0.001, MEM1_CODE),
        Setting("critic.model.path", model, MEM1_CODE + ": the critic is a copy of the base model"),
        Setting("critic.optim.lr", 1e-5, MEM1_CODE),
        Setting("critic.optim.lr_warmup_steps_ratio", 0.015, MEM1_CODE),
        Setting("critic.ppo_micro_batch_size_per_gpu", 4, MEM1_CODE),
        Setting("critic.cliprange_value", 0.5, MEM1_CODE),
        Setting("trainer.n_gpus_per_node", 4, MEM1_CODE),
        Setting("trainer.total_training_steps", steps, MEM1_CODE),
        Setting("trainer.total_epochs", _epochs(steps, n_train, batch), "export: enough epochs for the steps"),
        Setting("trainer.save_freq", 20, MEM1_CODE),
        Setting("trainer.test_freq", 150, MEM1_CODE),
    ]


def trainer_settings(
    task: str,
    algorithm: str,
    *,
    train_file: Path,
    val_file: Path,
    reward_file: Path,
    n_train: int,
    model: str,
    reward_kwargs: Mapping[str, Any],
) -> list[Setting]:
    """Every value of one exported config: the data and reward files, then the recipe.

    Raises:
        ConfigError: an unknown task or algorithm, or an algorithm the task is not exported with.
    """
    if algorithm not in ALGORITHMS.get(task, ()):
        raise ConfigError(f"no verl config for task {task!r} with {algorithm!r}; exported: {ALGORITHMS}")
    if n_train < 4:
        raise ConfigError(f"a verl config needs at least 4 training rows (one per GPU), got {n_train}")
    recipe = mem1_settings(n_train, model) if task == "mem1" else memory_r1_settings(algorithm, n_train, model)
    files = [
        Setting("data.train_files", str(Path(train_file).resolve()), "export"),
        Setting("data.val_files", str(Path(val_file).resolve()), "export"),
        Setting("data.filter_overlong_prompts", True, VERL_EXAMPLE),
        Setting("actor_rollout_ref.rollout.name", "vllm", VERL_EXAMPLE),
        Setting("reward.custom_reward_function.path", str(Path(reward_file).resolve()), "export"),
        Setting("reward.custom_reward_function.name", "compute_score", "export"),
        *[Setting(f"reward.custom_reward_function.reward_kwargs.{k}", v, "export") for k, v in reward_kwargs.items()],
        Setting("trainer.project_name", "memr1", "export"),
        Setting("trainer.experiment_name", f"{task}-{algorithm}", "export"),
        Setting("trainer.logger", ["console"], MEMR1 + ": no wandb account needed"),
    ]
    if task == "manager":  # each reward worker loads its own frozen Answer Agent
        files.append(Setting("reward.num_workers", 1, MEMR1 + ": one frozen Answer Agent in memory"))
    return files + recipe


def nest(settings: Sequence[Setting]) -> dict[str, Any]:
    """Dotted keys → the nested mapping Hydra reads.

    >>> nest([Setting("a.b", 1, "x"), Setting("a.c", 2, "x")])
    {'a': {'b': 1, 'c': 2}}
    """
    tree: dict[str, Any] = {}
    for s in settings:
        *parents, leaf = s.key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"verl key {s.key!r} runs through a value set elsewhere")
        if leaf in node:
            raise ConfigError(f"verl key {s.key!r} is set twice")
        node[leaf] = s.value
    return tree


HEADER = """\
# verl trainer config written by `memr1 export-verl`: {task} with {algorithm}.
# It extends verl's own ppo_trainer config; run it with
#   python -m verl.trainer.main_ppo --config-path={folder} --config-name={name}
# and override any key on the command line (key=value). Each value's comment names its source.
hydra:
  searchpath:
    - pkg://verl.trainer.config
defaults:
  - ppo_trainer
  - _self_
"""


def render(settings: Sequence[Setting], *, task: str, algorithm: str, path: Path) -> str:
    """The YAML text of one config: the Hydra header, then every value under a comment naming its source."""
    sources = {s.key: s.source for s in settings}
    lines = [HEADER.format(task=task, algorithm=algorithm, folder=path.parent.resolve(), name=path.stem)]

    def walk(tree: Mapping[str, Any], prefix: str, depth: int) -> None:
        pad = "  " * depth
        for name, value in tree.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict):
                lines.append(f"{pad}{name}:")
                walk(value, key + ".", depth + 1)
            else:
                lines.append(f"{pad}# {sources[key]}")
                lines.append(f"{pad}{name}: {_scalar(value)}")

    walk(nest(settings), "", 0)
    return "\n".join(lines) + "\n"


def write_trainer_config(out_dir: Path, task: str, algorithm: str, **kwargs: Any) -> Path:
    """Write ``<out_dir>/<task>_<algorithm>.yaml`` (see `trainer_settings` for ``kwargs``)."""
    path = Path(out_dir) / f"{task}_{algorithm}.yaml"
    settings = trainer_settings(task, algorithm, **kwargs)
    return write_text_atomic(path, render(settings, task=task, algorithm=algorithm, path=path))


def _scalar(value: Any) -> str:
    """A YAML flow value; floats keep a decimal point, since YAML 1.1 reads ``1e-06`` as a string."""
    if isinstance(value, float) and not isinstance(value, bool):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    return json.dumps(value)


def _batch(rows: int, group: int, *, n_gpus: int) -> int:
    """The largest prompt batch up to ``rows`` whose completions (× ``group``) split evenly over the GPUs."""
    for batch in range(rows, 0, -1):
        if batch * group % n_gpus == 0:
            return batch
    return rows


def _epochs(steps: int, n_train: int, batch: int) -> int:
    """Epochs for ``steps`` optimizer steps: verl drops the last incomplete batch of each epoch."""
    return math.ceil(steps / max(1, n_train // batch))

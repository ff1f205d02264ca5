"""What every memr1 training loop does around its steps, in one place (GRPO and PPO call it).

``PolicyRun`` loads the policy, puts a LoRA on it (``lora_targets``), builds AdamW (one parameter
group for the adapter at ``learning_rate``, one per extra head at its own rate: PPO's value head),
restores the last checkpoint, and per step: sets the learning rate (``constant_with_warmup``),
appends the step's log line to ``train_log.jsonl``, hands it to callbacks, checkpoints. ``finish``
saves the adapter (PEFT layout) and returns the ``TrainResult`` every engine returns.

A checkpoint (``memr1.rl.mem1_checkpoint``) holds adapter, heads, optimizer and RNG states; a
rerun with ``resume=True`` continues exactly (each step seeds its own sampler from ``(seed, step)``).
Settings that change the trajectory must match the checkpoint's; ``RUN_FREE`` ones may change.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from memr1.errors import ConfigError
from memr1.files import write_json_atomic
from memr1.rl.grpo import (
    GRPOSettings,
    TrainingError,
    TrainResult,
    lora_config,
    resolve_adapter,
    sequence_cap,
    verify_adapter,
)

log = logging.getLogger("memr1")

LOG_FILE, CHECKPOINT = "train_log.jsonl", "checkpoints/checkpoint"
MAX_GRAD_NORM = 1.0
RUN_FREE = {"steps", "save_every", "eval_every", "resume", "verify_adapter"}
"""Settings a resumed run may change: they do not change the trajectory of the steps before them."""


def lora_model(model: Any, settings: GRPOSettings) -> Any:
    """``model`` with a trainable LoRA (PEFT) on ``settings.lora_targets``: fresh, or ``settings.init_adapter``'s
    weights when set (its rank, alpha and targets must be the settings', else a ``ConfigError``)."""
    from peft import PeftModel, get_peft_model

    config = lora_config(settings)
    if not settings.init_adapter:
        return get_peft_model(model, config)
    _, path = resolve_adapter(settings.init_adapter, settings.model, field="init_adapter")
    saved = json.loads((Path(path) / "adapter_config.json").read_text())
    want = {"r": config.r, "lora_alpha": config.lora_alpha, "targets": sorted(config.target_modules)}
    got = {"r": saved.get("r"), "lora_alpha": saved.get("lora_alpha"), "targets": sorted(saved["target_modules"])}
    if got != want:
        raise ConfigError(f"init_adapter {path}: LoRA {got} differs from the settings' {want}")
    return PeftModel.from_pretrained(model, path, is_trainable=True)


def step_rows(n_rows: int, per_step: int, step: int, seed: int) -> list[int]:
    """Row indices of optimizer step ``step`` (0-based): consecutive slices of per-epoch permutations."""
    import torch

    out = []
    for slot in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(slot, n_rows)
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        out.append(order[pos])
    return out


class PolicyRun:
    """Model, optimizer, resume, logs and checkpoints of one training run (see the module docstring).

    Args:
        settings: validated settings with model and backend filled in.
        train_rows: rows with a chat ``prompt``; their token ids are ``self.prompts``.
        heads: extra trainable modules by name (PPO's value head), built on ``hidden_size``
            by ``heads(hidden_size)``, each with its learning rate.
        name: the engine's name, written to ``train_config.json`` and the log.
    """

    def __init__(
        self,
        settings: GRPOSettings,
        train_rows: Sequence[dict[str, Any]],
        *,
        run_dir: str | Path,
        seed: int,
        name: str,
        fallback: str = "",
        callbacks: Sequence[Any] = (),
        on_model: Callable[[Any, Any], None] | None = None,
        heads: Callable[[int], Mapping[str, tuple[Any, float]]] | None = None,
    ):
        import torch

        from memr1.llm.load import load_policy
        from memr1.rl.mem1_checkpoint import load_checkpoint, truncate_log
        from memr1.rl.sampling import encode_messages, eos_ids
        from memr1.seeding import seed_everything

        settings.validate()
        if settings.backend == "unsloth":
            raise ConfigError(
                f"engine memr1 ({name}) runs on transformers models; Unsloth trains through TRL (engine trl)"
            )
        if not train_rows:
            raise TrainingError("no training rows: check data_dir and train_limit (0 means all rows)")
        self.settings, self.seed, self.name, self.callbacks = settings, seed, name, callbacks
        self.rows = train_rows
        self.run_dir, self.started = Path(run_dir), time.perf_counter()
        self.fingerprint = {f.name: getattr(settings, f.name) for f in fields(GRPOSettings) if f.name not in RUN_FREE}
        self.fingerprint["seed"] = seed
        if (self.run_dir / CHECKPOINT).exists() and not settings.resume:
            raise TrainingError(
                f"{self.run_dir / CHECKPOINT} exists; set resume=True to continue that run, or choose a new run_dir"
            )
        (self.run_dir / CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
        seed_everything(seed)
        policy = load_policy(settings.model, settings.backend, fallback=fallback)
        self.backend, self.resolved = policy.backend, policy.resolved
        self.seq_cap = sequence_cap(settings, train_rows, policy)
        self.model, self.tok = lora_model(policy.model, settings), policy.tokenizer
        self.heads = dict(heads(policy.model.config.hidden_size)) if heads else {}
        params = [[p for p in self.model.parameters() if p.requires_grad]]
        params += [list(m.parameters()) for m, _ in self.heads.values()]
        self.base_lrs = [settings.learning_rate, *(lr for _, lr in self.heads.values())]
        self.params = [p for ps in params for p in ps]
        groups = [{"params": ps, "lr": lr} for ps, lr in zip(params, self.base_lrs)]
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        if on_model is not None:
            on_model(self.model, self.tok)
        self.base_model = fallback if policy.fallback_used else settings.model
        write_json_atomic(
            self.run_dir / "train_config.json",
            {**settings.to_dict(), "engine": f"memr1 ({name})", "run_dir": str(self.run_dir), "seed": seed,
             "base_model": self.base_model, "resolved_model": policy.resolved, "sequence_cap": self.seq_cap},
        )  # fmt: skip
        self.start = load_checkpoint(
            self.run_dir / CHECKPOINT, self.model, self.optimizer, self.fingerprint,
            extra={k: m for k, (m, _) in self.heads.items()},
            defaults={f.name: f.default for f in fields(GRPOSettings)},
        )  # fmt: skip
        truncate_log(self.run_dir / LOG_FILE, self.start + 1)
        self.history = _read_log(self.run_dir / LOG_FILE)
        self.prompts = [encode_messages(self.tok, r["prompt"]) for r in train_rows]
        self.stops = eos_ids(self.model, self.tok)
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.questions_per_step = settings.questions_per_step or settings.batch_size // settings.num_generations

    def steps(self) -> range:
        return range(self.start, self.settings.steps)

    def begin_step(self, step: int) -> float:
        """Set this step's learning rates (transformers' ``constant_with_warmup``); return the start time."""
        warm = self.settings.warmup_steps
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * (step / warm if step < warm else 1)
        return time.perf_counter()

    def clip_and_step(self) -> float:
        """Clip the gradient norm at ``MAX_GRAD_NORM``, step the optimizer; return the norm before clipping."""
        import torch

        norm = float(torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM))
        self.optimizer.step()
        return norm

    def end_step(self, step: int, entry: dict[str, Any], validator: Callable | None = None) -> None:
        """Probe (every ``eval_every`` steps), log, call back, checkpoint."""
        from memr1.rl.mem1_checkpoint import save_checkpoint

        s = self.settings
        if validator is not None and s.eval_every and (step + 1) % s.eval_every == 0:
            self.model.eval()
            entry.update({k: float(v) for k, v in validator(self.model, self.tok).items()})
        self.history.append(entry)
        with open(self.run_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(entry) + "\n")
        state = SimpleNamespace(global_step=step + 1, is_world_process_zero=True)
        for cb in self.callbacks:
            if hasattr(cb, "on_log"):
                cb.on_log(None, state, None, logs=dict(entry))
        done = step + 1 - self.start
        eta = (time.perf_counter() - self.started) / done * (s.steps - step - 1)
        log.info(
            "%s step %d/%d: reward %.3f, %.1f s, ETA %.0f min",
            self.name, step + 1, s.steps, entry["reward"], entry.get("step_s", 0), eta / 60,
        )  # fmt: skip
        if s.save_every and ((step + 1) % s.save_every == 0 or step + 1 == s.steps):
            save_checkpoint(
                self.run_dir / CHECKPOINT, self.model, self.tok, self.optimizer, step + 1, self.fingerprint,
                extra={k: m.state_dict() for k, (m, _) in self.heads.items()},
            )  # fmt: skip

    def finish(self) -> TrainResult:
        """Save the adapter (and heads), check it loads, return the run's ``TrainResult``."""
        import torch

        adapter = self.run_dir / "adapter"
        self.model.save_pretrained(str(adapter))
        for k, (m, _) in self.heads.items():
            torch.save(m.state_dict(), self.run_dir / f"{k}.pt")
        if self.settings.verify_adapter:
            verify_adapter(self.base_model, adapter, self.backend)
        log.info("%s: %d steps in %.1f s, adapter in %s", self.name, self.settings.steps,
                 time.perf_counter() - self.started, adapter)  # fmt: skip
        evals = [{"step": e["step"], **{k: v for k, v in e.items() if k.startswith("eval/")}} for e in self.history]
        return TrainResult(
            steps=max(self.start, self.settings.steps),
            adapter=str(adapter),
            resumed_from=str(self.run_dir / CHECKPOINT) if self.start else None,
            log_history=self.history,
            eval_history=[e for e in evals if len(e) > 1],
        )


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = ["PolicyRun", "lora_model", "step_rows", "LOG_FILE", "CHECKPOINT", "MAX_GRAD_NORM", "RUN_FREE"]

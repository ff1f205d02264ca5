"""Checkpoints of memr1's own training loops (MEM1, GRPO and PPO engines): model (or adapter), tokenizer,
optimiser, RNG states, step and any extra heads.

A rerun of ``memr1.rl.mem1_trainer.train_mem1`` on the same folder restores all of them and continues
exactly where the previous run stopped (tested: the resumed step equals the uninterrupted one).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memr1.errors import ConfigError
from memr1.files import write_text_atomic

log = logging.getLogger("memr1")


def save_checkpoint(
    path: Path,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: dict[str, Any],
    extra: dict[str, dict] | None = None,
) -> Path:
    """Write model (or adapter), tokenizer, optimiser, RNG states, step and ``config``; swap in atomically.

    ``extra``: state dicts of further modules by name (PPO's value head), written to ``extra.pt``.

    A checkpoint is a folder, so ``memr1.files`` (one file at a time) does not apply: the folder is
    written beside ``path`` and renamed over it, the previous one kept as ``.old`` until then.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=path.parent))
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(
        {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        tmp / "rng.pt",
    )
    if extra:
        torch.save(extra, tmp / "extra.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": config}, indent=1))
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.replace(old)
    tmp.replace(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(
    path: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> int:
    """Restore a checkpoint into ``model`` and ``optimizer`` (and the modules of ``extra``, by name);
    return its step (0 when none).

    ``config`` (the settings and seed) must match the one saved, except the keys that do not change
    the trajectory of the run (steps, save_every, micro_batch). A setting added after the checkpoint
    was written matches when its value is its default (``defaults``): the older code behaved so.
    """
    if not (path / "state.json").is_file():  # a crash mid-swap leaves only the previous one
        path = path.with_name(path.name + ".old")
    if not (path / "state.json").is_file():
        return 0
    state = json.loads((path / "state.json").read_text())
    free = {"steps", "save_every", "micro_batch"}
    saved = {**(defaults or {}), **state["config"]}
    changed = sorted(k for k, v in config.items() if k not in free and saved.get(k) != v)
    if changed:
        raise ConfigError(
            f"{path} was written with different settings ({', '.join(changed)}); "
            f"use a new run_dir or restore those settings"
        )
    from safetensors.torch import load_file

    loaded = {}
    for f in sorted((path / "model").glob("*.safetensors")):
        loaded.update(load_file(str(f)))
    if config.get("lora_r"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, loaded)
    else:
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        missing = set(model.state_dict()) - set(loaded) - tied  # save_pretrained leaves tied copies out
        if missing:
            raise ConfigError(f"{path} lacks weights {sorted(missing)[:3]}...; the checkpoint is incomplete")
        model.load_state_dict(loaded, strict=False)
    if extra:
        saved = torch.load(path / "extra.pt", weights_only=True) if (path / "extra.pt").is_file() else {}
        for name, module in extra.items():
            if name not in saved:
                raise ConfigError(f"{path} holds no state for {name!r}; the checkpoint is incomplete")
            module.load_state_dict(saved[name])
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)  # our own file: numpy and python states
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    log.info("resumed training from %s at step %d", path, state["step"])
    return int(state["step"])


def truncate_log(path: Path, start: int) -> None:
    """Drop log lines of steps at or after ``start`` (left by a run that died after logging)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < start]
    write_text_atomic(path, "".join(ln + "\n" for ln in lines))

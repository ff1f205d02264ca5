"""One seeding function for every stage (CleanRL's explicit seeding block, as a call)."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int, deterministic_torch: bool = False) -> None:
    """Seed ``random``, NumPy and (when importable) torch on CPU and CUDA.

    Args:
        seed: any non-negative integer.
        deterministic_torch: also ask torch for deterministic kernels (slower on GPU).

    >>> seed_everything(0); a = random.random(); seed_everything(0); a == random.random()
    True
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        from memr1.errors import ConfigError

        raise ConfigError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    os.environ["PYTHONHASHSEED"] = str(seed)  # affects subprocesses only
    try:
        import torch
    except ImportError:  # torch is a dependency, but seeding must not need it
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic_torch:
        torch.use_deterministic_algorithms(True, warn_only=True)

"""Import Unsloth only where it can work: a CUDA machine that has it installed.

Why a guard instead of a plain ``try: import unsloth``:

- On a machine without CUDA, ``import unsloth`` fails with ``NotImplementedError`` (not
  ``ImportError``), and before failing it has already set about twenty environment variables,
  e.g. ``HF_HUB_ENABLE_HF_TRANSFER=1``, which then break later hub calls. So we check
  ``MEMR1_NO_UNSLOTH`` and ``torch.cuda.is_available()`` *before* trying, and catch ``Exception``.
- Unsloth patches transformers, trl and peft when it is imported, so on CUDA it must be imported
  before them. ``memr1.llm.load_policy`` calls this guard before touching transformers.
- A failed attempt is remembered, so the import (and its side effects) is not retried.

Set ``MEMR1_NO_UNSLOTH=1`` to keep Unsloth out even on a CUDA machine.

Example:
    >>> import os; from unittest import mock
    >>> with mock.patch.dict(os.environ, {"MEMR1_NO_UNSLOTH": "1"}):
    ...     maybe_import_unsloth() is None
    True
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

log = logging.getLogger("memr1")

_failure: str | None = None  # why the last real import attempt failed; never retried


def unsloth_unavailable_reason() -> str | None:
    """Say why ``maybe_import_unsloth`` returns None, or None when Unsloth is usable (imports it)."""
    if maybe_import_unsloth() is not None:
        return None
    if os.environ.get("MEMR1_NO_UNSLOTH") == "1":
        return "MEMR1_NO_UNSLOTH=1 is set"
    if _failure is not None:
        return _failure
    return "torch.cuda.is_available() is False"


def maybe_import_unsloth() -> ModuleType | None:
    """Return the ``unsloth`` module when it can be used here, else None; never raises.

    Order of checks: ``MEMR1_NO_UNSLOTH=1`` → already imported → CUDA available → import.
    """
    global _failure
    if os.environ.get("MEMR1_NO_UNSLOTH") == "1":
        return None
    if "unsloth" in sys.modules:
        return sys.modules["unsloth"]
    if _failure is not None:
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None  # checked before the import: unsloth's import has side effects
    except Exception:  # noqa: BLE001 - a broken torch just means "no unsloth"
        return None
    late = [m for m in ("trl", "transformers", "peft") if m in sys.modules]
    if late:
        log.warning("importing unsloth after %s; its patches may not apply to them", ", ".join(late))
    try:
        return importlib.import_module("unsloth")
    except Exception as exc:  # noqa: BLE001 - unsloth raises NotImplementedError, RuntimeError, ...
        _failure = f"import unsloth failed: {type(exc).__name__}: {exc}"
        log.warning("%s; using the transformers backend", _failure)
        return None

"""Where memr1 keeps things on disk: the user cache and an optional data folder.

Both come from environment variables so notebooks, tests and CI can redirect them without code:

- ``MEMR1_CACHE_DIR``: cache root (default ``~/.cache/memr1``); models, downloads, scratch.
- ``MEMR1_DATA_DIR``: a folder that already holds the data files (no default).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Return the cache root, creating it if needed.

    >>> cache_dir().is_dir()
    True
    """
    raw = os.environ.get("MEMR1_CACHE_DIR") or "~/.cache/memr1"
    path = Path(raw).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir_env() -> Path | None:
    """Return ``$MEMR1_DATA_DIR`` as a path (``~`` expanded), or None when it is unset or empty.

    >>> import os; from unittest import mock
    >>> with mock.patch.dict(os.environ, {"MEMR1_DATA_DIR": "/data"}):
    ...     data_dir_env()
    PosixPath('/data')
    """
    raw = os.environ.get("MEMR1_DATA_DIR")
    return Path(raw).expanduser() if raw else None

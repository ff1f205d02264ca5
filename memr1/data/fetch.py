"""Find a data file, or download it once with a pinned checksum.

Resolution order for every dataset: an explicit path → ``$MEMR1_DATA_DIR/<rel>`` → the user cache
(``$MEMR1_CACHE_DIR`` or ``~/.cache/memr1``, under ``data/<rel>``) → download into the cache.
Downloads are verified before they are moved into place, so a half-written or tampered file is never
used. The project never ships the data (LoCoMo is CC BY-NC 4.0).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from memr1.errors import DataIntegrityError, DataNotFoundError
from memr1.files import atomic_path
from memr1.paths import cache_dir, data_dir_env

log = logging.getLogger("memr1")


@dataclass(frozen=True)
class RemoteFile:
    """A dataset file: where it lives in a data folder, where to download it, and its checksum."""

    rel_path: str
    """Path inside a data folder, e.g. ``locomo/locomo10.json``."""
    url: str
    """Download address (only used when no local copy exists)."""
    sha256: str
    """Expected SHA-256 of the file's bytes."""
    licence: str = ""
    """Licence note shown when downloading."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, keeping it only if its SHA-256 matches."""
    with atomic_path(dest, suffix=".part") as tmp:  # a failed check raises: nothing is kept
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
        got = sha256_of(tmp)
        if got != sha256:
            raise DataIntegrityError(
                f"{url} has sha256 {got}, expected {sha256}; the file was not kept. "
                "The upstream file may have changed: supply a trusted copy through $MEMR1_DATA_DIR."
            )
    return dest


def resolve(remote: RemoteFile, path: str | os.PathLike | None = None, *, allow_download: bool = True) -> Path:
    """Return a local path to ``remote``, downloading it into the cache as the last resort.

    Args:
        remote: which file.
        path: an explicit file, or a folder that holds ``remote.rel_path``; wins when given.
        allow_download: set False to fail instead of touching the network.

    Raises:
        DataNotFoundError: with every place searched and how to supply the file.
        DataIntegrityError: a download did not match the pinned checksum.
    """
    if path:
        p = Path(path).expanduser()
        candidate = p / remote.rel_path if p.is_dir() else p
        if candidate.is_file():
            return candidate
        raise DataNotFoundError(f"{candidate} does not exist (explicit path for {remote.rel_path})")
    tried = []
    env_dir = data_dir_env()
    if env_dir is not None:
        candidate = env_dir / remote.rel_path
        if candidate.is_file():
            return candidate
        tried.append(f"$MEMR1_DATA_DIR: {candidate}")
    cached = cache_dir() / "data" / remote.rel_path
    if cached.is_file():
        return cached
    tried.append(f"cache: {cached}")
    if allow_download:
        log.info("downloading %s to %s %s", remote.url, cached, remote.licence)
        try:
            return download(remote.url, cached, remote.sha256)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            tried.append(f"download {remote.url}: {type(exc).__name__}: {exc}")
    raise DataNotFoundError(
        f"{remote.rel_path} not found. Tried: " + "; ".join(tried) + ". "
        f"Put the file at $MEMR1_DATA_DIR/{remote.rel_path}, pass its path explicitly, "
        f"or copy it to {cached}."
    )

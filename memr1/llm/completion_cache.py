"""Greedy completions kept on disk, so that a prompt completed once is never completed again.

The three Memory-R1 rows of the LoCoMo table (one per trained manager seed) and the base row build
their banks with the same untrained extractor over the same 5,094 test turns: its prompts depend on the
turn and the turns before it, never on a bank, so greedy decoding gives every build the same outputs.
Extraction is about 30% of a bank build on a CPU (about 1 of 3.3 hours per system), so the second and
third seeds skip it when the first one kept its completions. ``CompletionCache`` wraps any `Generator`:
under greedy decoding each prompt is looked up by a hash of (backend, model name, sampling, messages);
the misses of a batch go to the wrapped generator in one call and are appended to a JSON-lines file,
one line per completion, flushed and fsynced after every call. Sampled decoding is passed through
untouched (a sample is not a function of its prompt).

A cached completion is the one the first build got: the same up to the fp32 rounding that already
separates a lockstep batch from a smaller one (``memr1.agents.builder``). Its ``latency_s`` is the
cost measured when it was computed; ``hits`` and ``misses`` say how many calls were reused. A line
that cannot be read (a crash mid-append) is skipped, counted in ``unreadable`` and logged; the prompt
is completed again.

The wrapped generator's name must identify its weights: wrap a plain model, never one whose adapter
can change under the same name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memr1.errors import ConfigError
from memr1.llm.generate import GREEDY, Generation, Generator, Messages, Sampling

log = logging.getLogger("memr1")


def prompt_key(generator: Any, messages: Messages, sampling: Sampling) -> str:
    """Hash of everything a greedy completion depends on: backend, model name, decoding caps, messages."""
    what = {
        "backend": generator.backend,
        "model": generator.name,
        "sampling": {k: v for k, v in dataclasses.asdict(sampling).items() if k != "seed"},
        "messages": [[m["role"], m["content"]] for m in messages],
    }
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()


class CompletionCache:
    """A `Generator` that answers greedy prompts it has seen from ``path`` (JSON lines) and asks ``inner``
    for the rest; everything else (name, backend, token counting, window) is ``inner``'s.

    Args:
        inner: the generator that completes what the cache lacks.
        path: the JSON-lines file (created on the first miss; read now when it exists).
    """

    def __init__(self, inner: Generator, path: str | os.PathLike):
        if isinstance(inner, CompletionCache):
            raise ConfigError("CompletionCache wraps a generator, not another CompletionCache")
        self.inner, self.path = inner, Path(path)
        self.hits = self.misses = self.unreadable = 0
        self._store: dict[str, Generation] = {}
        self._torn = False
        """The file's last line lacks its end (a crash mid-append): the next append starts a new line first."""
        if self.path.is_file():
            self._load()

    def __getattr__(self, name: str) -> Any:  # name, backend, note, tokenizer_name, context_window, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"CompletionCache({self.inner!r}, {str(self.path)!r}, {len(self._store)} completions)"

    def __len__(self) -> int:
        return len(self._store)

    def generate(self, prompts: Sequence[Messages], sampling: Sampling = GREEDY) -> list[Generation]:
        """One Generation per prompt, in order; only greedy prompts not yet in the file reach ``inner``."""
        prompts = list(prompts)
        if sampling.temperature != 0:
            return self.inner.generate(prompts, sampling)
        keys = [prompt_key(self.inner, p, sampling) for p in prompts]
        first: dict[str, int] = {}  # each missing prompt once, even when a batch holds it twice
        for i, k in enumerate(keys):
            if k not in self._store:
                first.setdefault(k, i)
        todo = list(first)
        self.hits += len(keys) - len(todo)
        if todo:
            gens = self.inner.generate([prompts[first[k]] for k in todo], sampling)
            if len(gens) != len(todo):
                name = type(self.inner).__name__
                raise ConfigError(f"{name} returned {len(gens)} completions for {len(todo)} prompts")
            self._append(dict(zip(todo, gens)))
            self.misses += len(todo)
        return [self._store[k] for k in keys]

    def _append(self, new: dict[str, Generation]) -> None:
        """Store ``new`` and append it to the file in one write, flushed to disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps({"key": k, **dataclasses.asdict(g)}) + "\n" for k, g in new.items())
        if self._torn:
            text, self._torn = "\n" + text, False
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        self._store.update(new)

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                self._torn = not line.endswith("\n")
                try:
                    row = json.loads(line)
                    key = row.pop("key")
                    self._store[key] = Generation(**row)
                except (ValueError, TypeError, KeyError, AttributeError) as e:
                    self.unreadable += 1
                    log.warning("%s line %d is not a stored completion (%s); that prompt is completed again",
                                self.path, number, e)  # fmt: skip


__all__ = ["CompletionCache", "prompt_key"]

"""Run folders: typed stage results, the metrics.json that holds them, and provenance.

Every stage's ``run(cfg)`` returns a ``StageResult`` subclass and writes it with ``save_result``
to ``run_dir/metrics.json`` (written last, so its presence marks the stage finished). The file
holds the result (``to_json``: schema-versioned, JSON values only), the resolved config and the
package versions. ``read_result`` gives the typed object back; a missing or unknown key, or
another schema version, is a ``ResultError`` rather than a silent gap in a report.

>>> @dataclasses.dataclass
... class Demo(StageResult):
...     score: float
>>> Demo.from_json(Demo(0.5).to_json())
Demo(score=0.5)
>>> Demo.from_json({"schema": "Demo/1", "score": 1.0, "extra": 2})
Traceback (most recent call last):
...
memr1.errors.ResultError: Demo: unknown key(s) ['extra']; expected ['score']
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from memr1.errors import ResultError
from memr1.files import write_json_atomic

TRACKED_PACKAGES = ("memr1", "torch", "transformers", "trl", "peft", "datasets", "lancedb", "nltk")
R = TypeVar("R", bound="StageResult")


def transient(default: Any = None) -> Any:
    """A result field kept in memory for the notebook (a DataFrame, open banks), not written to JSON."""
    return dataclasses.field(default=default, repr=False, compare=False, metadata={"transient": True})


def to_plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, NaN to None, tuples to lists, paths to strings."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


@dataclasses.dataclass
class StageResult:
    """Base of every stage's result: a flat dataclass of JSON values (plus ``transient`` fields)."""

    SCHEMA: ClassVar[int] = 1
    """Bump when a field is renamed, added or removed; old files then fail loudly on read."""

    @classmethod
    def json_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("transient")]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": f"{type(self).__name__}/{self.SCHEMA}",
            **{name: to_plain(getattr(self, name)) for name in self.json_fields()},
        }

    @classmethod
    def from_json(cls: type[R], obj: dict[str, Any]) -> R:
        want = f"{cls.__name__}/{cls.SCHEMA}"
        if obj.get("schema") != want:
            raise ResultError(
                f"{cls.__name__}: schema {obj.get('schema')!r}, expected {want!r}; rerun the stage "
                "with --force to rewrite it"
            )
        names = cls.json_fields()
        body = {k: v for k, v in obj.items() if k != "schema"}
        if unknown := sorted(set(body) - set(names)):
            raise ResultError(f"{cls.__name__}: unknown key(s) {unknown}; expected {names}")
        if missing := [n for n in names if n not in body]:
            raise ResultError(f"{cls.__name__}: missing key(s) {missing}")
        return cls(**body)


def provenance() -> dict[str, Any]:
    """Versions, interpreter and time: enough to say what produced a result."""
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "packages": versions,
    }


def save_result(run_dir: str | os.PathLike, result: StageResult, config: Any) -> Path:
    """Write ``run_dir/metrics.json``: the typed result, the resolved config and provenance."""
    body = {"result": result.to_json(), "config": config.to_dict(), "provenance": provenance()}
    return write_json_atomic(Path(run_dir) / "metrics.json", body)


def rewrite_result(run_dir: str | os.PathLike, result: StageResult, saved: SavedStage) -> Path:
    """Write ``run_dir/metrics.json`` again with an updated ``result`` (e.g. judged later), keeping the config
    and provenance of the run that made it; ``provenance.updated_at`` says when."""
    body = {
        "result": result.to_json(),
        "config": saved.config,
        "provenance": {**saved.provenance, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    return write_json_atomic(Path(run_dir) / "metrics.json", body)


@dataclasses.dataclass
class SavedStage:
    """A finished stage read back from its metrics.json."""

    result: Any
    """The typed ``StageResult``."""
    config: dict[str, Any]
    """The resolved config it ran with."""
    provenance: dict[str, Any]


def read_result(path: str | os.PathLike, result_type: type[R]) -> SavedStage:
    """Read a metrics.json written by ``save_result`` (``path``: the file or its stage folder)."""
    path = Path(path)
    path = path / "metrics.json" if path.is_dir() else path
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultError(f"{path}: cannot read a stage result ({type(exc).__name__}: {exc})") from None
    if not isinstance(body, dict) or set(body) != {"result", "config", "provenance"}:
        raise ResultError(
            f"{path}: expected keys result, config, provenance; got "
            f"{sorted(body) if isinstance(body, dict) else type(body).__name__}"
        )
    return SavedStage(result_type.from_json(body["result"]), body["config"], body["provenance"])

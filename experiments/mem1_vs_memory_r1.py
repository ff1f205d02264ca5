"""MEM1 beside Memory-R1 on the same LoCoMo test questions (SmolLM2-135M, CPU).

Questions: the test table's fixed subset (``experiments/locomo_table.py``): the test split's
questions whose evidence lies in the first ``--turns`` turns of their conversation. MEM1 side: one
1-objective task per question, the corpus being those same turns (one passage per turn), run by the
MEM1 agent under pruning (``memr1.agents.mem1``, greedy, stopped at ``</query>`` / ``</answer>``,
6 turns, ``--prompt-style``), with the untrained model and, when ``--trained`` names MEM1 training
runs (``experiments/mem1_horizon.py``'s ``runs/.../train/seed<s>``), each trained model. Memory-R1
side: the per-question records the test table wrote for ``--systems`` (base, and the trained
memory-r1 system of each seed), read from ``--table-runs``; run ``locomo_table.py`` first.

Per system: F1 and EM (mem0 family, the same functions on both sides, as percentages), the share of
questions answered, and the peak context in model tokens (MEM1: the longest context of the episode,
prompt and worked examples included; Memory-R1: the Answer Agent prompt; the extractor and manager
calls of Memory-R1 are shorter). Resumable: each finished MEM1 policy is stored in ``<out>.json``.

    .venv/bin/python experiments/mem1_vs_memory_r1.py --turns 16 \\
        --trained runs/experiments/mem1_examples/train/seed0 runs/experiments/mem1_examples/train/seed1
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from mem1_horizon import same_weights
from stats import mean_std

TABLE_SYSTEMS = ("base", "memory-r1-seed0", "memory-r1-seed1", "memory-r1-seed2")


def questions(turns: int, data_dir: str | None) -> tuple[list[Any], Any]:
    """The test table's subset: test questions answerable from the first ``turns`` turns; and the data."""
    from memr1.data.locomo import load_locomo
    from memr1.stages.evaluate import EvalConfig, select_questions

    data = load_locomo(data_dir)
    cfg = EvalConfig(split="test", max_turns=turns, answerable=True, limit=0)
    return select_questions(data, cfg), data


def mem1_tasks(qs: list[Any], data: Any, turns: int) -> list[Any]:
    """One 1-objective task per question over its conversation's first ``turns`` turns."""
    from memr1.data.tasks import Task, locomo_corpus, locomo_objective

    convs = {c.sample_id: c for c in data.conversations}
    corpora = {sid: locomo_corpus(c.first_turns(turns)) for sid, c in convs.items()}
    return [Task(q.qid, "locomo", (locomo_objective(q),), corpora[q.sample_id]) for q in qs]


def run_mem1(generator: Any, tasks: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    from memr1.agents.mem1 import STOP_STRINGS
    from memr1.eval.mem1_metrics import peak_tokens, run_episodes, token_counter_for
    from memr1.llm.generate import Sampling

    start = time.perf_counter()
    eps = run_episodes(
        tasks,
        generator,
        ("mem1",),
        max_turns=-1,
        count_tokens=token_counter_for(generator),
        sampling=Sampling(max_new_tokens=args.max_new_tokens, stop=STOP_STRINGS),
        prompt_style=args.prompt_style,
    )
    return {
        "per_question": {
            t.id: {"f1": e.f1[0], "em": e.em[0], "peak": peak_tokens(e), "stop": e.stop} for t, e in zip(tasks, eps)
        },
        "wall_s": time.perf_counter() - start,
    }


def table_rows(args: argparse.Namespace, qids: set[str]) -> dict[str, dict[str, Any]]:
    """Per-question F1, EM and Answer Agent prompt tokens of the test table's runs (missing runs skipped)."""
    import pandas as pd

    out = {}
    for system in args.systems:
        path = Path(args.table_runs) / system / "records.parquet"
        if not path.exists():
            print(f"skipped {system}: no {path} (run experiments/locomo_table.py first)")
            continue
        rec = pd.read_parquet(path)
        rec = rec[rec.qid.isin(qids)]
        out[system] = {
            r.qid: {"f1": float(r.f1), "em": float(r.em), "peak": int(r.prompt_tokens), "stop": "answer"}
            for r in rec.itertuples()
        }
    return out


def summary(per_q: dict[str, dict[str, Any]]) -> dict[str, float]:
    rows = list(per_q.values())
    n = len(rows)
    return {
        "questions": n,
        "f1": 100 * sum(r["f1"] for r in rows) / n,
        "em": 100 * sum(r["em"] for r in rows) / n,
        "answered": sum(r["stop"] == "answer" for r in rows) / n,
        "peak": sum(r["peak"] for r in rows) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=16)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--trained", nargs="*", default=[], help="MEM1 training run folders (seed<s>), one per seed")
    ap.add_argument("--prompt-style", default="examples", choices=["plain", "examples"])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--systems", nargs="*", default=list(TABLE_SYSTEMS), help="test-table runs to read")
    ap.add_argument("--table-runs", default="runs/experiments/locomo_table/turns16")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--out", default="docs/results/mem1_vs_memory_r1")
    args = ap.parse_args()
    from memr1.files import write_json_atomic
    from memr1.llm.backends import make_generator

    out = Path(args.out + ".json")
    results = json.loads(out.read_text()) if out.exists() else {"mem1": {}, "runs": []}
    qs, data = questions(args.turns, args.data_dir or None)
    tasks = mem1_tasks(qs, data, args.turns)
    started = time.perf_counter()
    for run in ["untrained", *args.trained]:
        if run in results["mem1"]:
            continue
        # a full fine-tuning checkpoint holds a complete model folder (memr1.rl.mem1_checkpoint)
        gen = make_generator(
            args.model if run == "untrained" else str(Path(run) / "checkpoint" / "model"), "transformers"
        )
        if run != "untrained" and "untrained" in results["mem1"] and same_weights(gen.model, args.model):
            # no RL step had a gradient: bit-identical weights and greedy decoding give the same episodes
            print(f"MEM1 agent, {run}: weights equal the base model's; untrained episodes reused", flush=True)
            results["mem1"][run] = {**results["mem1"]["untrained"], "same_weights_as_untrained": True}
        else:
            print(f"MEM1 agent, {run}: {len(tasks)} questions ...", flush=True)
            results["mem1"][run] = run_mem1(gen, tasks, args)
        write_json_atomic(out, results)
    results["memory_r1"] = table_rows(args, {q.qid for q in qs})
    results["runs"].append(
        {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "wall_s": time.perf_counter() - started,
            "command": shlex.join([".venv/bin/python", "experiments/mem1_vs_memory_r1.py", *sys.argv[1:]]),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
            "questions": len(qs),
            "prompt_style": args.prompt_style,
        }
    )
    write_json_atomic(out, results)
    write_table(results, args)


def write_table(results: dict, args: argparse.Namespace) -> None:
    def row(label: str, runs: list[dict[str, Any]], seeds: str) -> str:
        s = [summary(r) for r in runs]
        cells = [mean_std([x[k] for x in s], f) for k, f in (("f1", ".1f"), ("em", ".1f"), ("answered", ".2f"))]
        return (
            f"| {label} | {seeds} | {s[0]['questions']} | "
            + " | ".join(cells)
            + f" | {mean_std([x['peak'] for x in s], '.0f')} |"
        )

    mem1 = results["mem1"]
    lines = ["| system | seeds | questions | F1 | EM | answered | peak tokens |", "|---|---|---|---|---|---|---|"]
    if "untrained" in mem1:
        lines.append(row("MEM1 agent, untrained (pruned)", [mem1["untrained"]["per_question"]], "–"))
    trained = sorted(k for k in mem1 if k != "untrained")
    if trained:
        seeds = ", ".join(
            Path(k).name.removeprefix("seed") + (" (= untrained)" if mem1[k].get("same_weights_as_untrained") else "")
            for k in trained
        )
        lines.append(
            row("MEM1 agent, RL at N=2 on HotpotQA (pruned)", [mem1[k]["per_question"] for k in trained], seeds)
        )
    table = results.get("memory_r1", {})
    if "base" in table:
        lines.append(row("Memory-R1 pipeline, untrained (base)", [table["base"]], "–"))
    r1 = [k for k in table if k.startswith("memory-r1-seed")]
    if r1:
        seeds = ", ".join(k.removeprefix("memory-r1-seed") for k in r1)
        lines.append(row("Memory-R1, trained manager + answer agent", [table[k] for k in r1], seeds))
    last = results["runs"][-1]
    wall = sum(v["wall_s"] for v in mem1.values() if not v.get("same_weights_as_untrained"))
    text = f"""# MEM1 beside Memory-R1 on the same LoCoMo test questions ({args.model}, CPU)

{last["date"]}, {last["machine"]}. Command: `{last["command"]}`. MEM1 wall time:
{wall / 60:.1f} min. Memory-R1 rows: the per-question records of
`experiments/locomo_table.py` (docs/results/locomo_test.md), restricted to these questions.

Questions: the {last["questions"]} test questions whose evidence lies in the first {args.turns} turns of their
conversation, each system seeing only those turns. MEM1: one question per task, searching those turns
(BM25, top 3), prompt style `{last["prompt_style"]}`, 6 turns, greedy. F1 and EM: mem0-family token F1
and exact match, ×100, mean over questions (± std over training seeds). "Answered": share of questions
that got an answer (MEM1 episodes may end invalid or out of turns). "= untrained": a seed whose RL steps never
had a gradient, so its weights equal the base model's (checked) and its episodes are the untrained ones.
Peak tokens: MEM1, the longest context of the episode (worked examples and prompt included); Memory-R1,
the Answer Agent prompt.

"""
    text += "\n".join(lines) + "\n"
    Path(args.out + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Does SmolLM2-135M write the Answer Agent's format within a CPU-sized token cap?

Runs the evaluation stage (system ``replay``: LoCoMo's own facts as memory, so only the answerer
varies) on the first ``--limit`` validation questions (conv-30) for each prompt style and answer cap,
and tabulates F1 / BLEU-1 / EM, how often ``**Answer:**`` is written, how often the output hits the
cap, and seconds per question. Greedy decoding: one run per variant is the whole story (seed 0; no sampling).

    .venv/bin/python experiments/answer_format.py --limit 24 --out docs/results/answer_format.md
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

VARIANTS = [("distill", 96), ("distill", 48), ("direct", 32)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=24, help="validation questions, in file order")
    ap.add_argument("--k", type=int, default=5, help="memories per speaker")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--runs", default="runs/experiments/answer_format")
    ap.add_argument("--out", default="docs/results/answer_format.md")
    args = ap.parse_args()

    from memr1.stages.evaluate import EvalConfig, run

    rows = []
    for style, cap in VARIANTS:
        cfg = EvalConfig(
            profile="cpu",
            system="replay",
            split="validation",
            limit=args.limit,
            max_turns=0,
            model=args.model,
            k_per_speaker=args.k,
            answer_style=style,
            answer_tokens=cap,
            run_dir=f"{args.runs}/{style}-{cap}",
        )
        start = time.perf_counter()
        res = run(cfg, progress=False)
        wall = time.perf_counter() - start
        rec = res.records
        overall = res.table[-1]
        rows.append(
            {
                "style": style,
                "cap": cap,
                "questions": len(rec),
                "F1": overall["f1"],
                "BLEU-1": overall["bleu1"],
                "EM": overall["em"],
                "writes **Answer:**": 100 * rec.raw_output.str.contains(r"\*\*\s*answer", case=False).mean(),
                "hits the cap": 100 * (rec.finish_reason == "length").mean(),
                "completion tokens": rec.completion_tokens.mean(),
                "s / question": wall / len(rec),
            }
        )
        print(rows[-1], flush=True)
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [
        "| " + " | ".join(f"{r[h]:.1f}" if isinstance(r[h], float) else str(r[h]) for h in head) + " |" for r in rows
    ]
    command = f".venv/bin/python experiments/answer_format.py --limit {args.limit} --k {args.k}"
    text = (
        f"# Answer format on SmolLM2-135M (validation, conv-30)\n\n"
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()} CPU ({__import__('os').cpu_count()} cores), "
        f"model {args.model}, first {args.limit} validation questions, replay memory, {args.k} memories per "
        f"speaker, greedy decoding (no sampling, so no seed changes these numbers; seed 0 as configured). "
        f"Command: `{command}`. Scores ×100; the two rates are % of questions.\n\n" + "\n".join(lines) + "\n"
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Benchmark: both metric families over all 1,540 non-adversarial LoCoMo questions.

Prints (1) scoring speed per family and (2) per-category scores of two reference predictors, so the
families can be compared on the same inputs:
  gold      the gold answer itself (the ceiling each family gives a perfect answer)
  evidence  the raw text of the question's first evidence turn (a verbose oracle-retrieval answer)

    python bench/bench_metrics.py [--data-dir DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

from memr1.data.locomo import load_locomo
from memr1.eval.metrics import score
from memr1.eval.tables import category_table, to_markdown


def predictions(data, kind):
    out = []
    for q in data.questions():
        conv = data.conversation(q.sample_id)
        pred = q.answer if kind == "gold" else (conv.turn(q.evidence[0]).text if q.evidence else "")
        out.append((q, pred))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    data = load_locomo(args.data_dir or None)
    print(
        f"# metrics benchmark · {time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} "
        f"· python {platform.python_version()}\n"
    )
    print("| family | questions | first run (s) | warm median (s) | per question (µs) |")
    print("|---|---|---|---|---|")
    pairs = predictions(data, "evidence")
    for family in ("mem0", "locomo"):
        times = []
        for _ in range(args.repeat + 1):
            start = time.perf_counter()
            for q, pred in pairs:
                score(pred, q.answer, q.category, family)
            times.append(time.perf_counter() - start)
        warm = statistics.median(times[1:])
        print(f"| {family} | {len(pairs)} | {times[0]:.3f} | {warm:.3f} | {1e6 * warm / len(pairs):.0f} |")
    for kind in ("gold", "evidence"):
        recs = []
        for q, pred in predictions(data, kind):
            m0, lc = score(pred, q.answer, q.category, "mem0"), score(pred, q.answer, q.category, "locomo")
            recs.append(
                {
                    "category": q.category,
                    "mem0 F1": m0["f1"],
                    "mem0 BLEU-1": m0["bleu1"],
                    "locomo F1": lc["f1"],
                    "EM": m0["em"],
                }
            )
        table = category_table(recs, ["mem0 F1", "mem0 BLEU-1", "locomo F1", "EM"])
        print(f"\n## predictor: {kind}\n")
        print(to_markdown(table))


if __name__ == "__main__":
    main()

"""Evidence recall of Answer-Agent retrieval on the observation-replay banks, all 1,540 questions.

For each conversation, LoCoMo's observation facts are replayed into one bank per speaker (in memory),
then every non-adversarial question retrieves the top-k memories of each bank (k = 30, i.e. 60 in
all, as in Memory-R1). A question is covered when every evidence turn is the source of a retrieved
memory (`all`), when one is (`any`), and `oracle` when the bank holds them all (retrieval's ceiling).

    python bench/bench_recall.py [--embedder minilm|hash] [--k 30]
"""

from __future__ import annotations

import argparse
import platform
import time

from memr1.data.locomo import load_locomo
from memr1.eval.recall import replay_recall
from memr1.eval.tables import category_table, to_markdown
from memr1.memory.embed import make_embedder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "hash"])
    ap.add_argument("--k", type=int, default=30, help="memories per speaker")
    args = ap.parse_args()
    data = load_locomo(args.data_dir or None)
    embedder = make_embedder(args.embedder)
    start = time.perf_counter()
    per_question = replay_recall(data, embedder, k_per_speaker=args.k, progress=False)
    seconds = time.perf_counter() - start
    print(
        f"# replay recall · {time.strftime('%Y-%m-%d')} · {platform.machine()} · python "
        f"{platform.python_version()} · embedder {embedder.name} · k={args.k} per speaker · {seconds:.1f} s\n"
    )
    print(to_markdown(category_table(per_question, ["all", "any", "oracle"])))
    missing = sum(1 for q in data.questions() if not q.evidence)
    print(f"\n{len(per_question)} questions with evidence ({missing} of 1,540 have none and are left out).")


if __name__ == "__main__":
    main()

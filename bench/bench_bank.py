"""Benchmark: memory-bank search, per-turn apply + commit, and fork, at 1k / 10k / 100k entries.

Prints four markdown tables:
  search    top-60 p50/p95: numpy working set (`MemoryBank.search` given a vector, so no query
            embedding is timed), LanceDB brute force on the same vectors, LanceDB + IVF_FLAT
  turn      apply / commit p50/p95 per turn on a persistent bank (2 ADD, 1 UPDATE, 0-1 DELETE,
            1 NOOP) with `HashEmbedder`, plus one line timing real MiniLM embedding of 3 facts
  fork      `MemoryBank.fork` p50/p95
  targets   the issue's targets, the measured values and ✓/✗

Vectors are synthetic 384-d unit vectors (a mixture of 300 random cluster centres plus noise):
fine for speed, meaningless for retrieval quality. Progress goes to stderr, tables to stdout.

    python bench/bench_bank.py [--sizes 1000,10000,100000] [--queries 200] [--turns 100]
                               [--quick] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import IvfFlat

from memr1.memory.bank import MemoryBank
from memr1.memory.embed import HashEmbedder, MiniLMEmbedder
from memr1.memory.entry import Operation, OpKind, TurnContext

DIM, K, CENTRES, NOISE = 384, 60, 300, 0.06  # noise: cosine to own centre ≈ 0.65
BATCH = 5_000  # ADDs per apply (and per commit) when filling a bank
IVF_MIN_ROWS = 5_000  # below this an IVF index is pointless: see the n/a reason
TARGET_SEARCH, TARGET_TURN = {10_000: 2.0, 100_000: 10.0}, 20.0  # issue targets, p50 ms


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def md(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def timed(fn: Callable[[], object], reps: int, warmup: int = 3) -> np.ndarray:
    """Milliseconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(reps)
    for i in range(reps):
        start = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - start) * 1e3
    return out


def p50_95(ms: np.ndarray) -> tuple[str, str]:
    return f"{np.percentile(ms, 50):.2f}", f"{np.percentile(ms, 95):.2f}"


def make_vectors(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """``n`` unit vectors, each a random centre plus Gaussian noise, normalised."""
    out = centres[rng.integers(len(centres), size=n)]
    out += rng.standard_normal((n, DIM), dtype=np.float32) * NOISE
    return out / np.linalg.norm(out, axis=1, keepdims=True)


class FixedEmbedder:
    """Hands out precomputed vectors in order, so a big bank fills without embedding anything."""

    name, dim = "bench-fixed-384", DIM

    def __init__(self, vectors: np.ndarray):
        self._vectors, self._pos = vectors, 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = self._vectors[self._pos : self._pos + len(texts)]
        self._pos += len(texts)
        return out


def fill(bank: MemoryBank, n: int, commit_from: int | None = None) -> int:
    """Add ``n`` entries in ADD batches of `BATCH`; commit each batch from turn ``commit_from``."""
    turn = commit_from or 0
    for start in range(0, n, BATCH):
        ops = [
            Operation(OpKind.ADD, text=f"fact {i} about topic {i % 500}") for i in range(start, min(n, start + BATCH))
        ]
        bank.apply(ops, TurnContext(turn, f"D0:{turn}"))
        if commit_from is not None:
            bank.commit(turn)
        turn += 1
    return turn


def bench_search_and_fork(
    n: int, args: argparse.Namespace, rng: np.random.Generator, centres: np.ndarray
) -> tuple[list[object], list[object], float]:
    """One row of the search table and one of the fork table for a bank of ``n`` entries."""
    log(f"[search] n={n}: building bank and LanceDB table")
    vecs = make_vectors(rng, centres, n)
    queries = make_vectors(rng, centres, args.queries)
    bank = MemoryBank("Bench", FixedEmbedder(vecs))
    fill(bank, n)
    it = itertools.cycle(queries)
    np_ms = timed(lambda: bank.search(next(it), K), args.queries)
    fork_ms = timed(bank.fork, max(10, min(100, 1_000_000 // n)), warmup=1)
    bank = None  # free the working set before the LanceDB part

    with tempfile.TemporaryDirectory(prefix="bench_bank_") as tmp:
        db = lancedb.connect(tmp)
        table = db.create_table(
            "vectors",
            pa.table(
                {
                    "id": np.arange(n),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel(), pa.float32()), DIM),
                }
            ),
        )

        def lance_search(q: np.ndarray) -> pa.Table:
            return table.search(q).distance_type("cosine").limit(K).select(["id"]).to_arrow()

        n_brute = min(args.queries, max(30, 2_000_000 // n))  # ~200 ms a query at 100k
        log(f"[search] n={n}: LanceDB brute force, {n_brute} queries")
        it = itertools.cycle(queries)
        brute_ms = timed(lambda: lance_search(next(it)), n_brute)
        ivf: list[object] = ["n/a", "n/a", "n/a", "n/a"]
        if n >= IVF_MIN_ROWS:
            parts = min(256, round(n**0.5))
            log(f"[search] n={n}: building IVF_FLAT ({parts} partitions)")
            start = time.perf_counter()
            table.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=parts))
            build_s = time.perf_counter() - start
            it = itertools.cycle(queries)
            ivf_ms = timed(lambda: lance_search(next(it)), args.queries)
            hits = []
            for q in queries[:50]:
                exact = set(np.argpartition(-(vecs @ q), K)[:K].tolist())
                hits.append(len(exact & set(lance_search(q).column("id").to_pylist())) / K)
            ivf = [*p50_95(ivf_ms), f"{build_s:.2f} ({parts} parts)", f"{np.mean(hits):.2f}"]
    row = [f"{n:,}", *p50_95(np_ms), *p50_95(brute_ms), n_brute, *ivf]
    return row, [f"{n:,}", *p50_95(fork_ms), len(fork_ms)], float(np.percentile(np_ms, 50))


def bench_turns(n: int, turns: int, rng: np.random.Generator) -> tuple[list[object], float]:
    """One row of the turn table: a persistent bank of ``n`` entries, then ``turns`` timed turns."""
    log(f"[turn] n={n}: building a persistent bank in {BATCH}-entry commits")
    with tempfile.TemporaryDirectory(prefix="bench_bank_") as tmp:
        bank = MemoryBank.open(Path(tmp) / "store", "Bench", HashEmbedder(dim=DIM))
        turn = fill(bank, n, commit_from=0)
        live = [e.id for e in bank.entries()]
        apply_ms, commit_ms = np.empty(turns), np.empty(turns)
        log(f"[turn] n={n}: timing {turns} turns")
        for i in range(turns):
            upd, dele = (live[j] for j in rng.choice(len(live), 2, replace=False))
            ops = [
                Operation(OpKind.ADD, text=f"new fact {turn} about hobby {i % 37}"),
                Operation(OpKind.ADD, text=f"plans for trip {turn} in month {i % 12}"),
                Operation(OpKind.UPDATE, upd, text=f"revised fact {turn} about topic {i}"),
                *([Operation(OpKind.DELETE, dele)] if i % 2 else []),
                Operation(OpKind.NOOP),
            ]
            start = time.perf_counter()
            done = bank.apply(ops, TurnContext(turn, f"D1:{i}", "1:56 pm on 8 May, 2023"))
            mid = time.perf_counter()
            bank.commit(turn)
            end = time.perf_counter()
            apply_ms[i], commit_ms[i] = (mid - start) * 1e3, (end - mid) * 1e3
            live += [op.entry_id for op in done.ops if op.kind is OpKind.ADD]
            if i % 2:
                live.remove(dele)
            turn += 1
        bank = None  # free the working set before the LanceDB part
    both = apply_ms + commit_ms
    with_delete = f"{np.percentile(apply_ms[1::2], 50):.2f}"  # odd turns carry the DELETE
    row = [f"{n:,}", turns, *p50_95(apply_ms), with_delete, *p50_95(commit_ms), *p50_95(both)]
    return row, float(np.percentile(both, 50))


def minilm_line() -> str:
    facts = [
        "Caroline adopted a dog named Max",
        "Melanie ran a charity race in May",
        "Caroline is researching adoption agencies",
    ]
    try:
        emb = MiniLMEmbedder()
        ms = timed(lambda: emb.embed(facts), 20, warmup=2)
    except Exception as err:  # model package missing or broken: report, don't fail
        return f"MiniLM embedding: n/a ({type(err).__name__}: {err})"
    return (
        f"Real embedding a turn adds on top: `MiniLMEmbedder().embed` of 3 short facts "
        f"(CPU) p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms over "
        "20 calls after warm-up."
    )


def verdict(name: str, measured: float | None, target: float) -> list[object]:
    if measured is None:
        return [name, f"≤ {target:g} ms", "not measured", "–"]
    met = "✓" if measured <= target else "✗"
    return [name, f"≤ {target:g} ms", f"{measured:.2f} ms", met]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", help="bank sizes, comma-separated (default 1000,10000,100000)")
    ap.add_argument("--queries", type=int, help="timed search queries per size (default 200)")
    ap.add_argument("--turns", type=int, help="timed turns per bank size (default 100)")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: sizes 1000,10000, 50 queries, 30 turns (explicit flags win)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("1000,10000" if args.quick else "1000,10000,100000")).split(",")]
    args.queries = args.queries or (50 if args.quick else 200)
    args.turns = args.turns or (30 if args.quick else 100)
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((CENTRES, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    print(
        f"# memory-bank benchmark · {time.strftime('%Y-%m-%d')} · "
        f"{platform.processor() or platform.machine()} · {os.cpu_count()} cores · "
        f"python {platform.python_version()} · numpy {np.__version__} · "
        f"lancedb {lancedb.__version__} · BLAS threads {blas or 'default'}\n"
    )
    print(
        f"Synthetic {DIM}-d unit vectors ({CENTRES} cluster centres + noise): fine for speed, "
        f"not for quality. Search is top-{K} with a query vector (no query embedding timed); "
        "times in ms.\n"
    )

    search_rows, fork_rows, search_p50 = [], [], {}
    for n in sizes:
        row, fork_row, search_p50[n] = bench_search_and_fork(n, args, rng, centres)
        search_rows.append(row)
        fork_rows.append(fork_row)
    print(f"## search (top-{K}, {args.queries} queries unless stated)\n")
    print(
        md(
            [
                "entries",
                "numpy p50",
                "numpy p95",
                "LanceDB brute p50",
                "LanceDB brute p95",
                "brute queries",
                "IVF_FLAT p50",
                "IVF_FLAT p95",
                "IVF build (s)",
                f"IVF recall@{K}",
            ],
            search_rows,
        )
    )
    print(
        f"\nLanceDB columns search a LanceDB table of the same vectors, returning ids only. "
        f"IVF_FLAT: cosine, min(256, √n) partitions, LanceDB's default nprobes; recall@{K} vs "
        f"exact search over 50 queries. n/a below {IVF_MIN_ROWS:,} rows: a flat scan of that "
        "little data is the index (√n partitions probed 20 at a time cover most of it).\n"
    )

    turn_rows, turn_p50 = [], {}
    for n in [s for s in sizes if s <= 10_000]:
        row, turn_p50[n] = bench_turns(n, args.turns, rng)
        turn_rows.append(row)
    print("## turn: apply + commit on a persistent bank (2 ADD, 1 UPDATE, 0-1 DELETE, 1 NOOP)\n")
    print(
        md(
            [
                "entries",
                "turns",
                "apply p50",
                "apply p95",
                "apply p50 (DELETE turns)",
                "commit p50",
                "commit p95",
                "apply+commit p50",
                "apply+commit p95",
            ],
            turn_rows,
        )
    )
    print(
        "\nEmbedding is `HashEmbedder(dim=384)` (microseconds): bank + LanceDB costs only. "
        "DELETE rebuilds the working set's row index, O(n)."
    )
    log("[turn] timing MiniLM embedding")
    print(minilm_line() + "\n")

    print("## fork (`MemoryBank.fork`, O(n) copy)\n")
    print(md(["entries", "p50", "p95", "calls"], fork_rows) + "\n")

    print("## targets (issue; p50)\n")
    rows = [verdict(f"search top-{K}, {n:,} (numpy)", search_p50.get(n), goal) for n, goal in TARGET_SEARCH.items()]
    rows += [
        verdict(f"apply + commit per turn, {n:,}", turn_p50.get(n), TARGET_TURN) for n in sorted(turn_p50) or [10_000]
    ]
    print(md(["target", "goal", "measured", "met"], rows))


if __name__ == "__main__":
    main()

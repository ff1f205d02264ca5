"""Build one system's memory banks for the whole LoCoMo test split, in the background, through stage 05.

``memr1 tables`` evaluates every system on the 8 test conversations (1,307 questions, all 5,094 turns);
for the LLM-bank systems (base, memory-r1) building the banks is most of that time, hours on a CPU.
This driver builds them ahead with stage 05's own code (`memr1.stages.evaluate.prepare_banks`: the same
config, ``lockstep`` conversations per model call, the same store folder ``<runs>/locomo/store/<system
key>``), so a later stage-05 run of that system (``memr1 tables --run-missing``) finds the banks done and
only answers. It answers nothing itself.

Resumable: kill it at any time and start it again with the same command; every conversation continues
after the last turn it ran (`memr1.agents.builder`), nothing committed is lost and no counted turn runs
twice. Every ``--every`` seconds it logs a line with the turns done (read from the store, so a resumed
run counts what earlier runs did), this run's rate and the time left at that rate. Start it with, e.g.:

    MEMR1_DATA_DIR=../shared/data OMP_NUM_THREADS=1 nohup taskset -c 1 .venv/bin/python \\
        experiments/locomo_banks.py --system base > logs/locomo_banks_base.log 2>&1 &

``--system memory-r1`` builds with the trained manager of ``--seed`` (the adapter ``memr1 tables`` uses);
memory-r1-answer reads base's banks. ``--max-turns N`` builds only each conversation's first N turns.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path

from memr1.stages.tables import TablesConfig, locomo_config


def turns_done(store: Path, convs: list, max_turns: int) -> int:
    """Turns the store's builds have run, from each conversation's processed.json (speaker → last turn run)."""
    done = 0
    for conv in convs:
        path = store / conv.sample_id / "processed.json"
        last = json.loads(path.read_text()) if path.exists() else {}
        done += sum(
            t.position <= last.get(t.speaker, -1) for t in conv.turns() if not max_turns or t.position < max_turns
        )
    return done


def report(store: Path, convs: list, max_turns: int, every: float, stop: threading.Event) -> None:
    """Log the progress line every ``every`` seconds until ``stop`` is set (and once more at the end)."""
    total = sum(1 for c in convs for t in c.turns() if not max_turns or t.position < max_turns)
    start_time, start_done = time.time(), turns_done(store, convs, max_turns)
    while True:
        stopped = stop.wait(every)
        done = turns_done(store, convs, max_turns)
        rate = (done - start_done) / max(1e-9, time.time() - start_time)
        eta = f"{(total - done) / rate / 3600:.1f} h left" if rate > 0 else "no turn finished yet"
        print(
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {done}/{total} turns ({done / total:.1%}), "
            f"{rate * 3600:.0f} turns/h this run, {eta}",
            flush=True,
        )
        if stopped:
            return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", default="base", choices=["base", "memory-r1", "heuristic", "replay"])
    ap.add_argument("--seed", type=int, default=0, help="training seed of the memory-r1 manager adapter")
    ap.add_argument("--runs", default=TablesConfig.runs, help="memr1 tables' runs folder (the store is inside)")
    ap.add_argument("--lockstep", type=int, default=0, help="conversations per model call (0: stage 05's default)")
    ap.add_argument("--max-turns", type=int, default=0, help="only each conversation's first N turns (0: all)")
    ap.add_argument("--every", type=float, default=300, help="seconds between progress lines")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")  # the cache's reuse line

    from memr1.data.locomo import load_locomo
    from memr1.stages.evaluate import prepare_banks, select_questions, system_key

    cfg = locomo_config(TablesConfig(runs=args.runs), args.system, args.seed)
    changes = {"max_turns": args.max_turns} | ({"lockstep": args.lockstep} if args.lockstep else {})
    cfg = cfg.replace(**changes).resolved()
    store = Path(cfg.store_dir) / system_key(cfg)
    data = load_locomo(cfg.data_dir or None)
    convs = [data.conversation(i) for i in dict.fromkeys(q.sample_id for q in select_questions(data, cfg))]
    print(f"{cfg.system} banks of {len(convs)} conversations into {store} (lockstep {cfg.lockstep})", flush=True)
    stop = threading.Event()
    watcher = threading.Thread(target=report, args=(store, convs, cfg.max_turns, args.every, stop))
    watcher.start()
    try:
        started = time.time()
        tallies = prepare_banks(cfg, progress=False)
    finally:
        stop.set()
        watcher.join()
    for sample_id, tally in tallies.items():
        print(f"{sample_id}: operations {dict(tally.applied)}, rejected {dict(tally.rejected)}", flush=True)
    print(f"done in {(time.time() - started) / 3600:.2f} h; `memr1 tables --run-missing` now only answers", flush=True)


if __name__ == "__main__":
    main()

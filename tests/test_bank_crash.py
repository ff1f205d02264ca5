"""Crash safety: a writer killed with SIGKILL mid-turn reopens at its last committed turn.

The child process (this module run as a script) applies each turn in three batches, commits it
and prints the turn number. The parent kills it at a random moment, reopens the store, checks it
against a deterministic replay, and lets a fresh child carry on from there, three times over.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from memr1.memory import HashEmbedder, MemoryBank, Operation, OpKind, TurnContext

SPEAKER = "Crash Tester"
WORDS = ["dog", "cat", "tea", "paris", "nurse", "hiking", "sister", "blue", "april"]


def batch(bank: MemoryBank, turn: int, part: int) -> list[Operation]:
    """The operations of one batch: a function of (turn, part) and the bank's state only."""
    rng = random.Random(turn * 10 + part)
    ids = [e.id for e in bank.entries()]
    ops = [Operation(OpKind.ADD, text=" ".join(rng.sample(WORDS, 3))) for _ in range(rng.randint(1, 3))]
    for eid in rng.sample(ids, min(len(ids), 2)):
        if rng.random() < 0.5:
            ops.append(Operation(OpKind.UPDATE, eid, f"{eid} revised at {turn}.{part}"))
        else:
            ops.append(Operation(OpKind.DELETE, eid))
    return ops


def play_turn(bank: MemoryBank, turn: int) -> None:
    for part in range(3):
        bank.apply(batch(bank, turn, part), TurnContext(turn, f"D{turn}:{part}", f"day {turn}"))


def child(store: str) -> None:
    """Resume after the last commit and write turns until killed."""
    bank = MemoryBank.open(store, SPEAKER, HashEmbedder(64))
    turn = -1 if bank.turn is None else bank.turn
    while True:
        turn += 1
        play_turn(bank, turn)
        time.sleep(0.002)  # widen the window in which a kill finds uncommitted changes
        bank.commit(turn)
        print(turn, flush=True)


def run_and_kill(store: Path, rng: random.Random, log: Path) -> int:
    """Start a child, wait for three fresh commits, SIGKILL it; the last turn it printed."""
    with open(log, "a") as err:
        proc = subprocess.Popen([sys.executable, __file__, str(store)], stdout=subprocess.PIPE, stderr=err, text=True)
    printed: list[int] = []
    try:
        while len(printed) < 3:
            line = proc.stdout.readline()
            assert line, f"child exited early ({proc.wait()}): {log.read_text()[-2000:]}"
            printed.append(int(line))
        time.sleep(rng.uniform(0.0, 0.05))  # lands anywhere in a turn: apply, commit or print
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        printed += [int(tok) for tok in proc.stdout.read().split()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return printed[-1]


def test_sigkill_mid_turn_loses_nothing_committed(tmp_path):
    rng = random.Random(1234)
    store = tmp_path / "store"
    for _ in range(3):
        last_printed = run_and_kill(store, rng, tmp_path / "child.log")
        bank = MemoryBank.open(store, SPEAKER, HashEmbedder(64))
        assert last_printed <= bank.turn <= last_printed + 1
        assert bank.committed_turns() == list(range(bank.turn + 1))
        expected = MemoryBank(SPEAKER, HashEmbedder(64))
        for turn in range(bank.turn + 1):
            play_turn(expected, turn)
        assert bank == expected and len(bank) > 0


if __name__ == "__main__":
    child(sys.argv[1])

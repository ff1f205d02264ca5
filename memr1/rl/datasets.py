"""GRPO datasets for Memory-R1's two agents, built from LoCoMo and the observation-replay teacher.

Teacher banks (docs/design.md §manager states): LoCoMo's own ``observation`` facts replayed turn
by turn (`memr1.memory.replay`) into one LanceDB-backed bank per speaker, committed at *every* turn,
so ``bank.checkout(t)`` is the bank right after turn ``t`` and the state a manager acts on at turn
``t`` is ``checkout(t - 1)``. Before turn 0 there is nothing: snapshot turn ``-1`` is the empty bank.

Answer Agent rows (docs/design.md §training): one per question of a split, category 5 left out;
the prompt (``answer_prompts``, the Answer Agent's own) shows the 30 memories per speaker (60 in
all) that the question retrieves from the final teacher banks, or from banks a given manager built
(``banks_by_conv``).

Memory Manager rows (docs/design.md §training; the single-step formulation: snapshot bank + one
turn's facts). A question is *linked* to a turn when one of its evidence ids is that turn's dia_id.
Every turn with linked questions gives one row per speaker that has teacher facts at that turn (the
observations `schedule_observations` places there for that speaker); in LoCoMo those facts almost
always belong to the turn's own speaker (conv-26: always; conv-30: one turn also carries a fact of
the other one). The prompt is `manager_messages` over the speaker's related memories in the snapshot.

Every row holds plain JSON values (``id_map`` as a JSON string, since maps with different keys do
not share one Arrow schema), so ``datasets.Dataset.from_list(rows)`` takes them as they are. Extra
columns beyond the documented ones reach TRL reward functions as keyword arguments.

>>> rows = manager_rows(data, "train", make_embedder("hash"), store_dir="runs/teacher")  # doctest: +SKIP
>>> len(rows), rows[0]["snapshot_turn"], rows[0]["questions"][:1]                       # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from memr1.agents.answer import answer_prompts
from memr1.agents.manager import manager_messages, related_memories
from memr1.data.locomo import QA, Conversation, LoCoMo
from memr1.data.splits import split_conversations, split_questions
from memr1.errors import ConfigError, StoreError
from memr1.memory.bank import MemoryBank
from memr1.memory.embed import Embedder
from memr1.memory.ops import remap_ids
from memr1.memory.replay import replay_observations, schedule_observations
from memr1.memory.retrieve import K_PER_SPEAKER

TEACHER_COMMIT = "every"
"""Commit mode of the teacher stores: a snapshot exists after every turn."""
EMPTY_SNAPSHOT = -1
"""Snapshot turn meaning "before the conversation": the empty bank."""


# --------------------------------------------------------------------------- teacher banks


def teacher_banks(
    conv: Conversation, embedder: Embedder, store_dir: str | Path, *, progress: bool = False
) -> dict[str, MemoryBank]:
    """The observation-replay teacher banks of ``conv``, persisted with a commit at every turn.

    The store lives in ``store_dir/<sample_id>``; a second call resumes after the last committed
    turn, so it only reopens the tables. Use a store directory of its own: a store first written
    with another commit mode would lack the early snapshots.

    Args:
        conv: the conversation.
        embedder: embeds the facts; reopening a store needs the embedder it was written with.
        store_dir: parent folder of the per-conversation LanceDB stores.
        progress: show a progress bar over the turns while replaying.

    Returns:
        Final bank per speaker, in ``conv.speakers`` order (writable, persistent).
    """
    rep = replay_observations(conv, embedder, store_dir=store_dir, commit=TEACHER_COMMIT, progress=progress)
    return {sp: rep.banks[sp] for sp in conv.speakers}


def open_teacher_bank(store_dir: str | Path, sample_id: str, speaker: str, embedder: Embedder) -> MemoryBank:
    """Reopen one speaker's teacher bank written by `teacher_banks` (as of its last commit).

    Raises:
        StoreError: ``store_dir/<sample_id>`` does not exist (run `teacher_banks` first).
    """
    root = Path(store_dir) / sample_id
    if not root.is_dir():
        raise StoreError(
            f"no teacher store for {sample_id!r} in {Path(store_dir)}; build it with "
            "memr1.rl.datasets.teacher_banks (or manager_rows) first"
        )
    return MemoryBank.open(root, speaker, embedder)


def snapshot(bank: MemoryBank, turn: int) -> MemoryBank:
    """The bank as it was right after ``turn``: a read-only checkout, or an empty bank.

    ``turn`` -1 (or any turn before the first commit) gives a fresh empty bank of the same speaker
    and embedder. Callers that want to change a snapshot must `MemoryBank.fork` it.
    """
    committed = bank.committed_turns()
    if turn < 0 or not committed or turn < committed[0]:
        return MemoryBank(bank.speaker, bank.embedder)
    return bank.checkout(turn)


def linked_questions(conv: Conversation) -> dict[int, list[QA]]:
    """Turn position → the questions (category 5 left out, file order) citing that turn."""
    out: dict[int, list[QA]] = {}
    for qa in conv.qa:
        if qa.category == 5:
            continue
        for position in dict.fromkeys(conv.turn(e).position for e in qa.evidence):
            out.setdefault(position, []).append(qa)
    return out


def _distinct(texts: Sequence[str]) -> list[str]:
    """Stripped, non-blank texts, each once, first occurrence kept (as the manager cleans facts)."""
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


# --------------------------------------------------------------------------- Answer Agent


def answer_agent_rows(
    data: LoCoMo,
    split: str,
    embedder: Embedder,
    *,
    store_dir: str | Path | None = None,
    k_per_speaker: int = K_PER_SPEAKER,
    limit: int = 0,
    banks_by_conv: Mapping[str, Mapping[str, MemoryBank]] | None = None,
    progress: bool = False,
    style: str = "distill",
) -> list[dict]:
    """One Answer-Agent row per question of ``split`` (category 5 left out), in file order.

    Args:
        data: LoCoMo.
        split: "train", "validation", "test" or "all".
        embedder: embeds the teacher facts and the questions.
        store_dir: parent folder of the teacher stores; needed for every conversation that
            ``banks_by_conv`` does not cover.
        k_per_speaker: memories retrieved per speaker (Memory-R1: 30).
        limit: > 0 keeps only the first ``limit`` questions.
        banks_by_conv: sample_id → speaker → bank, to answer from banks a given manager built
            instead of the teacher's. Questions are embedded with those banks' embedder.
        progress: progress bar while replaying a teacher.

    Returns:
        Rows ``{"prompt", "gold", "qid", "category", "sample_id", "question"}``.

    Raises:
        ConfigError: a conversation has neither given banks nor a ``store_dir``, or a given
            mapping lacks one of its speakers.
    """
    questions = split_questions(data, split, limit=limit)
    by_conv: dict[str, list[QA]] = {}
    for qa in questions:
        by_conv.setdefault(qa.sample_id, []).append(qa)
    rows = []
    for sample_id, qs in by_conv.items():
        conv = data.conversation(sample_id)
        speakers = list(conv.speakers)
        if banks_by_conv is not None and sample_id in banks_by_conv:
            given = banks_by_conv[sample_id]
            missing = [sp for sp in speakers if sp not in given]
            if missing:
                raise ConfigError(
                    f"banks_by_conv[{sample_id!r}] has no bank for {missing}; give one per speaker of {speakers}"
                )
            banks = {sp: given[sp] for sp in speakers}
        elif store_dir is None:
            raise ConfigError(
                f"answer_agent_rows needs store_dir for the teacher banks of "
                f"{sample_id!r} (or its banks in banks_by_conv)"
            )
        else:
            banks = teacher_banks(conv, embedder, store_dir, progress=progress)
        prompts = answer_prompts([(qa.question, banks) for qa in qs], k_per_speaker, style)
        for qa, (prompt, _) in zip(qs, prompts):
            rows.append(
                {
                    "prompt": prompt,
                    "gold": qa.answer,
                    "qid": qa.qid,
                    "category": qa.category,
                    "sample_id": sample_id,
                    "question": qa.question,
                }
            )
    return rows


# --------------------------------------------------------------------------- Memory Manager


def manager_rows(
    data: LoCoMo,
    split: str,
    embedder: Embedder,
    *,
    store_dir: str | Path,
    k_similar: int = 5,
    style: str = "json",
    progress: bool = False,
) -> list[dict]:
    """One Memory-Manager row per (turn with linked questions, speaker with teacher facts there).

    Args:
        data: LoCoMo.
        split: "train", "validation", "test" or "all".
        embedder: embeds facts; the reward must reopen the stores with the same embedder.
        store_dir: parent folder of the teacher stores (created or resumed here).
        k_similar: related memories retrieved per fact for the prompt.
        style: manager prompt style (``memr1.agents.manager.MANAGER_STYLES``).
        progress: progress bars over replay and rows.

    Returns:
        Rows in conversation, turn, speaker order with keys ``prompt`` (chat messages),
        ``id_map`` (JSON: small id → real id), ``store`` (absolute ``store_dir``), ``sample_id``,
        ``speaker``, ``speakers`` (both, conversation order), ``turn``, ``dia_id``,
        ``session_time``, ``snapshot_turn`` (``turn - 1``; -1 is the empty bank), ``facts``,
        ``questions``, ``answers`` and ``qids`` of the linked questions.
    """
    store = Path(store_dir).resolve()
    rows = []
    for conv in split_conversations(data, split):
        banks = teacher_banks(conv, embedder, store, progress=progress)
        schedule, _ = schedule_observations(conv)
        linked = linked_questions(conv)
        turns = [t for t in conv.turns() if t.position in linked and t.position in schedule]
        for turn in tqdm(turns, desc=f"manager rows {conv.sample_id}", unit="turn", disable=not progress):
            qs = linked[turn.position]
            for speaker in conv.speakers:
                facts = _distinct([o.text for o in schedule[turn.position] if o.speaker == speaker])
                if not facts:
                    continue
                before = turn.position - 1
                view, id_map = remap_ids(related_memories(snapshot(banks[speaker], before), facts, k_similar))
                session_time = conv.session_time(turn.session)
                rows.append(
                    {
                        "prompt": manager_messages(facts, view, speaker, session_time, style),
                        "id_map": json.dumps(id_map),
                        "store": str(store),
                        "sample_id": conv.sample_id,
                        "speaker": speaker,
                        "speakers": list(conv.speakers),
                        "turn": turn.position,
                        "dia_id": turn.dia_id,
                        "session_time": session_time,
                        "snapshot_turn": before,
                        "facts": facts,
                        "questions": [q.question for q in qs],
                        "answers": [q.answer for q in qs],
                        "qids": [q.qid for q in qs],
                    }
                )
    return rows

"""Export the GRPO datasets to verl's RL parquet layout, with a self-contained reward file.

verl (the engine Memory-R1 trained on) reads one parquet file per split whose rows hold five
fields, as its data-preparation guide describes (volcengine/verl ``docs/preparation/prepare_data.rst``):
``data_source`` (names the dataset and picks the reward function), ``prompt`` (chat messages; the
tokenizer's chat template is applied by verl's ``RLHFDataset``), ``ability`` (task category),
``reward_model`` ``{"style": "rule", "ground_truth": ...}`` and ``extra_info`` (free metadata).

A custom reward is a Python file given as ``custom_reward_function.path``; with
``custom_reward_function.name`` unset verl calls its ``compute_score``, with the parameters
``data_source, solution_str, ground_truth, extra_info`` (``docs/preparation/reward_function.rst``;
``verl/workers/reward_manager/naive.py`` calls it with exactly those keywords, ``solution_str``
being the decoded response). The ``reward.py`` written here imports only the standard library, so
verl workers need nothing from memr1; it repeats `memr1.agents.answer.extract_answer` and
`memr1.eval.metrics.exact_match`, and a test keeps the two in agreement.

The manager task (``task="manager"``) exports the same rows as `memr1.rl.datasets.manager_rows`
(everything the reward needs sits in ``extra_info``), but its reward needs the frozen Answer Agent and
the teacher stores: ``reward.py`` refuses that data source with a message instead of guessing.

    memr1 export-verl --out runs/verl --embedder minilm            # answer task
    memr1 export-verl --out runs/verl-manager --task manager
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from memr1.data.locomo import LoCoMo
from memr1.errors import ConfigError
from memr1.files import atomic_path, write_text_atomic
from memr1.memory.embed import Embedder
from memr1.rl.datasets import answer_agent_rows, manager_rows

TASKS = ("answer", "manager")
ANSWER_SOURCE = "memr1/locomo-answer"
MANAGER_SOURCE = "memr1/locomo-manager"
SPLIT_FILES = {"train": "train.parquet", "validation": "validation.parquet"}
VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")

REWARD_SOURCE = '''\
"""Exact-match reward for memr1's Answer-Agent task in verl (written by `memr1 export-verl`).

Use with ``custom_reward_function.path=<this file>`` (name: compute_score). Standard library only.
The score is 1.0 when the text after the last ``**Answer:**`` marker (first line, stripped; the
whole output when there is no marker) equals the gold answer after lower-casing and removing
punctuation, the articles a/an/the and extra whitespace; else 0.0. An empty gold never matches.
"""

import re
import string

ANSWER_SOURCE = "memr1/locomo-answer"
MANAGER_SOURCE = "memr1/locomo-manager"
_ANSWER_MARK = re.compile(r"\\*\\*\\s*answer\\s*:?\\s*\\*\\*\\s*:?", re.IGNORECASE)
_PUNCT = set(string.punctuation)


def extract_answer(output):
    """Text after the last **Answer:** marker (the whole output without one), first line only."""
    output = "" if output is None else str(output)
    parts = _ANSWER_MARK.split(output)
    answer = (parts[-1] if len(parts) > 1 else output).strip()
    return answer.splitlines()[0].strip() if answer else ""


def normalize(text):
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    text = re.sub(r"\\b(a|an|the)\\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction, gold):
    """1.0 when both normalize to the same non-empty string, else 0.0."""
    p, g = normalize(prediction), normalize(gold)
    return float(bool(g) and p == g)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """verl's custom reward entry point: EM of the answer span against ``ground_truth``."""
    if data_source == MANAGER_SOURCE:
        raise ValueError("the memory-manager reward needs memr1's ManagerReward (a frozen Answer "
                         "Agent answering from the teacher stores); it cannot run from this file")
    return exact_match(extract_answer(solution_str), ground_truth)
'''


def verl_answer_records(rows: list[dict], split: str) -> list[dict]:
    """`answer_agent_rows` output → verl rows (gold as ``ground_truth``)."""
    return [
        {
            "data_source": ANSWER_SOURCE,
            "prompt": row["prompt"],
            "ability": "memory-qa",
            "reward_model": {"style": "rule", "ground_truth": row["gold"]},
            "extra_info": {
                "split": split,
                "index": i,
                "qid": row["qid"],
                "sample_id": row["sample_id"],
                "category": row["category"],
                "question": row["question"],
            },
        }
        for i, row in enumerate(rows)
    ]


def verl_manager_records(rows: list[dict], split: str) -> list[dict]:
    """`manager_rows` output → verl rows (linked answers as ``ground_truth``, the rest in extra_info)."""
    out = []
    for i, row in enumerate(rows):
        extra = {k: v for k, v in row.items() if k != "prompt"}
        out.append(
            {
                "data_source": MANAGER_SOURCE,
                "prompt": row["prompt"],
                "ability": "memory-management",
                "reward_model": {"style": "rule", "ground_truth": list(row["answers"])},
                "extra_info": {"split": split, "index": i, **extra},
            }
        )
    return out


def export_verl(
    data: LoCoMo,
    out_dir: str | Path,
    embedder: Embedder,
    *,
    store_dir: str | Path,
    task: str = "answer",
    k_per_speaker: int = 30,
    k_similar: int = 5,
    limit: int = 0,
    progress: bool = False,
) -> dict[str, Path]:
    """Write ``train.parquet``, ``validation.parquet`` and ``reward.py`` into ``out_dir``.

    Args:
        data: LoCoMo.
        out_dir: output folder (created).
        embedder: for the teacher banks and retrieval.
        store_dir: parent folder of the teacher stores (kept: the manager rows point at it).
        task: "answer" (Answer Agent, 152 / 81 rows) or "manager" (Memory Manager).
        k_per_speaker: memories per speaker in answer prompts.
        k_similar: related memories per fact in manager prompts.
        limit: > 0 keeps the first ``limit`` questions per split (answer task only).
        progress: progress bars while replaying.

    Returns:
        ``{"train": path, "validation": path, "reward": path}``.

    Raises:
        ConfigError: unknown task.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown export task {task!r}; choose one of {TASKS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, filename in SPLIT_FILES.items():
        if task == "answer":
            rows = answer_agent_rows(
                data, split, embedder, store_dir=store_dir, k_per_speaker=k_per_speaker, limit=limit, progress=progress
            )
            records = verl_answer_records(rows, split)
        else:
            rows = manager_rows(data, split, embedder, store_dir=store_dir, k_similar=k_similar, progress=progress)
            records = verl_manager_records(rows, split)
        frame = pd.DataFrame(records, columns=list(VERL_COLUMNS))
        paths[split] = out / filename
        with atomic_path(paths[split]) as tmp:
            frame.to_parquet(tmp, index=False)
    paths["reward"] = write_text_atomic(out / "reward.py", REWARD_SOURCE)
    return paths

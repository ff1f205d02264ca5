"""Export memr1's RL tasks to verl: parquet datasets, reward files and PPO / GRPO trainer configs.

verl (the engine Memory-R1 and MEM1 trained with) reads one parquet file per split whose rows hold five
fields, as its data-preparation guide describes (volcengine/verl ``docs/preparation/prepare_data.rst``):
``data_source`` (names the dataset and picks the reward), ``prompt`` (chat messages; verl applies the
tokenizer's chat template), ``ability`` (task category), ``reward_model`` ``{"style": "rule",
"ground_truth": ...}`` and ``extra_info`` (free metadata, handed to the reward). One export writes, for
one task, into ``out_dir``:

- ``train.parquet`` and ``validation.parquet``;
- ``reward.py``: `memr1.rl.verl_reward` copied, standard library only, for the Answer Agent (EM) and
  MEM1 (objectives answered exactly);
- ``reward_manager.py`` (manager task only): imports `memr1.rl.verl_manager_reward`, which runs memr1's
  `ManagerReward` (the frozen Answer Agent answering from a fork of the teacher bank); it needs memr1
  installed in verl's environment (``make verl-env``);
- ``<task>_<algorithm>.yaml``: verl trainer configs with the papers' hyperparameters
  (`memr1.rl.verl_configs`; Memory-R1's agents with PPO and GRPO, MEM1 with PPO).

Tasks:

- ``answer``: one row per question (`memr1.rl.datasets.answer_agent_rows`: 60 teacher memories and
  the question), the gold as ``ground_truth``.
- ``manager``: one row per (turn with linked questions, speaker) (`memr1.rl.datasets.manager_rows`);
  everything the reward needs (teacher store, snapshot turn, id map, the linked questions and answers)
  sits in ``extra_info``, and the store path is absolute, so the store must stay where it was built.
- ``mem1``: MEM1's multi-objective tasks (`memr1.data.tasks.make_tasks`, N questions asked together;
  train pool → train, held-out pool → validation). What maps to verl is the task and the final-answer
  reward, not MEM1's environment: verl's rollout here is one turn, so the prompt is the turn-0 context
  with the last-turn hint (answer now, no search) and ``extra_info`` keeps the gold passage ids and
  MEM1's turn budget for a custom agent loop. MEM1's search tool, its pruned context and its masked
  multi-turn rows are not exported (docs/design.md §Training).

    memr1 export-verl --out runs/verl --embedder minilm            # answer task
    memr1 export-verl --out runs/verl-manager --task manager
    memr1 export-verl --out runs/verl-mem1 --task mem1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from memr1.agents.mem1 import build_context, turn_budget
from memr1.data.locomo import LoCoMo
from memr1.data.tasks import Task, make_tasks
from memr1.errors import ConfigError
from memr1.files import atomic_path, write_text_atomic
from memr1.memory.embed import Embedder
from memr1.rl import verl_reward
from memr1.rl.datasets import answer_agent_rows, manager_rows
from memr1.rl.verl_configs import ALGORITHMS, PAPER_MODELS, write_trainer_config

TASKS = tuple(ALGORITHMS)
ANSWER_SOURCE = verl_reward.ANSWER_SOURCE
MANAGER_SOURCE = verl_reward.MANAGER_SOURCE
MEM1_PREFIX = verl_reward.MEM1_PREFIX
SPLIT_FILES = {"train": "train.parquet", "validation": "validation.parquet"}
VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
MANAGER_REWARD_SOURCE = '''\
"""Memory-Manager reward for verl, written by `memr1 export-verl --task manager`.

It runs memr1's ManagerReward, so memr1 must be importable in verl's environment (`make verl-env`
installs it there without memr1's own pins); see memr1/rl/verl_manager_reward.py for what it does.
"""

from memr1.rl.verl_manager_reward import compute_score  # noqa: F401
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


def verl_mem1_records(tasks: Sequence[Task], split: str, prompt_style: str = "plain") -> list[dict]:
    """MEM1 tasks → verl rows: the turn-0 context with the last-turn hint; per-objective gold aliases
    as MEM1's ``{"target": [...]}``."""
    out = []
    for i, task in enumerate(tasks):
        n = task.n_objectives
        out.append(
            {
                "data_source": f"{MEM1_PREFIX}{task.source}",
                "prompt": build_context(task, 0, "", None, "", 1, prompt_style=prompt_style),
                "ability": "multi-objective-qa",
                "reward_model": {
                    "style": "rule",
                    "ground_truth": {"target": [list(o.answers) for o in task.objectives]},
                },
                "extra_info": {
                    "split": split,
                    "index": i,
                    "task_id": task.id,
                    "n_objectives": n,
                    "max_turns": turn_budget(n),
                    "corpus_id": task.corpus_id,
                    "qids": [o.qid for o in task.objectives],
                    "questions": [o.question for o in task.objectives],
                    "gold_ids": [list(o.gold_ids) for o in task.objectives],
                },
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
    model: str = "",
    answer_model: str = "",
    answer_adapter: str = "",
) -> dict[str, Path]:
    """Write a Memory-R1 agent's datasets, reward files and trainer configs into ``out_dir``.

    Args:
        data: LoCoMo.
        out_dir: output folder (created).
        embedder: for the teacher banks and retrieval.
        store_dir: parent folder of the teacher stores (kept: the manager rows point at it).
        task: "answer" (Answer Agent, 152 / 81 rows) or "manager" (Memory Manager).
        k_per_speaker: memories per speaker in answer prompts and in the manager reward's answers.
        k_similar: related memories per fact in manager prompts.
        limit: > 0 keeps the first ``limit`` questions per split (answer task only).
        progress: progress bars while replaying.
        model: the policy (and critic) model of the configs; "" uses `PAPER_MODELS`.
        answer_model: manager task: the frozen Answer Agent's base model; "" uses ``model``.
        answer_adapter: manager task: its LoRA adapter or answer-agent run folder; "" for none.

    Returns:
        ``{"train", "validation", "reward", ["reward_manager"], "<task>_<algorithm>"...: path}``.

    Raises:
        ConfigError: unknown task (``mem1`` has `export_mem1`).
    """
    if task not in ("answer", "manager"):
        raise ConfigError(f"unknown export task {task!r}; choose answer or manager (mem1: export_mem1)")
    records = {}
    for split in SPLIT_FILES:
        if task == "answer":
            rows = answer_agent_rows(
                data, split, embedder, store_dir=store_dir, k_per_speaker=k_per_speaker, limit=limit, progress=progress
            )
            records[split] = verl_answer_records(rows, split)
        else:
            rows = manager_rows(data, split, embedder, store_dir=store_dir, k_similar=k_similar, progress=progress)
            records[split] = verl_manager_records(rows, split)
    model = model or PAPER_MODELS[task]
    kwargs: dict[str, Any] = {"score": "em"}
    if task == "manager":
        kwargs = {
            "answer_model": answer_model or model,
            "answer_adapter": answer_adapter,
            "embedder": _embedder_key(embedder),
            "k_per_speaker": k_per_speaker,
            **kwargs,
        }
    return write_export(out_dir, task, records, model=model, reward_kwargs=kwargs)


def export_mem1(
    out_dir: str | Path,
    *,
    source: str = "hotpotqa",
    data_dir: str | Path | None = None,
    n_objectives: int = 2,
    n_train: int = 512,
    n_validation: int = 128,
    seed: int = 0,
    prompt_style: str = "plain",
    model: str = "",
) -> dict[str, Path]:
    """Write MEM1's multi-objective tasks, their reward and a PPO config into ``out_dir``.

    Training tasks come from the train pool, validation tasks from the held-out one (HotpotQA's test
    half, LoCoMo's validation conversation); MEM1 trains on N = 2. See the module docstring for what
    does not map to verl.
    """
    held_out = "test" if source == "hotpotqa" else "validation"
    records = {
        split: verl_mem1_records(
            make_tasks(source, n_objectives, count, seed, data_dir=data_dir, split=pool), split, prompt_style
        )
        for split, pool, count in (("train", "train", n_train), ("validation", held_out, n_validation))
    }
    return write_export(out_dir, "mem1", records, model=model or PAPER_MODELS["mem1"], reward_kwargs={"score": "em"})


def write_export(
    out_dir: str | Path,
    task: str,
    records: Mapping[str, list[dict]],
    *,
    model: str,
    reward_kwargs: Mapping[str, Any],
) -> dict[str, Path]:
    """Write the split files, the reward file(s) and one config per algorithm of ``task``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, filename in SPLIT_FILES.items():
        paths[split] = out / filename
        with atomic_path(paths[split]) as tmp:
            pd.DataFrame(records[split], columns=list(VERL_COLUMNS)).to_parquet(tmp, index=False)
    paths["reward"] = write_text_atomic(out / "reward.py", Path(verl_reward.__file__).read_text())
    if task == "manager":
        paths["reward_manager"] = write_text_atomic(out / "reward_manager.py", MANAGER_REWARD_SOURCE)
    for algorithm in ALGORITHMS[task]:
        paths[f"{task}_{algorithm}"] = write_trainer_config(
            out,
            task,
            algorithm,
            train_file=paths["train"],
            val_file=paths["validation"],
            reward_file=paths.get("reward_manager", paths["reward"]),
            n_train=len(records["train"]),
            model=model,
            reward_kwargs=reward_kwargs,
        )
    return paths


def _embedder_key(embedder: Embedder) -> str:
    """The `make_embedder` name of ``embedder``: the manager reward reopens the stores with it."""
    from memr1.memory.embed import EMBEDDERS, make_embedder

    for key in EMBEDDERS:
        if make_embedder(key, cached=False).name == embedder.name:
            return key
    raise ConfigError(f"embedder {embedder.name!r} has no make_embedder name; the manager reward could not reopen it")

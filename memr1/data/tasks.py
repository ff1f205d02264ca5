"""Multi-objective tasks: N questions asked together, answered in one go, scored per question.

MEM1 (Zhou et al., arXiv 2506.15841; docs/design.md §MEM1 agent) chains N questions of one source into one
task so that a long horizon needs memory: the agent must keep every found answer in its internal
state until it answers all of them. Here a task is built from

- **HotpotQA**: N distinct questions of the sample (or a full file); the corpus is *every*
  paragraph of the file (991 in the sample), the gold passages are each question's supporting
  paragraphs;
- **LoCoMo**: N distinct non-adversarial questions of *one* conversation; the corpus is that
  conversation's turns (one passage per turn, titled with the speaker and the session date-time,
  id = dialogue id), the gold passages are the question's evidence turns. Questions with no
  resolvable evidence turn are left out.

**Held-out pools** (``split``): training draws from one pool of questions, evaluation from another,
so a trained agent is scored on questions it never saw. HotpotQA: the distinct questions of the file
in file order, cut in two fixed halves (first half ``train``, second half ``test``; the corpus stays
the whole file, as the environment both share). LoCoMo: the paper split by conversation
(``memr1.data.splits``): ``train`` = conv-26, ``validation`` = conv-30, ``test`` = the other 8.
``all`` (the default) uses every question.

Sampling is seeded per task: task ``i`` depends only on (source, N, seed, i, pool, split), so asking
for more tasks keeps the first ones. MEM1 groups *consecutive* questions; random grouping here is a
documented deviation (it avoids tasks made of near-duplicate neighbouring questions).

>>> tasks = make_tasks("hotpotqa", n_objectives=2, n_tasks=3, seed=0)   # doctest: +SKIP
>>> len(tasks[0].objectives), tasks[0].corpus_id                      # doctest: +SKIP
(2, 'hotpotqa:hotpot_dev_distractor_sample100.json')
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memr1.data.corpus import Corpus, Passage
from memr1.errors import ConfigError

SOURCES = ("hotpotqa", "locomo")
MAX_OBJECTIVES = 16
TASK_SPLITS = ("all", "train", "validation", "test")
"""Question pools; ``validation`` exists for LoCoMo only (HotpotQA has two halves)."""


@dataclass(frozen=True)
class Objective:
    """One question of a task."""

    qid: str
    """Id of the question in its dataset (``hotpotqa:12``, ``conv-26:q7``, or a HotpotQA ``_id``)."""
    question: str
    answers: tuple[str, ...]
    """Gold answers (aliases); a prediction is scored against the best one."""
    gold_ids: tuple[str, ...]
    """Corpus ids of the passages that hold the answer (supporting paragraphs, evidence turns)."""
    kind: str = ""
    """HotpotQA type (bridge, comparison) or the LoCoMo category id as text."""


@dataclass(frozen=True)
class Task:
    """N objectives over one corpus; ``corpus`` is shared between tasks (not copied, not compared)."""

    id: str
    source: str
    """"hotpotqa" or "locomo"."""
    objectives: tuple[Objective, ...]
    corpus: Corpus = field(repr=False, compare=False)

    @property
    def corpus_id(self) -> str:
        return self.corpus.id

    @property
    def n_objectives(self) -> int:
        return len(self.objectives)

    def gold_passages(self, k: int) -> list[Passage]:
        """The gold passages of objective ``k`` (0-based), in gold order."""
        return [self.corpus.get(pid) for pid in self.objectives[k].gold_ids]


def make_tasks(
    source: Any,
    n_objectives: int,
    n_tasks: int,
    seed: int = 0,
    *,
    data_dir: str | Path | None = None,
    conversation: str | None = None,
    pool: int = 0,
    split: str = "all",
) -> list[Task]:
    """Build ``n_tasks`` tasks of ``n_objectives`` distinct questions each, reproducibly from ``seed``.

    Args:
        source: "hotpotqa" or "locomo", or an already loaded ``HotpotQA`` / ``LoCoMo`` object.
        n_objectives: questions per task, 1 to 16.
        n_tasks: how many tasks.
        seed: sampling seed; the same arguments always give the same tasks.
        data_dir: folder (or, for HotpotQA, a file) to load the data from; None searches the usual places.
        conversation: LoCoMo only: draw every task from this conversation (e.g. "conv-26").
        pool: draw only from the first ``pool`` eligible questions (of each conversation for LoCoMo); 0 = all.
        split: the question pool: "train" or "test" (HotpotQA halves, LoCoMo paper split),
            "validation" (LoCoMo only) or "all".

    Raises:
        ConfigError: bad counts, an unknown source, or too few eligible questions for N.
    """
    if not isinstance(n_objectives, int) or not 1 <= n_objectives <= MAX_OBJECTIVES:
        raise ConfigError(f"n_objectives must be an int from 1 to {MAX_OBJECTIVES}, got {n_objectives!r}")
    if not isinstance(n_tasks, int) or n_tasks < 1 or pool < 0:
        raise ConfigError(f"n_tasks must be >= 1 and pool >= 0, got n_tasks={n_tasks!r}, pool={pool!r}")
    if split not in TASK_SPLITS:
        raise ConfigError(f"unknown task split {split!r}; choose one of {TASK_SPLITS}")
    name, data = _load(source, data_dir)
    if name == "hotpotqa":
        if conversation:
            raise ConfigError("conversation= applies to LoCoMo tasks only")
        groups = [(data.corpus, hotpotqa_pool(data, split))]
    else:
        from memr1.data.splits import split_conversations

        held = {c.sample_id for c in split_conversations(data, split)}
        convs = [c for c in data.conversations if conversation in (None, c.sample_id) and c.sample_id in held]
        if not convs:
            raise ConfigError(
                f"no LoCoMo conversation {conversation!r} in split {split!r}; that split holds {sorted(held)}"
            )
        groups = [
            (locomo_corpus(c), _distinct([locomo_objective(q) for q in c.qa if q.category != 5 and q.evidence]))
            for c in convs
        ]
    groups = [(corpus, objs[:pool] if pool else objs) for corpus, objs in groups]
    groups = [g for g in groups if len(g[1]) >= n_objectives]
    if not groups:
        raise ConfigError(
            f"no {name} corpus has {n_objectives} eligible questions"
            + (f" among the first {pool}" if pool else "")
            + "; lower n_objectives or raise pool"
        )
    tasks = []
    for i in range(n_tasks):
        tag = "" if split == "all" else f"|{split}"  # "all" keeps the tasks made before splits existed
        rng = random.Random(f"memr1-tasks|{name}|{n_objectives}|{seed}|{pool}|{conversation}|{i}{tag}")
        corpus, objs = groups[rng.randrange(len(groups))]
        chosen = rng.sample(range(len(objs)), n_objectives)
        task_id = f"{name}{tag.replace('|', '-')}-n{n_objectives}-s{seed}-{i:04d}"
        tasks.append(Task(task_id, name, tuple(objs[j] for j in chosen), corpus))
    return tasks


def hotpotqa_pool(data: Any, split: str) -> list[Objective]:
    """The distinct HotpotQA questions of a split: file order, first half train, second half test."""
    objs = _distinct([_hotpot_objective(q) for q in data.questions])
    half = len(objs) // 2
    if split == "validation":
        raise ConfigError("HotpotQA has a train and a test half only; use split train or test")
    return {"all": objs, "train": objs[:half], "test": objs[half:]}[split]


def locomo_corpus(conv: Any) -> Corpus:
    """One passage per dialogue turn of a LoCoMo conversation (built once per conversation object)."""
    key = (id(conv), conv.sample_id)
    if key not in _CORPORA:
        passages = []
        for session in conv.sessions:
            for t in session.turns:
                img = f" [shares {t.image_caption}]" if t.image_caption else ""
                passages.append(Passage(t.dia_id, f"{t.speaker}, {session.date_time}", f"{t.text}{img}"))
        _CORPORA[key] = (conv, Corpus(f"locomo:{conv.sample_id}", tuple(passages)))
    return _CORPORA[key][1]


_CORPORA: dict[tuple[int, str], tuple[Any, Corpus]] = {}  # holds conv so its id() is never reused


def _load(source: Any, data_dir: str | Path | None) -> tuple[str, Any]:
    from memr1.data.hotpotqa import HotpotQA
    from memr1.data.locomo import LoCoMo

    if isinstance(source, HotpotQA):
        return "hotpotqa", source
    if isinstance(source, LoCoMo):
        return "locomo", source
    if source not in SOURCES:
        raise ConfigError(f"unknown task source {source!r}; choose one of {SOURCES} or pass a loaded dataset")
    return source, _load_cached(source, str(data_dir) if data_dir else "")


@functools.lru_cache(maxsize=4)
def _load_cached(source: str, data_dir: str) -> Any:
    """Datasets are read once per process (one corpus object, so retrievers are built once)."""
    if source == "hotpotqa":
        from memr1.data.hotpotqa import load_hotpotqa

        return load_hotpotqa(data_dir or None)
    from memr1.data.locomo import load_locomo

    return load_locomo(data_dir or None)


def _hotpot_objective(q: Any) -> Objective:
    return Objective(q.qid, q.question, (q.answer,), q.gold_ids, q.type)


def locomo_objective(q: Any) -> Objective:
    """A LoCoMo question as an objective (its evidence turns are its gold passages)."""
    return Objective(q.qid, q.question, (q.answer,), q.evidence, str(q.category))


def _distinct(objs: list[Objective]) -> list[Objective]:
    """Objectives with a non-empty answer and gold passage, first of each (normalized) question text."""
    seen, out = set(), []
    for o in objs:
        key = " ".join(o.question.lower().split())
        if o.answers[0].strip() and o.gold_ids and key not in seen:
            seen.add(key)
            out.append(o)
    return out

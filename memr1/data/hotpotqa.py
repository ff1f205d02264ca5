"""HotpotQA (Yang et al., EMNLP 2018) questions and their paragraph corpus, as typed objects.

Two layouts are read, chosen per record:

- the Hugging Face ``hotpot_qa`` (distractor) columns of the 100-question sample shipped in the
  shared data folder: ``supporting_facts = {"title": [...], "sent_id": [...]}``,
  ``context = {"title": [...], "sentences": [[...], ...]}``, no ``_id``;
- the official JSON files (e.g. ``hotpot_dev_distractor_v1.json``): ``_id``, ``context`` as
  ``[title, sentences]`` pairs and ``supporting_facts`` as ``[title, sent_id]`` pairs. Pass such a
  file's path to ``load_hotpotqa``.

The corpus holds every distinct paragraph of every question (title + joined sentences); a paragraph
id is its title (``"title#2"`` when two different paragraphs share a title). MEM1 (Zhou et al., arXiv
2506.15841) builds its multi-objective tasks from HotpotQA and NQ over wiki-18; this reduced corpus
is the workbench's stand-in (see ``memr1.memory.passages``).

>>> hp = load_hotpotqa()                      # doctest: +SKIP
>>> hp.questions[0].gold_ids                  # doctest: +SKIP
('Scott Derrickson', 'Ed Wood')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memr1.data.corpus import Corpus, Passage
from memr1.data.fetch import RemoteFile, resolve
from memr1.errors import DataFormatError, DataNotFoundError

HOTPOTQA_SAMPLE = RemoteFile(
    rel_path="hotpotqa/hotpot_dev_distractor_sample100.json",
    url="",  # no public copy of this sample: supply it through $MEMR1_DATA_DIR or a path
    sha256="32ed3ffab548f1d57ba65365bd581d17b428980fa7be881ab0c45f79d9fe6827",
    licence="(HotpotQA, CC BY-SA 4.0)",
)


@dataclass(frozen=True)
class HotpotQuestion:
    qid: str
    """``_id`` of the official files; ``hotpotqa:<index>`` for the sample (it has no ids)."""
    question: str
    answer: str
    type: str
    """"bridge" or "comparison" ("" when absent)."""
    level: str
    """"easy", "medium" or "hard" ("" when absent)."""
    supporting_facts: tuple[tuple[str, int], ...]
    """(title, sentence index) pairs."""
    paragraph_ids: tuple[str, ...]
    """Corpus ids of this question's context paragraphs (10 in the distractor setting)."""
    gold_ids: tuple[str, ...]
    """Corpus ids of the supporting paragraphs, in order of first mention (2 in HotpotQA)."""


@dataclass
class HotpotQA:
    questions: list[HotpotQuestion]
    corpus: Corpus
    path: Path


def load_hotpotqa(path: str | Path | None = None) -> HotpotQA:
    """Load the sample (``$MEMR1_DATA_DIR/hotpotqa/...`` or the cache) or an explicit file or folder.

    Raises:
        DataNotFoundError: the sample is not in any searched place (it is never downloaded).
        DataFormatError: invalid JSON, a missing key or a value of the wrong type; names file and record.
    """
    try:
        file = resolve(HOTPOTQA_SAMPLE, path, allow_download=False)
    except DataNotFoundError as exc:
        raise DataNotFoundError(
            f"{exc} The sample ships in the project's shared data folder "
            "(set MEMR1_DATA_DIR to it); a full official HotpotQA JSON file can be "
            "passed as an explicit path."
        ) from None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            file, f"line {exc.lineno} column {exc.colno}", f"invalid or truncated JSON ({exc.msg})"
        ) from None
    if not isinstance(raw, list):
        raise DataFormatError(file, "top level", f"expected a list of questions, got {type(raw).__name__}")
    passages: dict[tuple[str, str], Passage] = {}
    ids_by_title: dict[str, int] = {}
    questions = []
    for i, rec in enumerate(raw):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise DataFormatError(file, where, f"expected an object, got {type(rec).__name__}")
        for key in ("question", "answer", "context", "supporting_facts"):
            if key not in rec:
                raise DataFormatError(file, where, f"missing key {key!r}")
        paragraphs = _pairs(file, f"{where}.context", rec["context"], "sentences")
        facts = _pairs(file, f"{where}.supporting_facts", rec["supporting_facts"], "sent_id")
        pids: list[str] = []
        by_title: dict[str, str] = {}
        for title, sentences in paragraphs:
            if not (
                isinstance(title, str) and isinstance(sentences, list) and all(isinstance(s, str) for s in sentences)
            ):
                raise DataFormatError(file, f"{where}.context", "expected a title and a list of sentence strings")
            text = "".join(sentences).strip()
            if (title, text) not in passages:
                n = ids_by_title[title] = ids_by_title.get(title, 0) + 1
                passages[(title, text)] = Passage(title if n == 1 else f"{title}#{n}", title, text)
            pids.append(passages[(title, text)].id)
            by_title.setdefault(title, passages[(title, text)].id)
        if not all(isinstance(t, str) and isinstance(s, int) for t, s in facts):
            raise DataFormatError(file, f"{where}.supporting_facts", "expected (title, sentence index) pairs")
        gold = tuple(dict.fromkeys(by_title[t] for t, _ in facts if t in by_title))
        for key in ("question", "answer"):
            if not isinstance(rec[key], (str, int)):
                raise DataFormatError(file, f"{where}.{key}", f"unexpected type {type(rec[key]).__name__}")
        questions.append(
            HotpotQuestion(
                str(rec.get("_id") or f"hotpotqa:{i}"),
                str(rec["question"]),
                str(rec["answer"]),
                str(rec.get("type", "")),
                str(rec.get("level", "")),
                tuple((t, s) for t, s in facts),
                tuple(pids),
                gold,
            )
        )
    return HotpotQA(questions, Corpus(f"hotpotqa:{file.name}", tuple(passages.values())), file)


def _pairs(file: Path, where: str, value: Any, second: str) -> list[tuple[Any, Any]]:
    """Both layouts as (first, second) pairs: ``{"title": [...], second: [...]}`` or ``[[a, b], ...]``."""
    if isinstance(value, dict):
        if "title" not in value or second not in value:
            raise DataFormatError(file, where, f"expected keys 'title' and {second!r}")
        a, b = value["title"], value[second]
        if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)):
            raise DataFormatError(file, where, f"'title' and {second!r} must be lists of equal length")
        return list(zip(a, b))
    if isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        return [(p[0], p[1]) for p in value]
    raise DataFormatError(file, where, f"expected [title, {second}] pairs or the column layout")

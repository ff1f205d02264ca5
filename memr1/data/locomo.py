"""LoCoMo (Maharana et al., ACL 2024) as typed Python objects.

The file ``locomo10.json`` holds 10 long two-person conversations. Each has sessions (a date-time
string and a list of turns ``{speaker, dia_id, text, blip_caption?}``), QA pairs
``{question, answer, evidence, category}`` (the answer is sometimes an int; category 5 has
``adversarial_answer`` instead), per-session ``observation`` facts with evidence ids, and session
summaries. Evidence ids are dialogue ids such as ``D5:3`` (session 5, turn 3); a few in the file are
malformed (``D:11:26``, ``D30:05``, several ids in one string) or point at turns that do not exist.
Those are repaired where unambiguous and counted in ``LoCoMo.evidence_report``, never a crash.

>>> data = load_locomo()                      # doctest: +SKIP
>>> conv = data.conversation("conv-26")       # doctest: +SKIP
>>> conv.turn("D1:3").text                    # doctest: +SKIP
'I went to a LGBTQ support group yesterday and it was so powerful.'
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memr1.data.fetch import RemoteFile, resolve
from memr1.errors import DataFormatError, UnknownIdError

LOCOMO = RemoteFile(
    rel_path="locomo/locomo10.json",
    url="https://raw.githubusercontent.com/snap-research/locomo/main/data/locomo10.json",
    sha256="79fa87e90f04081343b8c8debecb80a9a6842b76a7aa537dc9fdf651ea698ff4",
    licence="(LoCoMo, CC BY-NC 4.0)",
)


@dataclass(frozen=True)
class Turn:
    """One utterance."""

    dia_id: str
    speaker: str
    text: str
    session: int
    position: int
    """0-based index of the turn in the whole conversation (the memory bank's turn clock)."""
    image_caption: str | None = None
    """BLIP caption of a shared image, when the turn shares one."""

    def render(self) -> str:
        """``"Speaker: text"``, with the shared image described in brackets."""
        img = f" [shares {self.image_caption}]" if self.image_caption else ""
        return f"{self.speaker}: {self.text}{img}"


@dataclass(frozen=True)
class Session:
    index: int
    date_time: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class QA:
    qid: str
    """``<sample_id>:q<index in the file>``; stable across runs."""
    sample_id: str
    question: str
    answer: str
    """Gold answer as text (ints in the file become strings; "" when absent, as for category 5)."""
    category: int
    evidence: tuple[str, ...]
    """Dialogue ids that resolve to turns of the conversation (repaired where needed)."""
    adversarial_answer: str | None = None


@dataclass(frozen=True)
class Observation:
    """A per-session fact about one speaker, annotated by the LoCoMo authors."""

    session: int
    speaker: str
    text: str
    evidence: tuple[str, ...]


@dataclass
class Conversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: list[Session]
    qa: list[QA]
    observations: list[Observation]
    session_summaries: dict[int, str] = field(default_factory=dict)
    _by_dia: dict[str, Turn] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_dia = {t.dia_id: t for s in self.sessions for t in s.turns}

    @property
    def speakers(self) -> tuple[str, str]:
        return (self.speaker_a, self.speaker_b)

    def turns(self) -> Iterator[Turn]:
        for s in self.sessions:
            yield from s.turns

    def num_turns(self) -> int:
        return len(self._by_dia)

    def first_turns(self, n: int) -> Conversation:
        """The conversation cut after its first ``n`` turns (sessions left empty dropped); 0 keeps all."""
        if n <= 0:
            return self
        sessions = [Session(s.index, s.date_time, tuple(t for t in s.turns if t.position < n)) for s in self.sessions]
        return dataclasses.replace(self, sessions=[s for s in sessions if s.turns], _by_dia={})

    def turn(self, dia_id: str) -> Turn:
        try:
            return self._by_dia[dia_id]
        except KeyError:
            raise UnknownIdError(
                f"{self.sample_id} has no turn {dia_id!r} (turns run D1:1 .. {self.sessions[-1].turns[-1].dia_id})"
            ) from None

    def questions_up_to(self, turn: int, include_adversarial: bool = False) -> list[QA]:
        """Questions whose evidence turns all lie at or before position ``turn`` (none without evidence)."""
        return [
            q
            for q in self.qa
            if q.evidence
            and (include_adversarial or q.category != 5)
            and max(self._by_dia[e].position for e in q.evidence) <= turn
        ]

    def session_time(self, session: int) -> str:
        for s in self.sessions:
            if s.index == session:
                return s.date_time
        raise UnknownIdError(f"{self.sample_id} has no session {session}")


@dataclass(frozen=True)
class EvidenceProblem:
    sample_id: str
    where: str
    raw: str
    problem: str
    """'repaired', 'dangling' (well-formed, no such turn) or 'malformed' (unreadable)."""


@dataclass
class LoCoMo:
    conversations: list[Conversation]
    path: Path
    evidence_problems: list[EvidenceProblem]

    def conversation(self, sample_id: str) -> Conversation:
        for c in self.conversations:
            if c.sample_id == sample_id:
                return c
        known = [c.sample_id for c in self.conversations]
        raise UnknownIdError(f"no conversation {sample_id!r} in {self.path.name}; known: {known}")

    def questions(self, include_adversarial: bool = False) -> list[QA]:
        return [q for c in self.conversations for q in c.qa if include_adversarial or q.category != 5]

    def evidence_report(self) -> dict[str, int]:
        """Counts of evidence ids by problem kind (ids without a problem are not listed)."""
        return dict(Counter(p.problem for p in self.evidence_problems))


# --------------------------------------------------------------------------- parsing

_SESSION_KEY = re.compile(r"^session_(\d+)$")
_DIA_ID = re.compile(r"^D:?(\d+):(\d+)$")


def load_locomo(path: str | Path | None = None, *, allow_download: bool = True) -> LoCoMo:
    """Load ``locomo10.json`` (see ``memr1.data.fetch.resolve`` for where it is looked for).

    Raises:
        DataNotFoundError: no local copy and no download possible.
        DataFormatError: truncated JSON or a missing key; the message names the file and the key.
    """
    file = resolve(LOCOMO, path, allow_download=allow_download)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            file, f"line {exc.lineno} column {exc.colno}", f"invalid or truncated JSON ({exc.msg})"
        ) from None
    if not isinstance(raw, list):
        raise DataFormatError(file, "top level", f"expected a list of conversations, got {type(raw).__name__}")
    problems: list[EvidenceProblem] = []
    convs = [_conversation(file, i, c, problems) for i, c in enumerate(raw)]
    return LoCoMo(convs, file, problems)


def _req(file: Path, where: str, obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict):
        raise DataFormatError(file, where, f"expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise DataFormatError(file, where, f"missing key {key!r}")
    if not isinstance(obj[key], kind):
        raise DataFormatError(file, f"{where}.{key}", f"unexpected type {type(obj[key]).__name__}")
    return obj[key]


def _conversation(file: Path, i: int, c: Any, problems: list[EvidenceProblem]) -> Conversation:
    sid = _req(file, f"conversation {i}", c, "sample_id", str)
    where = f"conversation {i} ({sid})"
    body = _req(file, where, c, "conversation", dict)
    a = _req(file, f"{where}.conversation", body, "speaker_a", str)
    b = _req(file, f"{where}.conversation", body, "speaker_b", str)
    sessions, position = [], 0
    for idx in sorted(int(m.group(1)) for k in body if (m := _SESSION_KEY.match(k))):
        swhere = f"{where}.session_{idx}"
        when = _req(file, f"{where}.conversation", body, f"session_{idx}_date_time", str)
        turns = []
        for j, t in enumerate(_req(file, f"{where}.conversation", body, f"session_{idx}", list)):
            twhere = f"{swhere}[{j}]"
            caption = t.get("blip_caption") if isinstance(t, dict) else None
            turns.append(
                Turn(
                    _req(file, twhere, t, "dia_id", str),
                    _req(file, twhere, t, "speaker", str),
                    _req(file, twhere, t, "text", str),
                    idx,
                    position,
                    caption if isinstance(caption, str) and caption else None,
                )
            )
            position += 1
        sessions.append(Session(idx, when, tuple(turns)))
    known = {t.dia_id for s in sessions for t in s.turns}

    def evidence(raw: Any, ewhere: str) -> tuple[str, ...]:
        return _evidence(raw, known, sid, ewhere, problems)

    qa = []
    for j, q in enumerate(_req(file, where, c, "qa", list)):
        qwhere = f"{where}.qa[{j}]"
        cat = _req(file, qwhere, q, "category", int)
        answer = q.get("answer")
        adv = q.get("adversarial_answer")
        qa.append(
            QA(
                f"{sid}:q{j}",
                sid,
                _req(file, qwhere, q, "question", str),
                "" if answer is None else str(answer),
                cat,
                evidence(_req(file, qwhere, q, "evidence", list), qwhere),
                None if adv is None else str(adv),
            )
        )
    observations = []
    for key, per_speaker in _req(file, where, c, "observation", dict).items():
        m = re.match(r"^session_(\d+)_observation$", key)
        if not m or not isinstance(per_speaker, dict):
            raise DataFormatError(
                file, f"{where}.observation.{key}", "expected session_<n>_observation: {speaker: [...]}"
            )
        for speaker, facts in per_speaker.items():
            for k, fact in enumerate(facts):
                fwhere = f"{where}.observation.{key}.{speaker}[{k}]"
                if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)):
                    raise DataFormatError(file, fwhere, "expected [text, evidence]")
                observations.append(Observation(int(m.group(1)), speaker, fact[0], evidence(fact[1], fwhere)))
    summaries = {}
    for key, text in (c.get("session_summary") or {}).items():
        if (m := re.match(r"^session_(\d+)_summary$", key)) and isinstance(text, str):
            summaries[int(m.group(1))] = text
    return Conversation(sid, a, b, sessions, qa, observations, summaries)


def _evidence(raw: Any, known: set[str], sid: str, where: str, problems: list[EvidenceProblem]) -> tuple[str, ...]:
    """Resolve evidence ids; repair unambiguous typos, count everything else."""
    items = raw if isinstance(raw, list) else [raw]
    out: list[str] = []
    for item in items:
        parts = [p for p in re.split(r"[;,\s]+", str(item)) if p]
        if len(parts) != 1:
            problems.append(EvidenceProblem(sid, where, str(item), "repaired"))
        for part in parts:
            m = _DIA_ID.match(part)
            if not m:
                problems.append(EvidenceProblem(sid, where, part, "malformed"))
                continue
            canon = f"D{int(m.group(1))}:{int(m.group(2))}"
            if canon not in known:
                problems.append(EvidenceProblem(sid, where, part, "dangling"))
                continue
            if canon != part and len(parts) == 1:
                problems.append(EvidenceProblem(sid, where, part, "repaired"))
            if canon not in out:
                out.append(canon)
    return tuple(out)

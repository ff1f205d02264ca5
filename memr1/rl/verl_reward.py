"""Rule rewards for memr1's verl export, standard library only (`memr1 export-verl` copies this file as ``reward.py``).

verl loads a custom reward from ``reward.custom_reward_function.path`` and calls its ``compute_score``
once per response, with the keywords ``data_source, solution_str, ground_truth, extra_info`` plus the
config's ``reward_kwargs`` (verl 0.9.1 ``verl/experimental/reward_loop/reward_manager/naive.py``;
``solution_str`` is the decoded response). A float is logged by verl as ``acc``; a dict must hold
``score``. The file imports nothing outside the standard library, so verl's workers need nothing from
memr1 to run it. It scores three data sources:

- ``memr1/locomo-answer`` (Memory-R1's Answer Agent): 1.0 when the text after the last
  ``**Answer:**`` (first line; the whole output without the marker) equals the gold after
  SQuAD-style normalisation, else 0.0. ``score="f1"`` gives Mem0's set F1 instead (an ablation).
- ``memr1/mem1-<source>`` (MEM1's task reward): the number of objectives answered exactly, by
  position, from the first ``<answer>`` after the ``<IS>`` state (best over each objective's gold
  aliases), as MEM1 trains with; ``score="f1"`` sums set F1 instead. No format reward, no answer-count
  check (MEM1's training reward has neither).
- ``memr1/locomo-manager``: refused here; its reward needs a frozen Answer Agent and the teacher banks
  (``reward_manager.py``, which imports memr1).

What it repeats from memr1, kept equal by ``tests/test_verl_export.py``:
`memr1.agents.answer.extract_answer`, `memr1.eval.metrics.exact_match` and ``f1_mem0``, and the answer
reading of `memr1.agents.mem1.parse_action`.

>>> compute_score("memr1/locomo-answer", "**Answer:** The Eiffel Tower!", "eiffel tower")
1.0
>>> compute_score("memr1/mem1-hotpotqa", "<IS>x</IS><answer>Paris ; 1945</answer>", {"target": [["paris"], ["1944"]]})
1.0
"""

import re
import string

ANSWER_SOURCE = "memr1/locomo-answer"
MANAGER_SOURCE = "memr1/locomo-manager"
MEM1_PREFIX = "memr1/mem1-"
SCORES = ("em", "f1")

_PUNCT = set(string.punctuation)
_ANSWER_MARK = re.compile(r"\*\*\s*answer\s*:?\s*\*\*\s*:?", re.IGNORECASE)
_TAG = r"<\s*/?\s*(?:IS|think|query|search|answer|info|information)\s*>"
_STATE = re.compile(r"<\s*(IS|think)\s*>(.*?)<\s*/\s*\1\s*>", re.I | re.S)
_OPEN_STATE = re.compile(r"<\s*(IS|think)\s*>(.*?)(?=<\s*(?:query|search|answer)\s*>|\Z)", re.I | re.S)
_ACTION = re.compile(r"<\s*(query|search|answer)\s*>(.*?)(?:<\s*/\s*\1\s*>|\Z)", re.I | re.S)
_NUMBERING = re.compile(
    r"^\s*(?:\(\d{1,2}\)|\d{1,2}[.):](?=\s)|\d{1,2}\)|[QA]\d{1,2}\s*[:.)=-]|answer\s*\d{1,2}\s*[:.)=-])\s*", re.I
)


# --------------------------------------------------------------------------- metrics


def normalize(text):
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction, gold):
    """1.0 when both normalise to the same non-empty string, else 0.0."""
    p, g = normalize(prediction), normalize(gold)
    return float(bool(g) and p == g)


def _f1_tokens(text):
    text = str(text).lower()
    for ch in ".,!?":
        text = text.replace(ch, " ")
    return set(text.split())


def f1(prediction, gold):
    """F1 over the sets of lower-cased tokens, ``. , ! ?`` read as spaces (Mem0's)."""
    pred, ref = _f1_tokens(prediction), _f1_tokens(gold)
    common = len(pred & ref)
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _metric(score):
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    return exact_match if score == "em" else f1


# --------------------------------------------------------------------------- reading outputs


def extract_answer(output):
    """Text after the last **Answer:** marker (the whole output without one), first line only."""
    output = "" if output is None else str(output)
    parts = _ANSWER_MARK.split(output)
    answer = (parts[-1] if len(parts) > 1 else output).strip()
    return answer.splitlines()[0].strip() if answer else ""


def _clean(text):
    return " ".join(re.sub(_TAG, " ", text, flags=re.I).split())


def mem1_answers(output, n_objectives):
    """The answers of the first ``<answer>`` after the ``<IS>`` state, or None when the first action is
    a query, missing or empty. Several lines are several answers; one line is split on ``;``."""
    text = str(output or "")
    state = _STATE.search(text) or _OPEN_STATE.search(text)
    act = _ACTION.search(text)
    if act and state and state.start() <= act.start() < state.end():  # a tag quoted inside the state
        act = _ACTION.search(text, state.end())
    if act is None or act.group(1).lower() != "answer" or not _clean(act.group(2)):
        return None
    body = act.group(2)
    lines = [ln for ln in body.splitlines() if ln.strip()]
    if n_objectives == 1:
        parts = [" ".join(lines)]
    else:
        parts = lines if len(lines) > 1 else body.split(";")
    return [_clean(_NUMBERING.sub("", p)) for p in parts]


# --------------------------------------------------------------------------- verl's entry point


def mem1_score(solution_str, targets, score="em"):
    """Sum over objectives of the best EM (or F1) over that objective's aliases; 0 without an answer."""
    metric = _metric(score)
    targets = [[str(a) for a in aliases] for aliases in targets]
    answers = mem1_answers(solution_str, len(targets)) or []
    total = 0.0
    for k, aliases in enumerate(targets):
        pred = answers[k] if k < len(answers) else ""
        total += max((metric(pred, a) for a in aliases), default=0.0) if pred else 0.0
    return total


def compute_score(data_source, solution_str, ground_truth, extra_info=None, score="em", **kwargs):
    """verl's custom reward: see the module docstring for what each data source gets."""
    if data_source == ANSWER_SOURCE:
        return _metric(score)(extract_answer(solution_str), ground_truth)
    if str(data_source).startswith(MEM1_PREFIX):
        return mem1_score(solution_str, ground_truth["target"], score)
    if data_source == MANAGER_SOURCE:
        raise ValueError(
            "the memory-manager reward needs memr1's ManagerReward (a frozen Answer Agent answering from "
            "a fork of the teacher bank); point custom_reward_function.path at reward_manager.py"
        )
    raise ValueError(f"unknown data_source {data_source!r} for memr1's reward.py")

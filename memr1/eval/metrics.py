"""Answer metrics, in two families chosen by name, plus the exact match used for rewards.

``mem0`` (default; the numbers in Memory-R1's tables, after Mem0's/A-Mem's evaluation code):
    lower-case, turn ``. , ! ?`` into spaces, split on whitespace, F1 over token *sets*;
    BLEU-1 = NLTK ``sentence_bleu`` with weights (1, 0, 0, 0) and smoothing method 1 over NLTK word
    tokens of the lower-cased strings. NLTK's ``word_tokenize`` normally splits sentences first with
    the downloadable Punkt model; we call it with ``preserve_line=True`` (no sentence split, nothing
    to download), which only differs on multi-sentence strings with an inner full stop.
``locomo`` (the benchmark's own scorer, snap-research/locomo ``task_eval/evaluation.py``):
    drop commas, lower-case, strip punctuation, drop a/an/the/and, Porter-stem, multiset F1;
    category 1 splits both sides on commas and averages, over gold parts, the best match;
    category 3 keeps the gold text before the first ``;``; category 5 scores 1 only when the
    prediction says "no information available" or "not mentioned". This family has no BLEU.

>>> round(f1_mem0("Paris, France", "paris"), 3)
0.667
>>> f1_locomo("the dogs", "dog", category=4)
1.0
>>> exact_match("The Eiffel Tower!", "eiffel tower")
1.0

The answer span is cut from a model's output by ``memr1.agents.answer.extract_answer`` (the Answer
Agent's format is the agent's business).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from functools import lru_cache

from memr1.errors import ConfigError

_PUNCT = set(string.punctuation)


# --------------------------------------------------------------------------- EM (rewards)


def normalize_em(text: str) -> str:
    """Lower-case, strip punctuation and English articles, collapse whitespace (SQuAD style)."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str | int) -> float:
    """1.0 when the normalized strings are equal and non-empty, else 0.0."""
    p, g = normalize_em(prediction), normalize_em(str(gold))
    return float(bool(g) and p == g)


# --------------------------------------------------------------------------- mem0 family


def _mem0_tokens(text: str) -> list[str]:
    text = str(text).lower()
    for ch in ".,!?":
        text = text.replace(ch, " ")
    return text.split()


def f1_mem0(prediction: str, gold: str | int) -> float:
    """F1 over the *sets* of lower-cased tokens (Mem0 / A-Mem)."""
    pred, ref = set(_mem0_tokens(prediction)), set(_mem0_tokens(str(gold)))
    common = len(pred & ref)
    if not pred or not ref or not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _bleu_tools():
    from nltk.tokenize import word_tokenize
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    return word_tokenize, sentence_bleu, SmoothingFunction().method1


def bleu1_mem0(prediction: str, gold: str | int) -> float:
    """Sentence BLEU-1 with smoothing method 1 over NLTK word tokens (0 when either side is empty)."""
    word_tokenize, sentence_bleu, smooth = _bleu_tools()
    pred = word_tokenize(str(prediction).lower(), preserve_line=True)
    ref = word_tokenize(str(gold).lower(), preserve_line=True)
    if not pred or not ref:
        return 0.0
    return float(sentence_bleu([ref], pred, weights=(1, 0, 0, 0), smoothing_function=smooth))


# --------------------------------------------------------------------------- locomo family


@lru_cache(maxsize=1)
def _stem() -> Callable[[str], str]:
    from nltk.stem import PorterStemmer

    return lru_cache(maxsize=65536)(PorterStemmer().stem)


def normalize_locomo(text: str) -> str:
    """LoCoMo's normalization: no commas, lower-case, no punctuation, no a/an/the/and."""
    text = str(text).replace(",", "").lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the|and)\b", " ", text)
    return " ".join(text.split())


def _f1_stemmed(prediction: str, gold: str) -> float:
    stem = _stem()
    pred = [stem(w) for w in normalize_locomo(prediction).split()]
    ref = [stem(w) for w in normalize_locomo(gold).split()]
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1_locomo(prediction: str, gold: str | int, category: int) -> float:
    """LoCoMo's F1 with its per-category rules (see the module docstring)."""
    prediction, gold = str(prediction), str(gold)
    if category == 5:
        low = prediction.lower()
        return float("no information available" in low or "not mentioned" in low)
    if category == 3:
        gold = gold.split(";")[0].strip()
    if category == 1:
        preds = [p.strip() for p in prediction.split(",")]
        golds = [g.strip() for g in gold.split(",")]
        return sum(max(_f1_stemmed(p, g) for p in preds) for g in golds) / len(golds)
    if category in (2, 3, 4):
        return _f1_stemmed(prediction, gold)
    raise ConfigError(f"unknown LoCoMo category {category!r}; ids are 1..5")


# --------------------------------------------------------------------------- families

METRIC_FAMILIES = ("mem0", "locomo")


def score(prediction: str, gold: str | int, category: int, family: str = "mem0") -> dict[str, float]:
    """All metrics of a family for one answer, plus ``em``: ``{"f1", "bleu1"?, "em"}``.

    >>> score("7 May 2023", "7 May 2023", 2)
    {'f1': 1.0, 'bleu1': 1.0, 'em': 1.0}
    """
    if family == "mem0":
        out = {"f1": f1_mem0(prediction, gold), "bleu1": bleu1_mem0(prediction, gold)}
    elif family == "locomo":
        out = {"f1": f1_locomo(prediction, gold, category)}
    else:
        raise ConfigError(f"unknown metric family {family!r}; choose one of {METRIC_FAMILIES}")
    out["em"] = exact_match(prediction, gold)
    return out

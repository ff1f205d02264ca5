"""Metric rules with hand-computed expected values (see memr1/eval/metrics.py for the definitions)."""

from __future__ import annotations

import math

import pytest

from memr1.agents.answer import extract_answer
from memr1.errors import ConfigError
from memr1.eval.metrics import bleu1_mem0, exact_match, f1_locomo, f1_mem0, normalize_em, score
from memr1.eval.tables import category_table


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("Paris, France", "paris", 2 * 0.5 * 1 / 1.5),  # sets {paris, france} vs {paris}
        ("the cat the cat sat", "the cat", 0.8),  # sets, not multisets: P=2/3, R=1
        ("Yes!", "yes", 1.0),  # . , ! ? become spaces
        ("U.S.", "us", 0.0),  # "u s" vs "us"
        ("salt and pepper", "salt pepper", 0.8),  # no article/"and" removal in this family
        ("", "anything", 0.0),  # empty prediction
        ("2022", 2022, 1.0),  # integer gold
        ("Melanie's kids", "melanie's kids", 1.0),  # apostrophes stay inside tokens
    ],
)
def test_f1_mem0(pred, gold, expected):
    assert f1_mem0(pred, gold) == pytest.approx(expected)


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("7 May 2023", "7 May 2023", 1.0),
        ("may", "7 may 2023", math.exp(1 - 3 / 1)),  # p1 = 1, brevity penalty exp(1 - r/c)
        ("in may 2023 i think", "may 2023", 2 / 5),  # clipped unigram precision, c > r so BP = 1
        ("june", "may", 0.0),  # NLTK returns 0 before smoothing when no unigram matches
        ("Yes.", "yes", 0.5),  # NLTK tokens: ["yes", "."] vs ["yes"]
        ("", "may", 0.0),  # empty prediction
        ("2022", 2022, 1.0),  # integer gold
    ],
)
def test_bleu1_mem0(pred, gold, expected):
    assert bleu1_mem0(pred, gold) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "pred, gold, category, expected",
    [
        ("the dogs", "dog", 4, 1.0),  # articles dropped, Porter stem dogs -> dog
        ("cat cat sat", "cat", 4, 2 * (1 / 3) * 1 / (1 / 3 + 1)),  # multiset: P = 1/3, R = 1
        ("salt and pepper", "salt pepper", 2, 1.0),  # "and" is dropped too
        ("7 May, 2023", "7 May 2023", 2, 1.0),  # commas dropped
        ("painting, swimming", "swimming, hiking, painting", 1, 2 / 3),  # mean over gold parts of best match
        ("psychology", "Psychology; counseling", 3, 1.0),  # category 3 keeps gold before ";"
        ("counseling", "Psychology; counseling", 3, 0.0),
        ("No information available.", "whatever", 5, 1.0),  # category 5 rule
        ("It is not mentioned", "whatever", 5, 1.0),
        ("Paris", "whatever", 5, 0.0),
        ("", "dog", 4, 0.0),  # empty prediction
        ("", "a, b", 1, 0.0),
        ("2022", 2022, 2, 1.0),  # integer gold
    ],
)
def test_f1_locomo(pred, gold, category, expected):
    assert f1_locomo(pred, gold, category) == pytest.approx(expected)


def test_f1_locomo_unknown_category():
    with pytest.raises(ConfigError, match="category 7"):
        f1_locomo("a", "b", 7)


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("The Eiffel Tower!", "eiffel tower", 1.0),
        ("a dog", "dog", 1.0),
        ("dogs", "dog", 0.0),
        ("", "", 0.0),  # empty gold never matches
        ("2022", 2022, 1.0),
        ("  7   May 2023 ", "7 may 2023", 1.0),
    ],
)
def test_exact_match(pred, gold, expected):
    assert exact_match(pred, gold) == expected


def test_normalize_em():
    assert normalize_em("An Apple, the Pie!") == "apple pie"


@pytest.mark.parametrize(
    "output, expected",
    [
        ("**Memories selected as relevant:**\n- 8 May 2023: x\n**Answer:** 7 May 2023", "7 May 2023"),
        ("**answer**: yes", "yes"),
        ("**Answer:** first\n**Answer:** second\nmore text", "second"),
        ("  Paris \n because ...", "Paris"),  # no marker: first line of the output
        ("**Answer:**", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_extract_answer(output, expected):
    assert extract_answer(output) == expected


def test_score_families():
    assert score("the dogs", "dog", 4, "locomo") == {"f1": 1.0, "em": 0.0}
    s = score("the dogs", "dog", 4)
    assert s["f1"] == 0.0 and s["em"] == 0.0 and set(s) == {"f1", "bleu1", "em"}
    with pytest.raises(ConfigError, match="unknown metric family 'rouge'"):
        score("a", "b", 1, "rouge")


def test_category_table_weighted_overall():
    recs = [{"category": 1, "f1": 1.0}] * 3 + [{"category": 4, "f1": 0.0}] * 1 + [{"category": 2, "f1": 0.5}] * 2
    table = category_table(recs, ["f1"])
    assert list(table.category) == [1, 2, 4, "overall"]
    assert list(table.locomo_name[:3]) == ["multi-hop", "temporal", "single-hop"]
    assert list(table.memory_r1_name[:3]) == ["Single Hop", "Temporal", "Open Domain"]
    assert list(table["count"]) == [3, 2, 1, 6]
    overall = table.iloc[-1]["f1"]
    assert overall == pytest.approx(100 * (3 * 1.0 + 2 * 0.5 + 0.0) / 6)  # count-weighted, in percent
    with pytest.raises(ConfigError, match="lack column"):
        category_table(recs, ["bleu1"])

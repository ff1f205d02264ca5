"""Widgets: the bank timeline against a hand-made bank and a real replayed LoCoMo conversation."""

from __future__ import annotations

import json
import re

import pytest

from memr1.data.locomo import Conversation, Session, Turn
from memr1.memory.bank import MemoryBank
from memr1.memory.embed import make_embedder
from memr1.memory.entry import Operation, OpKind, TurnContext
from memr1.memory.replay import replay_observations
from widgets.bank_timeline import BankTimeline, entry_versions
from widgets.display import show, static_mode


def _conv(n: int) -> Conversation:
    turns = tuple(Turn(f"D1:{i + 1}", "Ann", f"utterance {i}", 1, i) for i in range(n))
    return Conversation("conv-t", "Ann", "Bob", [Session(1, "1 Jan 2024", turns)], [], [])


@pytest.fixture()
def handmade(tmp_path):
    """Ann's bank: ADD a, b at turn 0; UPDATE a at 1; DELETE b, ADD c at 3; nothing at 2."""
    bank = MemoryBank.open(tmp_path, "Ann", make_embedder("hash"))
    bank.apply(
        [Operation(OpKind.ADD, text="likes tea"), Operation(OpKind.ADD, text="has a cat")],
        TurnContext(0, "D1:1", "1 Jan 2024"),
    )
    bank.commit(0)
    a, b = (e.id for e in bank.entries())
    bank.apply([Operation(OpKind.UPDATE, a, "likes green tea")], TurnContext(1, "D1:2", "1 Jan 2024"))
    bank.commit(1)
    bank.apply(
        [Operation(OpKind.DELETE, b), Operation(OpKind.ADD, text="has a dog")], TurnContext(3, "D1:4", "1 Jan 2024")
    )
    bank.commit(3)
    return bank, a, b


def test_versions_reproduce_every_checkout(handmade):
    bank, a, b = handmade
    tl = BankTimeline(_conv(4), {"Ann": bank})
    assert tl.turns == [0, 1, 3]
    for t in (0, 1, 2, 3):
        assert [v.text for v in tl.bank_at("Ann", t)] == [e.text for e in bank.checkout(t).entries()]
    versions = entry_versions("Ann", bank)
    assert [(v.id, v.start, v.end, v.end_kind) for v in versions if v.id == a] == [
        (a, 0, 1, "UPDATE"),
        (a, 1, None, None),
    ]


def test_diff_panel_shows_update_and_delete(handmade):
    bank, a, b = handmade
    tl = BankTimeline(_conv(4), {"Ann": bank})
    assert tl.changes_at("Ann", 1)[0][0] == "UPDATE"
    html1 = tl.diff_html("Ann", 1)
    assert "<span class='old'>likes tea</span> → likes green tea" in html1
    html3 = tl.diff_html("Ann", 3)
    assert f"DELETE <b>{b}</b>: <span class='del'>has a cat</span>" in html3 and "ADD" in html3
    assert "no change at this turn" in tl.diff_html("Ann", 2)


def test_static_html_is_self_contained_and_opens_at_focus(handmade):
    bank, a, _ = handmade
    html = BankTimeline(_conv(4), {"Ann": bank}, focus_turn=2).static_html()
    assert "http" not in html  # nothing fetched from the network
    data = json.loads(re.search(r"<script type='application/json' id='d\w+'>(.*?)</script>", html, re.S).group(1))
    assert data["turns"] == [0, 1, 3] and len(data["versions"]) == 4
    assert "value='1'" in html and "<span class='old'>likes tea</span>" in html  # focus 2 → last commit ≤ 2


def test_live_widget_follows_the_slider(handmade):
    bank, _, _ = handmade
    box = BankTimeline(_conv(4), {"Ann": bank}).widget()
    (_play, slider, label), _speaker, body = box.children[0].children, box.children[1], box.children[2]
    assert "has a dog" in body.value and label.value.startswith("turn 3")
    slider.value = 0
    assert "has a cat" in body.value and "has a dog" not in body.value and label.value.startswith("turn 0")


def test_real_locomo_turn_diff_in_static_html(locomo, tmp_path):
    conv = locomo.conversation("conv-26")
    rep = replay_observations(conv, make_embedder("hash"), store_dir=tmp_path, until_turn=40)
    turn = conv.turn("D1:3").position
    html = BankTimeline(conv, rep.banks, focus_turn=turn).static_html()
    assert "D1:3" in html and "I went to a LGBTQ support group yesterday" in html
    assert re.search(r"ADD <b>caroline-0</b>: Caroline attended an LGBTQ support group", html)


def test_show_rejects_unknown_objects(monkeypatch):
    monkeypatch.setenv("MEMR1_STATIC_WIDGETS", "1")
    assert static_mode()
    with pytest.raises(TypeError, match="plotly figure or a memr1 widget"):
        show(object())


def _records():
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "qid": "conv-26:q0",
                "category": 2,
                "question": "When did Caroline go to the support group?",
                "gold": "7 May 2023",
                "prediction": "7 May 2023",
                "f1": 1.0,
                "bleu1": 1.0,
                "em": 1.0,
                "retrieved": [
                    "Caroline · 8 May 2023: Caroline went to a support group (0.71)",
                    "Melanie · 8 May 2023: Melanie paints (0.12)",
                ],
                "selected": ["8 May 2023: Caroline went to a support group"],
                "raw_output": "**Answer:** 7 May 2023",
                "judge_label": "CORRECT",
                "judge_reason": "same date.",
            },
            {
                "qid": "conv-26:q1",
                "category": 1,
                "question": "What does Melanie paint?",
                "gold": "sunsets",
                "prediction": "",
                "f1": 0.0,
                "bleu1": 0.0,
                "em": 0.0,
                "retrieved": [],
                "selected": [],
                "raw_output": "",
                "judge_label": "WRONG",
                "judge_reason": "no answer.",
            },
        ]
    )


def test_qa_inspector_static_and_live():
    from widgets.qa_inspector import QAInspector

    html = QAInspector(_records()).static_html()
    assert html.index("conv-26:q1") < html.index("conv-26:q0")  # worst F1 first
    assert "<li class='sel'>Caroline · 8 May 2023: Caroline went to a support group (0.71)</li>" in html
    assert "<li class=''>Melanie · 8 May 2023: Melanie paints (0.12)</li>" in html
    assert "<b class='ok'>CORRECT</b> — same date." in html and "category 2 temporal (Temporal)" in html
    box = QAInspector(_records()).widget()
    pick, body = box.children
    assert "support group" in body.value
    pick.value = 1
    assert "What does Melanie paint?" in body.value and "retrieved (0" in body.value
    with pytest.raises(ValueError, match="needs record columns"):
        QAInspector(_records().drop(columns=["gold"]))


def test_the_bank_table_scrolls_inside_a_box(handmade):
    """A long bank must not push the slider out of view: the table sits in a fixed-height scrolling box."""
    bank, _, _ = handmade
    tl = BankTimeline(_conv(4), {"Ann": bank})
    assert "<div class='bankbox'><table>" in tl.table_html("Ann", 3)
    page = tl.static_html()
    assert ".m1-tl .bankbox{max-height:420px;overflow-y:auto" in page and 'class="bankbox"' in page  # live JS too


def test_training_curves_give_every_measure_its_own_axes():
    from widgets.training import PANELS, TrainingCurves

    history = [
        {"step": 1, "reward": 0.1, "loss": 0.02, "kl": 0.0, "completions/mean_length": 25.0},
        {"step": 2, "reward": 0.2, "loss": -0.01, "kl": 0.0, "completions/mean_length": 30.0,
         "eval/f1": 0.21, "eval/em": 0.0, "eval/format": 0.5},
    ]  # fmt: skip
    fig = TrainingCurves(history).figure()
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {k for keys, _ in PANELS for k in keys}
    assert list(by_name["reward"].y) == [0.1, 0.2] and list(by_name["eval/f1"].x) == [2]
    # reward, loss, length and format each sit on their own y axis
    axes = {k: by_name[k].yaxis for k in ("reward", "loss", "completions/mean_length", "eval/format")}
    assert len(set(axes.values())) == 4
    assert by_name["eval/f1"].yaxis == by_name["eval/em"].yaxis  # one probe panel, two lines


def test_plotly_js_is_shared_from_the_run_folder_or_embedded_once(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    from widgets import display

    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    monkeypatch.setattr(display, "_plotly_js_sent", False)
    monkeypatch.delenv("MEMR1_PLOTLYJS_DIR", raising=False)
    first, second = display.figure_fragment(fig), display.figure_fragment(fig)
    assert len(first) > 1_000_000 > 100_000 > len(second)  # embedded with the kernel's first figure only
    monkeypatch.setenv("MEMR1_PLOTLYJS_DIR", str(tmp_path / "run"))
    shared = display.figure_fragment(fig)
    assert 'src="plotly.min.js"' in shared and len(shared) < 100_000
    js = tmp_path / "run" / "plotly.min.js"
    assert js.stat().st_size > 1_000_000
    stamp = js.stat().st_mtime_ns
    display.figure_fragment(fig)
    assert js.stat().st_mtime_ns == stamp  # written once, not per figure

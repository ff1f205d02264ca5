"""LoCoMo loader: the paper split against the real file, bad files, evidence repair, download."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections import Counter
from functools import partial

import pytest

from memr1.data.fetch import RemoteFile, resolve
from memr1.data.locomo import load_locomo
from memr1.data.splits import category_name, split_questions
from memr1.errors import ConfigError, DataFormatError, DataIntegrityError, DataNotFoundError, UnknownIdError


def test_paper_split_counts(locomo):
    train, val, test = (split_questions(locomo, s) for s in ("train", "validation", "test"))
    assert {q.sample_id for q in train} == {"conv-26"} and len(train) == 152
    assert {q.sample_id for q in val} == {"conv-30"} and len(val) == 81
    assert len(test) == 1307 and len({q.sample_id for q in test}) == 8
    assert Counter(q.category for q in test) == {1: 239, 2: 258, 3: 83, 4: 727}
    assert Counter(q.category for q in train) == {1: 32, 2: 37, 3: 13, 4: 70}
    assert len(locomo.questions()) == 1540 and len(locomo.questions(include_adversarial=True)) == 1986


def test_adversarial_loadable_but_excluded(locomo):
    adv = [q for q in locomo.questions(include_adversarial=True) if q.category == 5]
    assert len(adv) == 446 and all(q.adversarial_answer is not None or q.answer for q in adv)
    assert all(q.category != 5 for q in split_questions(locomo, "test"))
    assert len(split_questions(locomo, "test", include_adversarial=True)) == 1307 + sum(
        q.sample_id not in ("conv-26", "conv-30") for q in adv
    )


def test_category_names_both_schemes():
    assert [category_name(i) for i in (1, 2, 3, 4, 5)] == [
        "multi-hop",
        "temporal",
        "open-domain",
        "single-hop",
        "adversarial",
    ]
    assert [category_name(i, "memory-r1") for i in (1, 2, 3, 4)] == [
        "Single Hop",
        "Temporal",
        "Multi-Hop",
        "Open Domain",
    ]
    with pytest.raises(ConfigError, match="scheme"):
        category_name(1, "mem0")
    with pytest.raises(ConfigError, match="category 9"):
        category_name(9)


def test_integer_answers_become_text(locomo):
    q = locomo.conversation("conv-26").qa[1]
    assert q.question == "When did Melanie paint a sunrise?" and q.answer == "2022"


def test_turns_sessions_and_evidence_resolve(locomo):
    conv = locomo.conversation("conv-26")
    assert conv.num_turns() == 419 and len(conv.sessions) == 19  # 35 date-times, 19 sessions with turns
    assert conv.session_time(1) == "1:56 pm on 8 May, 2023"
    turn = conv.turn("D1:3")
    assert turn.speaker == "Caroline" and turn.position == 2 and turn.session == 1
    for q in locomo.questions():
        c = locomo.conversation(q.sample_id)
        assert all(c.turn(e).dia_id == e for e in q.evidence)
    assert sum(t.image_caption is not None for t in conv.turns()) > 0
    with pytest.raises(UnknownIdError, match="no turn 'D99:1'"):
        conv.turn("D99:1")
    with pytest.raises(UnknownIdError, match="conv-99"):
        locomo.conversation("conv-99")


def test_evidence_problems_counted_not_crashing(locomo):
    report = locomo.evidence_report()
    assert report == {"repaired": 11, "dangling": 2, "malformed": 1}
    raws = {(p.raw, p.problem) for p in locomo.evidence_problems}
    assert ("D:11:26", "repaired") in raws and ("D30:05", "repaired") in raws and ("D", "malformed") in raws
    conv49 = locomo.conversation("conv-49")
    q = next(q for q in conv49.qa if "D9:1" in q.evidence and "D4:4" in q.evidence)
    assert {"D9:1", "D4:4", "D4:6"} <= set(q.evidence)  # split from "D9:1 D4:4 D4:6"
    assert "D30:5" in {e for q in locomo.conversation("conv-50").qa for e in q.evidence}


def _write(tmp_path, obj_or_text):
    path = tmp_path / "locomo" / "locomo10.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text))
    return path


def _tiny_conv(**overrides):
    conv = {
        "sample_id": "conv-x",
        "conversation": {
            "speaker_a": "A",
            "speaker_b": "B",
            "session_1_date_time": "1 Jan 2023",
            "session_1": [
                {"speaker": "A", "dia_id": "D1:1", "text": "hi"},
                {"speaker": "B", "dia_id": "D1:2", "text": "I got a dog", "blip_caption": "a dog"},
            ],
        },
        "qa": [
            {
                "question": "What did B get?",
                "answer": "a dog",
                "evidence": ["D1:2", "D1:02", "D7:7", "X"],
                "category": 4,
            }
        ],
        "observation": {"session_1_observation": {"B": [["B got a dog.", "D1:2"]]}},
        "session_summary": {"session_1_summary": "They talk."},
    }
    conv.update(overrides)
    return conv


def test_small_file_roundtrip_and_evidence_kinds(tmp_path):
    data = load_locomo(_write(tmp_path, [_tiny_conv()]), allow_download=False)
    q = data.questions()[0]
    assert q.evidence == ("D1:2",) and q.qid == "conv-x:q0"
    assert data.evidence_report() == {"repaired": 1, "dangling": 1, "malformed": 1}
    assert data.conversations[0].turn("D1:2").render() == "B: I got a dog [shares a dog]"
    assert data.conversations[0].observations[0].evidence == ("D1:2",)


def test_truncated_json_names_file_and_position(tmp_path):
    path = _write(tmp_path, json.dumps([_tiny_conv()])[:200])
    with pytest.raises(DataFormatError, match=r"locomo10\.json: line 1 column \d+: invalid or truncated JSON"):
        load_locomo(path, allow_download=False)


@pytest.mark.parametrize("drop, where", [("qa", "missing key 'qa'"), ("sample_id", "missing key 'sample_id'")])
def test_missing_key_names_the_key(tmp_path, drop, where):
    conv = _tiny_conv()
    del conv[drop]
    with pytest.raises(DataFormatError, match=where):
        load_locomo(_write(tmp_path, [conv]), allow_download=False)


def test_missing_turn_field_names_location(tmp_path):
    conv = _tiny_conv()
    del conv["conversation"]["session_1"][1]["text"]
    with pytest.raises(DataFormatError, match=r"conversation 0 \(conv-x\)\.session_1\[1\]: missing key 'text'"):
        load_locomo(_write(tmp_path, [conv]), allow_download=False)


def test_offline_without_file_says_how_to_supply(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMR1_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("MEMR1_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match=r"MEMR1_DATA_DIR.*locomo/locomo10\.json"):
        load_locomo(allow_download=False)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_locomo(tmp_path / "missing.json")


@pytest.fixture()
def file_server(tmp_path):
    """A real HTTP server on localhost serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_checksum_and_caches(file_server, tmp_path, monkeypatch):
    root, base = file_server
    payload = json.dumps([_tiny_conv()]).encode()
    (root / "l.json").write_bytes(payload)
    monkeypatch.delenv("MEMR1_DATA_DIR", raising=False)
    monkeypatch.setenv("MEMR1_CACHE_DIR", str(tmp_path / "cache"))
    good = RemoteFile("locomo/locomo10.json", f"{base}/l.json", hashlib.sha256(payload).hexdigest())
    bad = RemoteFile("other/x.json", f"{base}/l.json", "0" * 64)
    with pytest.raises(DataIntegrityError, match="expected 0000"):
        resolve(bad)
    assert not (tmp_path / "cache" / "data" / "other" / "x.json").exists()  # nothing half-kept
    path = resolve(good)
    assert path == tmp_path / "cache" / "data" / "locomo" / "locomo10.json" and path.read_bytes() == payload
    (root / "l.json").unlink()  # second resolve must come from the cache, not the server
    assert resolve(good) == path and load_locomo(allow_download=False).conversations[0].sample_id == "conv-x"


def test_unreachable_download_lists_places(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMR1_DATA_DIR", raising=False)
    monkeypatch.setenv("MEMR1_CACHE_DIR", str(tmp_path / "cache"))
    remote = RemoteFile("locomo/locomo10.json", "http://127.0.0.1:9/none.json", "0" * 64)
    with pytest.raises(DataNotFoundError, match=r"download http://127\.0\.0\.1:9/none\.json"):
        resolve(remote)


def test_split_and_limit_errors(locomo):
    with pytest.raises(ConfigError, match="unknown split"):
        split_questions(locomo, "dev")
    with pytest.raises(ConfigError, match="limit"):
        split_questions(locomo, "test", limit=-1)
    assert len(split_questions(locomo, "test", limit=5)) == 5

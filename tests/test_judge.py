"""LLM judge against a real chat-completions HTTP server on 127.0.0.1 (no mocks of the judge)."""

from __future__ import annotations

import hashlib
import json
import math
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from chat_server import Request, completion, error, serve

from memr1.errors import ConfigError, JudgeError
from memr1.eval.judge import (
    JUDGE_PROMPT,
    LABEL_PROMPT,
    PROMPT_VERSION,
    JudgeConfig,
    JudgeParseError,
    LLMJudge,
    Verdict,
    agreement_with_f1,
    judge_records,
    parse_verdict,
)

SECRET = "sk-test-SECRET-do-not-leak-1234"
OK_JSON = '{"reason": "Both say Paris.", "label": "CORRECT"}'

# A reply is (status, content, delay_s); content may be a function of the request's prompt.
Reply = tuple[int, "str | Callable[[str], str]", float]


class ChatServer:
    """A scripted OpenAI-compatible server: replies are used in order, the last one repeats."""

    def __init__(self) -> None:
        self.replies: list[Reply] = [(200, OK_JSON, 0.0)]
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""

    def handle(self, req: Request) -> tuple[int, bytes, str]:
        self.requests.append({"path": req.path, "headers": req.headers, "body": req.body})
        status, content, delay = self.replies[min(len(self.requests), len(self.replies)) - 1]
        time.sleep(delay)
        if status != 200:
            return status, error(req, status, str(content)), "application/json"
        text = content(req.body["messages"][-1]["content"]) if callable(content) else content
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        return 200, completion(text, req.body["model"], len(self.requests), usage), "application/json"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "MEMR1_JUDGE_API_KEY",
        "OPENAI_API_KEY",
        "MEMR1_JUDGE_BASE_URL",
        "MEMR1_JUDGE_MODEL",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    srv = ChatServer()
    with serve(srv.handle) as srv.base_url:
        yield srv


def make(base_url: str, **kw: Any) -> LLMJudge:
    params = {"model": "judge-model", "timeout_s": 5.0, "max_retries": 2, "backoff_s": 0.001, **kw}
    return LLMJudge(JudgeConfig(base_url=base_url, **params))


# ----------------------------------------------------------------------------- parse_verdict


@pytest.mark.parametrize(
    "text, label, reason",
    [
        ('{"reason": "Same fact.", "label": "CORRECT"}', "CORRECT", "Same fact."),
        ('{"label": "wrong"}', "WRONG", ""),
        ('Sure.\n```json\n{"reason": "Other city.", "label": "Wrong"}\n```\nHope it helps', "WRONG", "Other city."),
        ('{"Label": "CORRECT.", "Reason": "ok"}', "CORRECT", "ok"),
        ('<think>maybe {"label": "WRONG"}</think>{"reason": "r", "label": "CORRECT"}', "CORRECT", "r"),
        ("{'reason': 'same', 'label': 'correct'}", "CORRECT", ""),
        ("label: wrong", "WRONG", ""),
        ("The years differ.\nWRONG", "WRONG", "The years differ. WRONG"),
    ],
)
def test_parse_verdict_reads_label(text: str, label: str, reason: str) -> None:
    assert parse_verdict(text) == (label, reason)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I am not sure.",
        "CORRECT or WRONG",
        '{"label": "maybe"}',
        '{"reason": "no label"}',
        "the answer is correct",  # bare words count only in upper case
    ],
)
def test_parse_verdict_raises_when_it_cannot_tell(text: str) -> None:
    with pytest.raises(JudgeParseError):
        parse_verdict(text)
    assert issubclass(JudgeParseError, JudgeError)


# ----------------------------------------------------------------------------- over HTTP


def test_correct_label_and_request_body(server: ChatServer) -> None:
    with make(server.base_url, temperature=0.0) as judge:
        v = judge.judge("Where did Ana move?", "Paris", "She moved to Paris in May.")
    assert v == Verdict("CORRECT", "Both say Paris.", correct=True, cached=False)
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "judge-model"
    assert req["body"]["temperature"] == 0
    assert req["body"]["response_format"] == {"type": "json_object"}
    prompt = req["body"]["messages"][-1]["content"]
    for part in ("Where did Ana move?", "Paris", "She moved to Paris in May.", '"label"'):
        assert part in prompt


@pytest.mark.parametrize(
    "content, label",
    [
        ('Here is my grade:\n```json\n{"reason": "Different year.", "label": "WRONG"}\n```', "WRONG"),
        ('I think {"reason": "Same date.", "label": "correct"} is right.', "CORRECT"),
        ('{"reason": "x", "label": "wrong"}', "WRONG"),
    ],
)
def test_tolerant_replies(server: ChatServer, content: str, label: str) -> None:
    server.replies = [(200, content, 0.0)]
    v = make(server.base_url).judge("q", "gold", "pred")
    assert (v.label, v.correct) == (label, label == "CORRECT")


def test_int_gold_is_accepted(server: ChatServer) -> None:
    v = make(server.base_url).judge("Which year?", 2022, "2022")
    assert v.correct
    assert "Gold answer: 2022" in server.requests[0]["body"]["messages"][-1]["content"]


@pytest.mark.parametrize("status", [500, 502, 429])
def test_transient_error_then_success(server: ChatServer, status: int) -> None:
    server.replies = [(status, "busy", 0.0), (200, OK_JSON, 0.0)]
    assert make(server.base_url).judge("q", "g", "p").label == "CORRECT"
    assert len(server.requests) == 2


def test_timeout_is_retried(server: ChatServer) -> None:
    server.replies = [(200, OK_JSON, 1.0), (200, OK_JSON, 0.0)]
    assert make(server.base_url, timeout_s=0.2).judge("q", "g", "p").correct
    assert len(server.requests) == 2


def test_always_503_fails_after_retries(server: ChatServer) -> None:
    server.replies = [(503, "overloaded", 0.0)]
    with pytest.raises(JudgeError, match="503") as err:
        make(server.base_url, max_retries=3).judge("q", "g", "p")
    assert len(server.requests) == 4
    assert server.base_url in str(err.value)


@pytest.mark.parametrize(
    "status, hint", [(401, "MEMR1_JUDGE_API_KEY"), (403, "API key"), (404, "base_url"), (400, "json_mode")]
)
def test_client_error_fails_at_once_without_leaking_key(
    server: ChatServer, status: int, hint: str, monkeypatch
) -> None:
    monkeypatch.setenv("MEMR1_JUDGE_API_KEY", SECRET)
    server.replies = [(status, "Incorrect API key provided", 0.0)]
    judge = make(server.base_url, max_retries=3)
    with pytest.raises(JudgeError) as err:
        judge.judge("q", "g", "p")
    assert len(server.requests) == 1
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"  # really sent
    msg = str(err.value)
    assert str(status) in msg and hint in msg
    assert SECRET not in msg and SECRET not in repr(err.value)
    assert SECRET not in repr(judge) and SECRET not in repr(judge.cfg)
    assert SECRET not in json.dumps(judge.describe())


def test_key_not_leaked_when_error_body_is_cut(server: ChatServer, monkeypatch) -> None:
    monkeypatch.setenv("MEMR1_JUDGE_API_KEY", SECRET)
    judge = make(server.base_url)
    for pad in range(180, 260, 3):  # puts the echoed key across any length limit on the message
        server.replies = [(401, "x" * pad, 0.0)]
        with pytest.raises(JudgeError) as err:
            judge.judge("q", "g", "p")
        assert SECRET[:10] not in str(err.value)


def test_connection_refused() -> None:
    with socket.socket() as s:  # find a free port, then close it so nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeError) as err:
        make(url, max_retries=1).judge("q", "g", "p")
    msg = str(err.value)
    assert f"{url}/chat/completions" in msg and "unreachable" in msg
    assert "MEMR1_JUDGE_BASE_URL" in msg


def test_unparseable_then_good_reply(server: ChatServer) -> None:
    server.replies = [(200, "Hmm, hard to say.", 0.0), (200, OK_JSON, 0.0)]
    assert make(server.base_url).judge("q", "g", "p").correct
    assert len(server.requests) == 2


def test_unparseable_after_retries(server: ChatServer) -> None:
    server.replies = [(200, "I would rather not grade this.", 0.0)]
    with pytest.raises(JudgeParseError, match="rather not grade"):
        make(server.base_url, max_retries=0, parse_retries=2).judge("q", "g", "p")
    assert len(server.requests) == 3


def test_no_reask_when_parse_retries_is_0_and_the_cap_is_sent(server: ChatServer) -> None:
    server.replies = [(200, "I like talking.", 0.0), (200, OK_JSON, 0.0)]
    with pytest.raises(JudgeParseError, match="in 1 attempt"):
        make(server.base_url, parse_retries=0, max_tokens=64).judge("q", "g", "p")
    assert len(server.requests) == 1 and server.requests[0]["body"]["max_tokens"] == 64


def test_a_server_that_always_times_out_is_a_judge_error_naming_timeout_s(server: ChatServer) -> None:
    server.replies = [(200, OK_JSON, 0.5)]
    with pytest.raises(JudgeError, match=r"ReadTimeout.*raise JudgeConfig.timeout_s \(now 0.2 s\)"):
        make(server.base_url, timeout_s=0.2, max_retries=1).judge("q", "g", "p")
    time.sleep(0.6)  # let the server finish the slow replies before counting
    assert len(server.requests) == 2


def test_a_200_that_is_not_json_is_a_judge_error_at_once() -> None:
    calls = []

    def html(req: Request) -> tuple[int, bytes, str]:
        calls.append(req)
        return 200, b"<html>login page</html>", "text/html"

    with serve(html) as url, pytest.raises(JudgeError, match="not with a chat completion.*login page"):
        make(url, max_retries=3).judge("q", "g", "p")
    assert len(calls) == 1  # a wrong base_url does not get better by asking again


def test_judge_many_keeps_unparsed_items_apart(server: ChatServer) -> None:
    def grade(prompt: str) -> str:
        return "No idea, sorry." if "Generated answer: ramble" in prompt else OK_JSON

    server.replies = [(200, grade, 0.0)]
    items = [("q1", "Paris", "Paris"), ("q2", "Rome", "ramble"), ("q3", "Oslo", "Oslo")]
    with pytest.raises(JudgeParseError):
        make(server.base_url, parse_retries=0).judge_many(items, progress=False)
    out = make(server.base_url, parse_retries=0).judge_many(items, progress=True, keep_unparsed=True)
    assert [type(v).__name__ for v in out] == ["Verdict", "JudgeParseError", "Verdict"]
    assert "No idea, sorry." in str(out[1])


def test_unreachable_is_never_kept_as_unparsed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = make(f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(JudgeError, match="unreachable") as err:
        judge.judge_many([("q", "g", "p")], progress=False, keep_unparsed=True)
    assert not isinstance(err.value, JudgeParseError)


def test_judge_records_marks_unparsed_as_nan_and_measures_agreement(server: ChatServer) -> None:
    import pandas as pd

    def grade(prompt: str) -> str:
        pred = prompt.split("Generated answer: ", 1)[1].splitlines()[0]
        if pred == "ramble":
            return "I am a helpful assistant."
        return json.dumps({"reason": "r", "label": "CORRECT" if pred != "Rome" else "WRONG"})

    server.replies = [(200, grade, 0.0)]
    df = pd.DataFrame(
        {
            "question": ["q1", "q2", "q3", "q4"],
            "gold": ["Paris", "Oslo", "7 May 2023", "Lima"],
            "prediction": ["Paris", "Rome", "May 7th, 2023", "ramble"],
            "f1": [1.0, 0.0, 0.4, 0.0],
        }
    )
    info = judge_records(df, make(server.base_url, parse_retries=0), progress=False)
    assert list(df.judge_label) == ["CORRECT", "WRONG", "CORRECT", "UNPARSED"]
    assert list(df.j[:3]) == [1.0, 0.0, 1.0] and math.isnan(df.j[3])
    assert "helpful assistant" in df.judge_reason[3]
    assert (info["model"], info["verdicts"], info["unparsed"]) == ("judge-model", 3, 1)
    # q1 and q2 agree with F1 >= 0.5; q3 is the paraphrased date F1 misses; q4 is left out
    assert info["agreement_with_f1"] == {
        "f1_column": "f1",
        "threshold": 0.5,
        "judged": 3,
        "agreement": pytest.approx(2 / 3),
        "kappa": pytest.approx(0.4),  # chance agreement 4/9 from a CORRECT rate of 2/3 and a high-F1 share of 1/3
        "correct_high": 1,
        "correct_low": 1,
        "wrong_high": 0,
        "wrong_low": 1,
    }


def test_agreement_edge_cases() -> None:
    assert agreement_with_f1([None, None], [1.0, 0.0])["agreement"] is None
    assert agreement_with_f1([None, None], [1.0, 0.0])["kappa"] is None
    always = agreement_with_f1([True] * 4, [0.9, 0.8, 0.0, 0.1])  # says CORRECT to everything: chance, not skill
    assert (always["agreement"], always["kappa"]) == (0.5, 0.0)
    assert agreement_with_f1([True, False], [0.9, 0.1])["kappa"] == 1.0
    assert agreement_with_f1([True, False], [0.5, 0.49])["agreement"] == 1.0  # F1 = 0.5 counts as high
    with pytest.raises(ConfigError, match="one F1 per verdict"):
        agreement_with_f1([True], [1.0, 0.0])


@pytest.mark.parametrize(
    "env, sent",
    [
        ({"MEMR1_JUDGE_API_KEY": SECRET, "OPENAI_API_KEY": "sk-other"}, f"Bearer {SECRET}"),
        ({"OPENAI_API_KEY": "sk-openai"}, "Bearer sk-openai"),
        ({}, None),
    ],
)
def test_authorization_header_from_env(server: ChatServer, monkeypatch, env, sent) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    make(server.base_url).judge("q", "g", "p")
    assert server.requests[0]["headers"].get("Authorization") == sent


def test_key_is_read_at_call_time(server: ChatServer, monkeypatch) -> None:
    judge = make(server.base_url)
    monkeypatch.setenv("MEMR1_JUDGE_API_KEY", SECRET)
    judge.judge("q", "g", "p")
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_cache_hits_make_no_request_and_survive_a_new_instance(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEMR1_JUDGE_API_KEY", SECRET)
    path = tmp_path / "sub" / "judge.sqlite"
    first = make(server.base_url, cache_path=str(path))
    assert first.judge("q", "g", "p").cached is False
    again = first.judge("q", "g", "p")
    assert again == Verdict("CORRECT", "Both say Paris.", correct=True, cached=True)
    assert len(server.requests) == 1
    second = make(server.base_url, cache_path=str(path))
    assert second.judge("q", "g", "p").cached is True
    assert len(server.requests) == 1
    second.judge("q", "g", "other prediction")  # a different item is asked for
    make(server.base_url, cache_path=str(path), model="other-model").judge("q", "g", "p")
    assert len(server.requests) == 3
    assert SECRET.encode() not in path.read_bytes()


def test_failures_are_not_cached(server: ChatServer, tmp_path) -> None:
    server.replies = [(503, "down", 0.0)]
    judge = make(server.base_url, cache_path=str(tmp_path / "c.sqlite"), max_retries=0)
    with pytest.raises(JudgeError):
        judge.judge("q", "g", "p")
    server.replies = [(200, OK_JSON, 0.0)]
    assert judge.judge("q", "g", "p").cached is False


def test_bad_cache_file_is_a_judge_error(server: ChatServer, tmp_path) -> None:
    path = tmp_path / "verdicts.jsonl"
    path.write_text('{"not": "sqlite"}\n' * 200)
    with pytest.raises(JudgeError, match="cache_path"):
        make(server.base_url, cache_path=str(path))


def test_judge_many_in_order(server: ChatServer, tmp_path) -> None:
    def grade(prompt: str) -> str:
        ok = "Generated answer: Paris" in prompt
        return json.dumps({"reason": "r", "label": "CORRECT" if ok else "WRONG"})

    server.replies = [(200, grade, 0.0)]
    judge = make(server.base_url, cache_path=str(tmp_path / "c.sqlite"))
    judge.judge("q1", "Paris", "Paris")
    items = [("q1", "Paris", "Paris"), ("q2", "Rome", "Oslo"), ("q3", 7, "Paris")]
    out = judge.judge_many(iter(items), progress=True)
    assert [v.label for v in out] == ["CORRECT", "WRONG", "CORRECT"]
    assert [v.cached for v in out] == [True, False, False]
    assert len(server.requests) == 3


def test_describe_records_the_judge(server: ChatServer) -> None:
    d = make(server.base_url).describe()
    assert d["model"] == "judge-model" and d["base_url"] == server.base_url
    assert d["prompt_version"] == PROMPT_VERSION
    assert d["prompt_sha256"] == hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest()


def test_label_prompt_asks_for_one_word_and_caches_apart(server: ChatServer, tmp_path) -> None:
    server.replies = [(200, "CORRECT: a", 0.0)]
    cache = str(tmp_path / "c.sqlite")
    label = make(server.base_url, prompt="label", max_tokens=8, cache_path=cache)
    assert label.judge("Where did Ana move?", "Paris", "Paris").label == "CORRECT"
    body = server.requests[0]["body"]
    assert "response_format" not in body and body["max_tokens"] == 8
    assert body["messages"][-1]["content"] == LABEL_PROMPT.format(
        question="Where did Ana move?", gold="Paris", prediction="Paris"
    )
    assert label.describe()["prompt_version"] != PROMPT_VERSION
    assert label.describe()["prompt_sha256"] == hashlib.sha256(LABEL_PROMPT.encode()).hexdigest()
    server.replies = [(200, OK_JSON, 0.0)]
    full = make(server.base_url, cache_path=cache)
    assert full.judge("Where did Ana move?", "Paris", "Paris").cached is False  # another prompt, another verdict
    assert "response_format" in server.requests[1]["body"]
    assert label.judge("Where did Ana move?", "Paris", "Paris").cached is True
    with pytest.raises(ConfigError, match="prompt"):
        make(server.base_url, prompt="short")


def test_config_from_env_and_validation(monkeypatch) -> None:
    monkeypatch.setenv("MEMR1_JUDGE_BASE_URL", "http://10.0.0.5:11434/v1")
    monkeypatch.setenv("MEMR1_JUDGE_MODEL", "qwen2.5:7b")
    cfg = JudgeConfig.from_env(max_retries=1)
    assert (cfg.base_url, cfg.model, cfg.max_retries) == ("http://10.0.0.5:11434/v1", "qwen2.5:7b", 1)
    assert set(JudgeConfig.field_docs()) == {f for f in cfg.to_dict()}  # every field documented
    monkeypatch.delenv("MEMR1_JUDGE_MODEL")
    with pytest.raises(ConfigError, match="MEMR1_JUDGE_MODEL"):
        JudgeConfig.from_env()
    with pytest.raises(ConfigError, match="base_url"):
        LLMJudge(JudgeConfig(base_url="127.0.0.1:8000/v1", model="m"))
    with pytest.raises(ConfigError, match="max_retries"):
        LLMJudge(JudgeConfig(model="m", max_retries=-1))


def test_prompt_is_our_own() -> None:
    # Mem0's ACCURACY_PROMPT must not be copied (docs/design.md §Metrics); spot-check its phrasing.
    assert "Your task is to label an answer" not in JUDGE_PROMPT
    assert "generous with your grading" not in JUDGE_PROMPT
    assert JUDGE_PROMPT.format(question="{x}", gold="g", prediction="p").count("{x}") == 1

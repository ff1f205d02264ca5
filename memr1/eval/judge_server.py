"""A local model served as an OpenAI-compatible judge: ``transformers serve`` on 127.0.0.1, for one block.

The judge then talks to it through ``LLMJudge``, the same HTTP client a user points at a hosted judge, so
the request path that fills J is the one a real endpoint gets. The server runs offline
(``HF_HUB_OFFLINE=1``) with a hub cache of its own in a temporary folder (``/v1/models`` fails with
``CacheNotFound`` when no hub cache folder exists; the user's cache is never touched), on a free port.
It preloads the model before it answers ``/health``, and it answers only to that model's name: the
folder path it was given (transformers/cli/serving/utils.py, ``_resolve_model``).

    with serve_model("smollm2-135m") as served, LLMJudge(served.judge_config()) as judge:
        judge.judge("When did Ana move?", "May 2023", "In May 2023.")

The process is always stopped when the block ends (also on an exception or Ctrl-C): SIGTERM to its
process group, then SIGKILL after ``stop_timeout_s``. Should the Python process that started it be
killed outright, Linux ends the server too (``PR_SET_PDEATHSIG``, set by the small launcher below).
Needs transformers' ``serving`` extra (fastapi, uvicorn, openai), part of memr1's dependencies.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from memr1.errors import ConfigError, JudgeError
from memr1.eval.judge import JudgeConfig

SERVING_MODULES = ("fastapi", "uvicorn", "openai")
"""What ``transformers serve`` imports beyond memr1's own dependencies (transformers' ``serving`` extra)."""

# Runs in the child before the server: ask Linux to SIGTERM this process when its parent dies, then exit
# at once if the parent already died before the request took effect (the usual race fix). Linux means the
# parent *thread*; the ``with`` block keeps the thread that started the server alive while it is needed.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
parent = int(sys.argv.pop(1))
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass  # not Linux: the context manager's own cleanup still applies
if os.getppid() != parent:
    sys.exit(1)
sys.argv[0] = "transformers"
"""
_SERVER = "from transformers.cli.transformers import main\nmain()\n"
"""The server's entry point, run with argv ``transformers serve FOLDER --host ... --port ... --device ...``."""


class JudgeServerError(JudgeError):
    """The local judge server could not start: it exited early, or /health did not answer in time."""


@dataclass(frozen=True)
class ServedModel:
    """A running ``transformers serve`` process, as a judge sees it."""

    name: str
    """The model as asked for (``smollm2-135m``, ``tiny`` or a folder)."""
    base_url: str
    """OpenAI API root, ``http://127.0.0.1:<port>/v1``."""
    model: str
    """The name requests must carry: the model folder, as the server was given it."""
    server: str
    """The serving software and its version, e.g. ``transformers serve 5.17.0``."""
    start_s: float
    """Seconds from launch until ``/health`` answered (the model is loaded by then)."""
    pid: int
    log_path: str
    """The server's stdout and stderr (deleted with its temporary folder when the block ends)."""

    def judge_config(self, **overrides: Any) -> JudgeConfig:
        """A ``JudgeConfig`` for this server.

        Defaults chosen for a local CPU judge: no ``response_format`` (transformers serve ignores it); no
        re-ask after a label-less reply (greedy decoding on one server repeats it); 128 reply tokens, ample
        for a sentence and a label, which bounds what a rambling reply costs (SmolLM2-135M writes ~8 tokens
        per second on one busy core); one HTTP retry and a 120 s timeout.
        """
        local = {"json_mode": False, "parse_retries": 0, "max_tokens": 128, "max_retries": 1, "timeout_s": 120.0}
        return JudgeConfig(**{"base_url": self.base_url, "model": self.model, **local, **overrides})

    def describe(self) -> dict[str, Any]:
        """What a report records about the server (the judge's own ``describe`` names model and prompt)."""
        return {"served": self.name, "server": self.server, "start_s": round(self.start_s, 1)}


def serving_missing() -> list[str]:
    """The modules of transformers' ``serving`` extra that are not installed ([] when serving can run)."""
    return [m for m in SERVING_MODULES if importlib.util.find_spec(m) is None]


def check_servable(name: str) -> None:
    """Raise ConfigError unless ``name`` can be served here: the serving packages are installed and ``name``
    is a local model name of ``memr1.llm.load`` or a folder holding config.json (offline: no hub ids).
    Cheap (nothing is built or loaded), so a stage can check before hours of answering."""
    from memr1.llm.load import LOCAL_MODELS

    if missing := serving_missing():
        version = importlib.metadata.version("transformers")
        raise ConfigError(
            f"`transformers serve` needs transformers' serving extra, missing here: {', '.join(missing)}; "
            f"install it with `pip install -c constraints.txt 'transformers[serving]=={version}'`"
        )
    if name not in LOCAL_MODELS and not (Path(name).expanduser() / "config.json").is_file():
        raise ConfigError(
            f"cannot serve {name!r} as the judge: it is neither a local model name "
            f"({', '.join(LOCAL_MODELS)}) nor a folder holding config.json; the server runs offline"
        )


def model_folder(name: str) -> Path:
    """The folder to serve for ``name`` (a local model is built or converted on first use)."""
    from memr1.llm.load import LOCAL_MODELS

    check_servable(name)
    return (LOCAL_MODELS[name]() if name in LOCAL_MODELS else Path(name).expanduser()).resolve()


@contextmanager
def serve_model(
    name: str,
    *,
    port: int = 0,
    device: str = "auto",
    start_timeout_s: float = 300.0,
    stop_timeout_s: float = 5.0,
) -> Iterator[ServedModel]:
    """Serve ``name`` with ``transformers serve`` on 127.0.0.1 for the ``with`` block; yield a ServedModel.

    Args:
        name: see ``model_folder``.
        port: TCP port; 0 picks a free one.
        device: ``--device`` of transformers serve (``auto``: CUDA when present, else CPU).
        start_timeout_s: how long to wait for ``/health`` (model loading included; ~15 s for SmolLM2 on CPU).
        stop_timeout_s: grace after SIGTERM before SIGKILL (the server holds nothing worth saving).

    Raises:
        ConfigError: see ``check_servable``.
        JudgeServerError: the server exited early or ``/health`` never answered; the message carries the
            last lines of the server's log.
    """
    folder = model_folder(name)
    port = port or _free_port()
    args = ["serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", device]
    with tempfile.TemporaryDirectory(prefix="memr1-judge-serve-") as tmp:
        (Path(tmp) / "hub").mkdir()
        env = {
            **os.environ,
            "HF_HOME": str(Path(tmp) / "hf"),
            "HF_HUB_CACHE": str(Path(tmp) / "hub"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1",  # log lines reach the file as they are written
        }
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log_file:
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-c", _DIE_WITH_PARENT + _SERVER, str(os.getpid()), *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: Ctrl-C reaches us, and we stop all of it
            )
            try:
                _wait_healthy(proc, f"http://127.0.0.1:{port}/health", start_timeout_s, log_path)
                yield ServedModel(
                    name=name,
                    base_url=f"http://127.0.0.1:{port}/v1",
                    model=str(folder),
                    server=f"transformers serve {importlib.metadata.version('transformers')}",
                    start_s=time.perf_counter() - start,
                    pid=proc.pid,
                    log_path=str(log_path),
                )
            finally:
                stop_process(proc, stop_timeout_s)


def stop_process(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL it after ``timeout_s``, and reap it (idempotent)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout_s if sig == signal.SIGTERM else None)
        except subprocess.TimeoutExpired:
            continue


def _wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float, log_path: Path) -> None:
    """Poll ``url`` until it answers 200; raise JudgeServerError when the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise JudgeServerError(
                    f"the judge server exited with code {proc.returncode} before answering {url}; "
                    f"its last log lines:\n{log_tail(log_path)}"
                )
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.25)
    raise JudgeServerError(
        f"the judge server did not answer {url} within {timeout_s:g} s (raise start_timeout_s on a slow "
        f"machine); its last log lines:\n{log_tail(log_path)}"
    )


def log_tail(path: str | os.PathLike, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file (progress-bar carriage returns count as line breaks)."""
    text = Path(path).read_bytes().decode(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _free_port() -> int:
    """A TCP port nothing listens on right now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

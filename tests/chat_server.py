"""A real HTTP server on 127.0.0.1 for tests of OpenAI-compatible clients (judge, backends, report).

``serve(handle)`` runs it in a daemon thread; ``handle(request)`` gets the path, headers and decoded
JSON body and returns ``(status, body_bytes, content_type)``. ``completion(...)`` builds a
chat-completions reply; ``error(...)`` an error reply that echoes the Authorization header back, as
some servers do (this is how keys leak into error messages).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


Handle = Callable[[Request], tuple[int, bytes, str]]


def completion(text: str, model: str, n: int = 1, usage: dict | None = None, finish: str = "stop") -> bytes:
    out: dict[str, Any] = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}],
    }
    if usage is not None:
        out["usage"] = usage
    return json.dumps(out).encode()


def error(request: Request, status: int, message: str) -> bytes:
    msg = f"{message} (got Authorization: {request.headers.get('Authorization')})"
    return json.dumps({"error": {"message": msg, "type": "error", "code": status}}).encode()


@contextmanager
def serve(handle: Handle) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:<port>/v1``) of a server answering with ``handle``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, data, content_type = handle(Request(self.path, dict(self.headers), body))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()

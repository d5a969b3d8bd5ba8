"""A local HTTP server answering like a Slack incoming webhook: each POST takes the next scripted
(status, headers, body), then 200 "ok". Records every request with its arrival time."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    at: float  # time.monotonic()
    path: str
    body: dict[str, Any]
    status: int


class SlackServer:
    def __init__(self, script: list[tuple[int, dict[str, str], str]] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with peer.lock:
                    status, headers, text = peer.script.pop(0) if peer.script else (200, {}, "ok")
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = {"_raw": raw.decode("utf-8", "replace")}
                    peer.requests.append(Request(time.monotonic(), self.path, body, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def ok(self) -> list[Request]:
        return [r for r in self.requests if r.status == 200]

    def texts(self) -> list[str]:
        return [json.dumps(r.body) for r in self.ok()]

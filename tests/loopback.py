"""A fake OpenAI-compatible server on 127.0.0.1 for the rater tests (stdlib only).

`LoopbackServer` owns the socket and the serving thread; a test's own request handler decides
the answers. Port 0 lets the OS pick a free port, so servers never collide across tests.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean (no access log lines)."""

    def log_message(self, *args):
        pass


class LoopbackServer:
    """Serves ``handler_class`` on 127.0.0.1 in a daemon thread while used as a context
    manager; ``base_url`` is what an OpenAI client takes (it ends in ``/v1``)."""

    def __init__(self, handler_class: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def read_json(handler: BaseHTTPRequestHandler) -> dict:
    """The request's JSON body."""
    return json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", 0))))


def send_json(handler: BaseHTTPRequestHandler, status: int, body: bytes,
              headers: dict[str, str] | None = None) -> None:
    """Write ``body`` (already JSON bytes, possibly deliberately broken) as the response; a
    client that already gave up (a timeout test) is not an error."""
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass


def chat_completion(content: str) -> bytes:
    """A /v1/chat/completions response body whose one choice says ``content``."""
    return json.dumps({"id": "cmpl-1", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content},
         "finish_reason": "stop"}]}).encode()

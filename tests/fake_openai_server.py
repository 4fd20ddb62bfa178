"""A tiny OpenAI-compatible server on 127.0.0.1 for tests (no network): it answers each POST with the
next planned (status, body, delay_s) and keeps every request, so a test can say what the client sent."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAIServer:
    """``plan`` lists (status, body text, delay in s) to send, in order; when it runs out the server
    answers ``default``. ``requests`` keeps {"path", "auth", "body"} of every request received."""

    def __init__(self, plan: list[tuple[int, str, float]] | None = None,
                 default: tuple[int, str, float] = (200, "{}", 0)):
        self.plan = list(plan or [])
        self.default = default
        self.requests: list[dict] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @classmethod
    def replying(cls, *bodies: dict) -> FakeOpenAIServer:
        """Answers the i-th request with the i-th body (status 200), then repeats the last one."""
        return cls([(200, json.dumps(b), 0) for b in bodies], default=(200, json.dumps(bodies[-1]), 0))

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                       "body": json.loads(self.rfile.read(length))})
                status, body, delay = outer.plan.pop(0) if outer.plan else outer.default
                time.sleep(delay)
                data = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def log_message(self, *args):  # keep pytest's output clean
                pass

        return Handler

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

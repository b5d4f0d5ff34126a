"""A lab pod's own application process (topology `ownApp: true`): an HTTP/1.1 server
with keep-alive on the pod's TCP ports, for the mesh's tests and demo.

Why its own process: a meshed pod's sidecar sits between the world and the app, and
a test must be able to restart the app alone (the node's shared echo process serves
many pods). Run inside the pod's namespace by the lab's supervisor:

    python -m podnet.lab.meshapp --name POD [--version V] --port P... --control FILE --ready FILE

- A line that is not an HTTP request is answered `<name> <line>` and the connection
  closed, as the lab's echo server does, so `podnet connectivity test` and the service
  checks recognise the pod.
- `GET /...` answers 200 with `<name> <version>\\n` and headers `x-pod`, `x-version`,
  and the request's `x-request-id` echoed back (so a test can follow one request);
  `GET /headers` answers with the request's headers; `GET /status/<code>` with that code.
- Behaviour a test changes without restarting: the JSON `--control` file, read again
  when its mtime changes: `{"fail_percent": 50, "fail_status": 503, "delay_ms": 0}`
  (every Nth request fails, deterministic: exactly that share over any run of requests).
- `GET /call?url=http://svc/path` makes the app itself call another service (through
  its own sidecar when meshed) and answers with what came back, the request id passed
  on and the id the far app saw shown (`<name> -> [<id>] <answer>`): one request
  followed across two hops.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Control:
    """The control file's settings, re-read when it changes; a failure counter."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._mtime = 0.0
        self.settings: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._count = 0

    def current(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                self.settings, self._mtime = json.loads(self.path.read_text() or "{}"), mtime
        except (OSError, ValueError):
            self.settings = {}
        return self.settings

    def should_fail(self, percent: float) -> bool:
        """Deterministic: request n fails when floor(n * p) moves (exactly p% of any run)."""
        with self._lock:
            self._count += 1
            n = self._count
        return int(n * percent / 100) != int((n - 1) * percent / 100)


def handler(name: str, version: str, control: Control) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK wait

        def log_message(self, *args: Any) -> None:  # quiet: the sidecar logs requests
            return

        def parse_request(self) -> bool:
            line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
            words = line.split()
            if not words or not words[-1].startswith("HTTP/"):  # the echo server's line protocol
                self.wfile.write(f"{name} {line}\n".encode())
                self.close_connection = True
                return False
            return super().parse_request()

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            settings = control.current()
            delay = float(settings.get("delay_ms", 0)) / 1000
            if delay:
                time.sleep(delay)
            if self.path.startswith("/status/"):
                return self.reply(int(self.path.rsplit("/", 1)[1] or 200), f"{name} {version}\n")
            if settings.get("fail_percent") and control.should_fail(float(settings["fail_percent"])):
                return self.reply(int(settings.get("fail_status", 503)), f"{name} {version} failing\n")
            if self.path == "/headers":
                return self.reply(200, "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()))
            if self.path.startswith("/call?url="):
                return self.call(self.path.split("=", 1)[1])
            return self.reply(200, f"{name} {version}\n")

        def call(self, url: str) -> None:
            request = urllib.request.Request(url, headers={"x-request-id": self.headers.get("x-request-id", "")})
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    body = answer.read().decode(errors="replace")
                    rid = answer.headers.get("x-request-id", "")
                    self.reply(answer.status, f"{name} -> [{rid}] {body}")
            except OSError as exc:
                self.reply(502, f"{name} -> {exc}\n")

        def reply(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-pod", name)
            self.send_header("x-version", version)
            if rid := self.headers.get("x-request-id"):
                self.send_header("x-request-id", rid)
            self.end_headers()
            self.wfile.write(data)

        do_HEAD = do_GET

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podnet.lab.meshapp")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", default="v1")
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--control", type=Path)
    parser.add_argument("--ready", type=Path)
    args = parser.parse_args(argv)
    control = Control(args.control)
    servers = [Server(("0.0.0.0", port), handler(args.name, args.version, control)) for port in args.port]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if args.ready:
        args.ready.touch()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for server in servers:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

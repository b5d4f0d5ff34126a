"""The dashboard's HTTP server: read-only, local by default, nothing loaded from elsewhere.

Routes (GET only; every other method is 405):
  /                  the page (static/index.html)
  /static/NAME       the page's script and style, served from this package
  /api/snapshot      the cluster as the page draws it (snapshot.py)
  /api/events        server-sent events: `snapshot` when it changed, `flow` per verdict
  /api/trace?src=&dst=&port=&protocol=&live=   `podnet trace` as JSON

Why these guards: the page shows the whole cluster (pods, addresses, policies'
verdicts) to whoever reaches it. So it binds 127.0.0.1 unless told otherwise, refuses
a non-loopback address without `allow_remote`, and, while bound to loopback, answers
only requests whose Host header names loopback: a web page elsewhere that rebinds its
own DNS name to 127.0.0.1 cannot read it. Another site's page cannot make it work
either: /api/ refuses a request the browser marks cross-site (Sec-Fetch-Site), and a
trace (a live one sends packets) needs a header only the page's own script can send. The page's Content-Security-Policy allows
only its own script and style, and JSON is written with <, > and & escaped.
"""

from __future__ import annotations

import ipaddress
import json
import queue
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from podnet.errors import PodnetError
from podnet.observe.dashboard import DEFAULT_HOST, DEFAULT_PORT
from podnet.observe.dashboard.hub import Hub, Source

TRACE_HEADER = "X-Podnet-Dashboard"  # a cross-site request cannot set it without a preflight (refused: 405)
KEEPALIVE = 15.0  # seconds between comments on an idle event stream (proxies drop silent ones)
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> None:
    """A non-loopback address only when asked for in so many words."""
    if not is_loopback(host) and not allow_remote:
        raise PodnetError(f"--host {host} is not a loopback address, and the dashboard shows the whole cluster "
                          "(pods, addresses, verdicts) to whoever reaches it",
                          f"give --allow-remote to serve it on {host} anyway, or keep the default {DEFAULT_HOST}")


def to_json(value: Any) -> bytes:
    """JSON that stays inert even where it is read as HTML (no <, > or & in it)."""
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def sse_frame(event: str, data: Any) -> bytes:
    """One server-sent event: the JSON is on a single `data:` line (json.dumps escapes
    every newline inside strings), so no value can end the frame or forge another."""
    return b"event: " + event.encode() + b"\ndata: " + to_json(data) + b"\n\n"


def static_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, type) of every file in static/: the only files ever served."""
    folder = resources.files("podnet.observe.dashboard") / "static"
    out = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in TYPES:
            out[item.name] = (item.read_bytes(), TYPES[suffix])
    return out


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True  # an open event stream never holds up the exit

    def __init__(self, address: tuple[str, int], source: Source, *, allow_remote: bool, interval: float,
                 log: bool = False) -> None:
        self.source = source
        self.hub = Hub(source, interval, on_error=self._poll_failed)
        self.files = static_files()
        self.log = log
        self.remote = allow_remote
        self.stopping = threading.Event()
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}/"

    def serve_in_thread(self) -> threading.Thread:
        """Start polling and serving on a thread of its own (the tests; `run` serves here)."""
        self.hub.start()
        thread = threading.Thread(target=self.serve_forever, args=(0.1,), name="dashboard-http", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.stopping.set()
        self.hub.stop()
        self.shutdown()
        self.server_close()

    def _poll_failed(self, exc: Exception) -> None:
        print(f"podnet dashboard: reading the cluster failed: {exc}", file=sys.stderr)


class DashboardServer6(DashboardServer):
    address_family = socket.AF_INET6


def make_server(source: Source, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, allow_remote: bool = False,
                interval: float = 1.0, log: bool = False) -> DashboardServer:
    """Bind (port 0: any free port); PodnetError for a refused or unbindable address."""
    check_bind(host, allow_remote)
    cls = DashboardServer6 if ":" in host else DashboardServer
    try:
        return cls((host.strip("[]"), port), source, allow_remote=allow_remote, interval=interval, log=log)
    except OSError as exc:
        raise PodnetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          "is another dashboard running? give --port") from None


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "podnet-dashboard"
    sys_version = ""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method but GET (even ones http.server does not know)
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, to_json({"error": f"{self.command} is not allowed: the "
                                                                    "dashboard is read-only"}),
                   "application/json", {"Allow": "GET"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._host_allowed():
            self._error(HTTPStatus.MISDIRECTED_REQUEST, "this dashboard answers only on its loopback address")
            return
        url = urlsplit(self.path)
        path = url.path
        if path.startswith("/api/") and self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            self._error(HTTPStatus.FORBIDDEN, "the dashboard's data is for its own page only")
            return
        if path in ("/", "/index.html"):
            self._file("index.html")
        elif path.startswith("/static/"):
            self._file(path[len("/static/"):])
        elif path == "/api/snapshot":
            self._snapshot()
        elif path == "/api/events":
            self._events()
        elif path == "/api/trace":
            self._trace({k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _host_allowed(self) -> bool:
        if self.server.remote:
            return True
        host = (self.headers.get("Host") or "").strip()
        name = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
        return is_loopback(name)

    def _file(self, name: str) -> None:
        found = self.server.files.get(name)  # a name from the listing, never a path
        if found is None:
            self._error(HTTPStatus.NOT_FOUND, f"no such file: {name}")
            return
        self._send(HTTPStatus.OK, *found)

    def _snapshot(self) -> None:
        try:
            snap = self.server.hub.snapshot()
        except Exception as exc:  # noqa: BLE001 - the page shows why, the server stays up
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot read the cluster: {exc}")
            return
        self._send(HTTPStatus.OK, to_json(snap), "application/json")

    def _trace(self, params: dict[str, str]) -> None:
        from podnet.observe.dashboard.data import trace_query

        if self.headers.get(TRACE_HEADER) != "1":  # a live trace sends packets: never for another site's <img>
            self._error(HTTPStatus.FORBIDDEN, f"a trace needs the header {TRACE_HEADER}: 1 (the page sends it)")
            return
        try:
            query = trace_query(params)
            result = self.server.source.trace(**query)
        except PodnetError as exc:
            self._error(HTTPStatus.BAD_REQUEST, exc.msg, exc.details)
            return
        except ImportError as exc:
            self._error(HTTPStatus.NOT_IMPLEMENTED, f"podnet trace is not available: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - one failed trace must not end the server
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"trace failed: {exc!r}")
            return
        self._send(HTTPStatus.OK, to_json(result), "application/json")

    def _events(self) -> None:
        sub = self.server.hub.subscribe()
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            for key, value in SECURITY_HEADERS.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            while not self.server.stopping.is_set():
                try:
                    event = sub.events.get(timeout=KEEPALIVE)
                except queue.Empty:
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    if event is None:
                        break
                    self.wfile.write(sse_frame(*event))
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the page went away
        finally:
            self.server.hub.unsubscribe(sub)
            self.close_connection = True

    def _error(self, status: HTTPStatus, message: str, details: str | None = None) -> None:
        body = {"error": message, **({"details": details} if details else {})}
        self._send(status, to_json(body), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if self.server.log:
            super().log_message(format, *args)

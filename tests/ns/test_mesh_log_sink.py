"""The access log sink against a real HAProxy 2.6 (Debian's /usr/sbin/haproxy).

HAProxy runs as a child (-db) on 127.0.0.1 with access_log.LOG_FORMAT and `log_line`
to a LogSink, in front of a small HTTP server of the test's own (200, 500, or 200 after
a delay, by path), shaped as a sidecar's outbound frontend: TCP mode switching to
HTTP, HTTP_RULES first, a route variable per path, retries on 500 for /fail, a 403 of
its own for /deny. Everything lives in the test's tmp dir; HAProxy is killed by its
PID in a finally. The second test measures (prints, does not assert) how many lines a
second the sink takes and its CPU per 1k requests under `wrk`.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from podnet.agent.metrics import AgentMetrics
from podnet.mesh.access_log import HTTP_RULES, LOG_FORMAT, log_line
from podnet.mesh.golden import bucket_of
from podnet.mesh.log_sink import LogSink

HAPROXY = "/usr/sbin/haproxy"
SLOW_MS = 30
COUNTS = {"ok": 120, "fail": 20, "slow": 20, "deny": 5}

pytestmark = pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason=f"{HAPROXY} is not installed")


class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        if self.path.startswith("/slow"):
            time.sleep(SLOW_MS / 1000)
        body = b"app\n"
        self.send_response(500 if self.path.startswith("/fail") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class AppServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # HAProxy closes a connection whose 500 it retries: the app's write fails, as expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(log_socket: str, stats: str, port: int, app_port: int) -> str:
    quoted = LOG_FORMAT.replace("\\", "\\\\").replace('"', '\\"')
    routes = "\n".join(f"  http-request set-var(txn.route) str(default/web.{name}) if {{ path_beg /{name} }}"
                       for name in COUNTS)
    rules = "\n".join(f"  {rule}" for rule in HTTP_RULES)
    return f"""global
  {log_line(log_socket)}
  stats socket {stats} mode 600 level admin
defaults
  mode http
  log global
  log-format "{quoted}"
  option dontlognull
  timeout connect 2s
  timeout client 10s
  timeout server 10s
  unique-id-format %[req.hdr(x-request-id)]
frontend outbound
  bind 127.0.0.1:{port}
  mode tcp
  tcp-request inspect-delay 2s
  tcp-request content switch-mode http if HTTP
  http-request set-header x-request-id %[uuid] unless {{ req.hdr(x-request-id) -m found }}
{rules}
  http-request set-var(txn.pod) str(default/client-1)
  http-request set-var(txn.service) str(default/web:80)
{routes}
  http-request return status 403 content-type text/plain string denied if {{ path_beg /deny }}
  http-request return status 200 content-type text/plain string local if {{ path_beg /local }}
  use_backend web
backend web
  retries 1
  retry-on 500
  server app 127.0.0.1:{app_port}
"""


@contextmanager
def haproxy(tmp: Path, sink_path: str) -> Iterator[tuple[int, str]]:
    """HAProxy in front of App: yields (its port, its stats socket)."""
    app = AppServer(("127.0.0.1", 0), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    port, stats = free_port(), str(tmp / "stats.sock")
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(config(sink_path, stats, port, app.server_address[1]))
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "haproxy exited"
                assert time.monotonic() < deadline, "haproxy did not listen"
                time.sleep(0.05)
        yield port, stats
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        app.shutdown()
        app.server_close()


def wait_for_lines(sink: LogSink, count: int, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while sink.lines < count and time.monotonic() < deadline:
        time.sleep(0.02)


def show_info(stats: str) -> dict[str, str]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(stats)
        s.sendall(b"show info\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return dict(line.split(": ", 1) for line in data.decode().splitlines() if ": " in line)


def test_haproxy_lines_become_golden_signals(tmp_path: Path) -> None:
    sink_path = str(tmp_path / "log.sock")
    metrics = AgentMetrics()
    sink = LogSink(sink_path, metrics)
    sink.start()
    client_ms: dict[str, list[float]] = {name: [] for name in COUNTS}
    try:
        assert stat.S_IMODE(os.stat(sink_path).st_mode) == 0o666
        with haproxy(tmp_path, sink_path) as (port, _):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for name, count in COUNTS.items():
                for i in range(count):
                    started = time.monotonic()
                    conn.request("GET", f"/{name}/{i}?secret=x", headers={"X-Request-ID": f"{name}-{i}"})
                    conn.getresponse().read()
                    client_ms[name].append((time.monotonic() - started) * 1000)
            conn.close()
            wait_for_lines(sink, sum(COUNTS.values()))
        rows = {r["route"]: r for r in sink.golden.snapshot()}
        scraped = metrics.render()
        denied, retried = sink.recent("denied"), sink.recent("retried")
    finally:
        sink.stop()
    assert not os.path.exists(sink_path)
    assert (sink.lines, sink.unparsed, sink.tcp) == (sum(COUNTS.values()), 0, 0)
    assert {route: r["requests"] for route, r in rows.items()} == {f"default/web.{n}": c for n, c in COUNTS.items()}
    assert rows["default/web.fail"]["errors"] == COUNTS["fail"]
    assert rows["default/web.fail"]["retries"] == COUNTS["fail"]  # retries 1, and every try failed
    assert rows["default/web.ok"]["errors"] == rows["default/web.slow"]["errors"] == 0
    assert rows["default/web.deny"]["denied"] == COUNTS["deny"]
    # the proxy's view of a request lies between the app's delay and the client's view:
    # each estimate falls in a bucket between those two (the buckets bound the error)
    for name, floor_ms in (("ok", 0.0), ("slow", SLOW_MS)):
        seen = sorted(client_ms[name])
        for q, field in ((0.5, "p50_ms"), (0.99, "p99_ms")):
            ceiling = seen[min(len(seen) - 1, int(q * len(seen)))]
            estimate = rows[f"default/web.{name}"][field]
            assert bucket_of(floor_ms) <= bucket_of(estimate) <= bucket_of(ceiling), (name, field, estimate)
    assert [r["request_id"] for r in denied] == [f"deny-{i}" for i in range(COUNTS["deny"])]
    assert [r["request_id"] for r in retried] == [f"fail-{i}" for i in range(COUNTS["fail"])]
    assert all(r["path"].startswith("/fail/") and "secret" not in r["path"] for r in retried)
    line = ('podnet_mesh_requests_total{code_class="5xx",direction="outbound",route="default/web.fail",'
            f'service="default/web:80"}} {float(COUNTS["fail"])}')
    assert line in scraped


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_sink_throughput_report(tmp_path: Path) -> None:
    """Measured, not asserted: lines/s the sink takes from HAProxy (which answers /local
    itself, so the app is not the limit), lines HAProxy dropped, the sink's CPU."""
    sink_path = str(tmp_path / "log.sock")
    sink = LogSink(sink_path)
    sink.start()
    try:
        with haproxy(tmp_path, sink_path) as (port, stats):
            time.sleep(0.3)
            cpu0, lines0 = sink.cpu_seconds, sink.lines
            run = subprocess.run(["wrk", "-t1", "-c8", "-d3s", f"http://127.0.0.1:{port}/local"],
                                 capture_output=True, text=True, check=True, timeout=30)
            wait_for_lines(sink, lines0 + 1, 2.0)
            time.sleep(0.5)  # the queue drains
            dropped = int(show_info(stats).get("DroppedLogs", "0"))
        lines, cpu = sink.lines - lines0, sink.cpu_seconds - cpu0
    finally:
        sink.stop()
    sent = int(next(w for w in run.stdout.split("\n") if "requests in" in w).split()[0])
    feed_rate = _feed_rate()
    report = {"wrk_requests": sent, "wrk_rps": round(sent / 3), "sink_lines": lines, "haproxy_dropped": dropped,
              "sink_cpu_ms_per_1k": round(cpu / max(lines, 1) * 1e6, 1), "feed_only_lines_per_s": feed_rate,
              "max_dgram_qlen": Path("/proc/sys/net/unix/max_dgram_qlen").read_text().strip()}
    print("\nmesh log sink:", json.dumps(report))
    assert 0 < lines <= sent


def _feed_rate() -> int:
    """Lines a second `feed` (parse + count) takes on one core, no socket."""
    from podnet.mesh.golden import Golden

    line = (b'podnet-mesh/1 1796480752.638 outbound be s1 200 0 879 879 116 79 0 -- "default/client-1" '
            b'"default/web:80" "default/web-split#0" "" "GET" "req-1" "/api/items"\n')
    sink = LogSink("/nonexistent", golden=Golden())
    started, count = time.thread_time(), 20000
    for _ in range(count):
        sink.feed(line)
    return round(count / (time.thread_time() - started))

"""The node agent's end of the sidecars' access log: one UNIX datagram socket, one thread.

Every sidecar on the node sends one datagram per request (`access_log.log_line`); the
thread parses it and counts it into the golden signals (mesh/golden.py). It also keeps
the last requests the mesh refused or had to retry, flow-like, with their request id:
403 (`denied`), 429 (`rate_limited`), retried (`retried`) and failed (`failed`: a 5xx
or broken by a server); `podnet flows`-like listings read them through `recent`.

- The socket is mode 0666: HAProxy opens it after dropping to the sidecar's uid, and
  the directory above must let that uid through. A stale socket from an earlier agent
  is replaced; anything else at the path is refused.
- One poll per burst, then non-blocking reads until the queue is empty: no poll per
  line. Linux bounds a datagram socket's queue by net.unix.max_dgram_qlen of the
  socket's network namespace (10 by default, 512 under systemd): when the thread falls
  behind by more than that, HAProxy drops lines (its `show info` counts them).
- Memory is bounded: `keep` records per kind, MAX_SERIES label sets in golden.py.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from podnet.errors import PodnetError
from podnet.mesh.access_log import AccessRecord, parse
from podnet.mesh.golden import Golden

log = logging.getLogger("podnet.mesh.log_sink")

KINDS = ("denied", "rate_limited", "retried", "failed")
KEEP = 500  # records per kind
POLL_SECONDS = 0.25  # how soon `stop` is noticed
MAX_DATAGRAM = 65536
RECEIVE_BUFFER = 4 << 20  # bytes asked for bursts (the kernel caps it at net.core.rmem_max)


def kinds_of(record: AccessRecord) -> list[str]:
    """The kinds of listing a request belongs to (none for most)."""
    out = []
    if record.status == 403:
        out.append("denied")
    if record.status == 429:
        out.append("rate_limited")
    if record.retries:
        out.append("retried")
    if record.failed:
        out.append("failed")
    return out


def flow_of(seq: int, record: AccessRecord, kinds: list[str]) -> dict[str, Any]:
    """A kept request, shaped like `podnet flows` records (seq, time, verdict, ...)."""
    return {"seq": seq, "time": record.time, "verdict": kinds[0], "kinds": kinds,
            "direction": record.direction, "pod": record.pod, "peer": record.peer,
            "service": record.service, "route": record.route, "method": record.method, "path": record.path,
            "status": record.status, "retries": record.retries, "termination": record.termination,
            "request_id": record.request_id, "backend": record.backend, "server": record.server,
            "ms": None if record.total_us is None else record.total_us / 1000}


class LogSink:
    """`start` binds `path` and starts the thread; `stop` ends it and removes the
    socket. `metrics` (the agent's AgentMetrics, optional) gets the golden signals."""

    def __init__(self, path: str, metrics: Any = None, golden: Golden | None = None, keep: int = KEEP) -> None:
        self.path = path
        self.metrics = metrics
        self.golden = golden or Golden()
        self.observers: list[Callable[[AccessRecord, float | None], None]] = []
        self._kept: dict[str, collections.deque[dict[str, Any]]] = {
            kind: collections.deque(maxlen=keep) for kind in KINDS}
        self._lock = threading.Lock()  # the kept records (the counts are the thread's alone)
        self._seq = 0
        self.lines = self.unparsed = self.tcp = 0
        self.cpu_seconds = 0.0  # the thread's own CPU time, for the record
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- life

    def start(self) -> None:
        self._sock = _bind(self.path)
        if self.metrics is not None:
            self.metrics.watch_mesh(self.golden)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="podnet-mesh-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(POLL_SECONDS * 8)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _run(self) -> None:
        assert self._sock is not None
        sock, poller = self._sock, select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        while not self._stopping.is_set():
            if not poller.poll(POLL_SECONDS * 1000):
                continue
            try:
                while True:
                    self.feed(sock.recv(MAX_DATAGRAM, socket.MSG_DONTWAIT))
            except BlockingIOError:
                pass
            except OSError as exc:  # not expected on a bound datagram socket: say so, keep reading
                log.warning("mesh access log %s: %s", self.path, exc)
                self._stopping.wait(POLL_SECONDS)
            except Exception:  # noqa: BLE001 - a bug in one line must not end the statistics
                log.exception("mesh access log: cannot count a line")
            self.cpu_seconds = time.thread_time()

    # -- lines

    def feed(self, data: bytes, now: float | None = None) -> AccessRecord | None:
        """Count one datagram (what the thread does with each; tests call it directly)."""
        self.lines += 1
        record = parse(data.decode("utf-8", "replace"))
        if record is None:
            self.unparsed += 1
            return None
        if not record.http:
            self.tcp += 1
            return record
        self.golden.observe(record, now)
        for observe in self.observers:  # e.g. the retry budgets (mesh/budget.py)
            observe(record, now)
        kinds = kinds_of(record)
        if kinds:
            with self._lock:
                self._seq += 1
                flow = flow_of(self._seq, record, kinds)
                for kind in kinds:
                    self._kept[kind].append(flow)
        return record

    def recent(self, kind: str = "all", since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """The kept requests of `kind` (or of every kind: "all") numbered above
        `since`, oldest first, at most `limit`."""
        if kind != "all" and kind not in self._kept:
            raise PodnetError(f"kind: {kind!r} is not one of all, {', '.join(KINDS)}")
        with self._lock:
            chosen = self._kept.values() if kind == "all" else [self._kept[kind]]
            found = {flow["seq"]: flow for kept in chosen for flow in kept if flow["seq"] > since}
        return [found[seq] for seq in sorted(found)][:limit]

    def stats(self) -> dict[str, Any]:
        return {"path": self.path, "lines": self.lines, "unparsed": self.unparsed, "tcp": self.tcp,
                "cpu_seconds": round(self.cpu_seconds, 3)}


def _bind(path: str) -> socket.socket:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise PodnetError(f"mesh access log: {path} exists and is not a socket", "remove it, or give another path")
        os.unlink(path)  # an earlier agent's
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind(path)
        os.chmod(path, 0o666)  # noqa: S103 - HAProxy writes as the sidecar's uid
    except OSError as exc:
        sock.close()
        raise PodnetError(f"mesh access log: cannot listen on {path}: {exc.strerror or exc}") from None
    return sock

"""The agent probes the readiness of its own node's pods and publishes it.

Each pod record with a `readinessProbe` (model/probe.py) whose node is this agent's
is probed from the node's namespace (TCP connect, or HTTP GET answered 200-399) every
`periodSeconds` after `initialDelaySeconds`; services/probes.py turns results into
readiness with the kubelet's thresholds. Only a flip is written
(`readiness/<ns>/<pod>`), so the store sees one write per change, and every node's
service table follows through its watch. A pod with a probe counts as not ready until
its first success (services/planner.py), as in Kubernetes; its record is deleted when
the pod goes.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.agent.service_thread import ChangeWait, ServiceThread
from podnet.errors import PodnetError
from podnet.model.policy import PodRecord, decode_pod
from podnet.model.probe import ReadinessProbe
from podnet.model.service import Readiness
from podnet.services.endpoints import judged_readiness
from podnet.services.probes import ProbeState
from podnet.store import Store

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler

log = logging.getLogger("podnet.agent.readiness")

TICK = 0.1  # the shortest sleep of the loop (it sleeps until the next probe or refresh is due)
REFRESH_SECONDS = 1.0  # the longest sleep: a change to the pods is read within it
RESYNC_SECONDS = 30.0  # the pod list is read again even when nothing under it changed
MAX_BACKOFF = 10.0  # between reads while the store fails
WORKERS = 16


def run_probe(probe: ReadinessProbe, ip: str, port: int) -> tuple[bool, str]:
    """One probe of one address: (ok, why not)."""
    try:
        if probe.kind == "tcp":
            with socket.create_connection((ip, port), timeout=probe.timeout):
                return True, ""
        conn = http.client.HTTPConnection(ip, port, timeout=probe.timeout)
        try:
            conn.request("GET", probe.path, headers={"User-Agent": "podnet-probe"})
            status = conn.getresponse().status
        finally:
            conn.close()
        return (200 <= status < 400), f"HTTP {status}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{type(exc).__name__}: {exc}"


class _Tracked:
    def __init__(self, pod: PodRecord, started: float, published: bool) -> None:
        assert pod.readiness is not None
        self.pod = pod
        self.state = ProbeState(pod.readiness)
        self.state.ready = published  # a restarted agent goes on from what it published
        self.next_at = started + pod.readiness.initial_delay
        self.running = False


class ReadinessService:
    def __init__(self, agent: AgentContext) -> None:
        self.agent = agent
        options = getattr(agent, "node_options", None)
        self.node: str | None = options.node if options is not None else None
        self._loop = ServiceThread("podnet-readiness", self._run, join_timeout=10)
        self._lock = threading.Lock()
        self._tracked: dict[str, _Tracked] = {}
        self._parsed: dict[str, tuple[int, PodRecord | None]] = {}  # pod key -> (revision, record)
        self._pool: ThreadPoolExecutor | None = None

    # -- AgentService

    def ops(self) -> dict[str, OpHandler]:
        return {"readiness.status": lambda _message, _fds: self.status()}

    def start(self) -> None:
        if self.node is not None:
            self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="podnet-probe")
            self._loop.start()

    def request_stop(self) -> None:
        self._loop.signal_stop()

    def stop(self) -> None:
        self._loop.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def status(self) -> dict[str, Any]:
        with self._lock:
            pods = [{"pod": ref, "ready": t.state.ready, "last_error": t.state.last_error}
                    for ref, t in sorted(self._tracked.items())]
        return {"node": self.node, "pods": pods}

    # -- the loop

    def _store(self) -> Store:
        return self.agent.service.store(self.agent.store_path)

    def _refresh(self, store: Store) -> int:
        """Track this node's pods with a probe; forget (and unpublish) the others. The
        revision the pods were read at."""
        mine: dict[str, PodRecord] = {}
        parsed: dict[str, tuple[int, PodRecord | None]] = {}
        pods, revision = store.snapshot(keys.PODS)
        for entry in pods:
            known = self._parsed.get(entry.key)
            if known is not None and known[0] == entry.revision:  # unchanged since the last read:
                pod = known[1]  # not parsed again (every agent reads every pod each second)
            else:
                try:
                    pod = decode_pod(entry.value, entry.key)
                except PodnetError as exc:
                    log.warning("readiness: %s", exc.msg)
                    pod = None
            parsed[entry.key] = (entry.revision, pod)
            if pod is not None and pod.node == self.node and pod.readiness is not None and pod.ips:
                mine[pod.ref] = pod
        self._parsed = parsed
        published = judged_readiness(store.list(keys.READINESS))
        now = time.monotonic()
        with self._lock:
            for ref in [r for r in self._tracked if r not in mine]:
                del self._tracked[ref]
                namespace, _, name = ref.partition("/")
                store.delete(keys.readiness(namespace, name))
            for ref, pod in mine.items():
                tracked = self._tracked.get(ref)
                if tracked is None or tracked.pod.readiness != pod.readiness or tracked.pod.ips != pod.ips:
                    self._tracked[ref] = _Tracked(pod, now, published.get(ref, False) and tracked is None)
        return revision

    def _until_due(self, next_refresh: float) -> float:
        """How long the loop may sleep: until the next probe or refresh is due, at least
        TICK (a fixed TICK woke every idle agent ten times a second)."""
        with self._lock:
            waiting = [t.next_at for t in self._tracked.values() if not t.running]
            running = any(t.running for t in self._tracked.values())
        wake = min([next_refresh, *waiting])
        if running:  # a probe that finishes sets its next time: look again soon
            wake = min(wake, time.monotonic() + TICK)
        return max(TICK, wake - time.monotonic())

    def _probe(self, tracked: _Tracked) -> None:
        pod, probe = tracked.pod, tracked.pod.readiness
        assert probe is not None
        port = probe.resolve_port(pod.named_ports())
        ok, why = (False, f"the pod has no port named {probe.port!r}") if port is None else \
            run_probe(probe, pod.ips[0], port)
        with self._lock:
            tracked.running = False
            if self._tracked.get(pod.ref) is not tracked:
                return  # the pod went or changed meanwhile
            flipped = tracked.state.record(ok, why)
            ready = tracked.state.ready
        if flipped:
            log.info("readiness: %s is %s%s", pod.ref, "ready" if ready else "not ready", "" if ok else f" ({why})")
            try:
                self._store().put(keys.readiness(pod.namespace, pod.name),
                                  Readiness(ready, self.node or "", time.time(), why).encode())
            except PodnetError as exc:  # the next flip, or the next refresh, tries again
                log.warning("readiness: cannot publish %s: %s", pod.ref, exc.msg)

    def _run(self) -> None:
        stopping = self._loop.stopping
        changes = ChangeWait(keys.PODS)  # (readiness/ is ours to write; a new pod reads what it holds)
        refreshed, every, stale = float("-inf"), REFRESH_SECONDS, True
        while not stopping.is_set():
            now = time.monotonic()
            if (stale and now - refreshed >= every) or now - refreshed >= RESYNC_SECONDS:
                try:
                    store = self._store()
                    changes.mark(self._refresh(store))  # (every agent lists every pod at each change)
                    stale, every = False, REFRESH_SECONDS
                except PodnetError as exc:  # an unreachable store: back off, it has callers enough
                    log.warning("readiness: cannot read pods: %s", exc.msg)
                    every = min(every * 2, MAX_BACKOFF)
                refreshed = now
            with self._lock:
                due = [t for t in self._tracked.values() if not t.running and t.next_at <= now]
                for tracked in due:
                    assert tracked.pod.readiness is not None
                    tracked.running = True
                    tracked.next_at = now + tracked.pod.readiness.period
            for tracked in due:
                assert self._pool is not None
                self._pool.submit(self._probe, tracked)
            # until a probe or the next read is due (a change, or the resync), a second at most
            wait = min(self._until_due(refreshed + (every if stale else RESYNC_SECONDS)), REFRESH_SECONDS)
            if stale:
                stopping.wait(wait)
                continue
            try:
                stale = changes.wait(self._store(), wait, stopping)
            except PodnetError:
                stale = True

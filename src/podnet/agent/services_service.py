"""The agent keeps its node's service load balancer (table `inet podnet-svc`,
services/render.py) in step with the store: Services, EndpointSlices and pods, at
start, on every change (list-then-watch of the whole store, filtered to those
prefixes), every RESYNC_SECONDS (repairing a table changed by hand), and on demand
(`services.sync`, which `podnet apply` need not wait for).

A change is applied as the difference between the last plan and the new one, in one
nft transaction: one endpoint's change touches only its service's chains and map
elements. When a UDP backend goes away its conntrack entries go too, or clients
would keep sending to the dead address (the classic kube-proxy bug). Stored objects
are parsed again (validated) and cached by revision; a malformed one is left out
and reported in `services.status`, the others still apply.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.agent.service_thread import ServiceThread, list_then_watch
from podnet.errors import PodnetError
from podnet.kernel.nft import Nft, NftPort
from podnet.model.cluster import NodeLease
from podnet.model.policy import PodRecord
from podnet.model.service import Readiness
from podnet.services import render
from podnet.services.endpoints import readiness
from podnet.services.kinds import read_service, read_slice
from podnet.services.plan import NodePlan
from podnet.services.planner import node_plan
from podnet.store import Store

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler

log = logging.getLogger("podnet.agent.services")

RESYNC_SECONDS = 30.0
WATCH_TIMEOUT = 1.0
MAX_BACKOFF = 10.0
SYNC_OP = "services.sync"
GENERATION_SET = "generation"
WATCHED = (keys.SERVICES, keys.ENDPOINT_SLICES, keys.PODS, keys.READINESS)  # and this node's own lease


class ServicesService:
    def __init__(self, agent: AgentContext, nft: NftPort | None = None,
                 resync_seconds: float = RESYNC_SECONDS) -> None:
        self.agent = agent
        options = getattr(agent, "node_options", None)
        self.node: str | None = options.node if options is not None else None
        self.cluster_cidr: str = options.cluster_cidr if options is not None else ""
        self.nft = nft or Nft()
        self.resync_seconds = resync_seconds
        self._lock = threading.Lock()
        self._loop = ServiceThread("podnet-services", self._run, join_timeout=WATCH_TIMEOUT + 10)
        self._parsed: dict[str, tuple[int, Any]] = {}  # key -> (revision, parsed object or error)
        self.applied: NodePlan | None = None
        self._generation: int | None = None  # the stamp of `applied` in the kernel
        self.problems: list[str] = []
        self.stats: dict[str, Any] = {}

    # -- AgentService

    def ops(self) -> dict[str, OpHandler]:
        return {"services.status": lambda _message, _fds: self.status(),
                SYNC_OP: lambda _message, _fds: self.converge(full=False)}

    def start(self) -> None:
        if self.node is not None:
            self._loop.start()

    def request_stop(self) -> None:
        self._loop.signal_stop()

    def stop(self) -> None:
        self._loop.stop()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._status_unlocked()

    # -- converging

    def _store(self) -> Store:
        return self.agent.service.store(self.agent.store_path)

    def _read(self, entries: list, reader: Any) -> list:
        """Entries parsed (validated) once per revision; a bad one is left out and named."""
        out = []
        for entry in entries:
            cached = self._parsed.get(entry.key)
            if cached is None or cached[0] != entry.revision:
                try:
                    cached = (entry.revision, reader(entry.json(), entry.key))
                except (PodnetError, ValueError) as exc:
                    cached = (entry.revision, PodnetError(f"{entry.key}: {getattr(exc, 'msg', exc)}"))
                self._parsed[entry.key] = cached
            if isinstance(cached[1], PodnetError):
                self.problems.append(cached[1].msg)
            else:
                out.append(cached[1])
        return out

    def _plan(self, store: Store) -> tuple[NodePlan, int]:
        assert self.node is not None
        self.problems = []
        snapshot: dict[str, list] = {}
        revision = 0
        for prefix in (keys.SERVICES, keys.ENDPOINT_SLICES, keys.PODS, keys.READINESS):
            snapshot[prefix], rev = store.snapshot(prefix)
            revision = max(revision, rev)
        live = {e.key for entries in snapshot.values() for e in entries}
        for key in [k for k in self._parsed if k not in live]:
            del self._parsed[key]
        services = self._read(snapshot[keys.SERVICES], read_service)
        slices = self._read(snapshot[keys.ENDPOINT_SLICES], read_slice)
        pods = self._read(snapshot[keys.PODS], PodRecord.from_json)
        judged = self._read(snapshot[keys.READINESS], lambda raw, key: (keys.object_ref(keys.READINESS, key),
                                                                        Readiness.from_json(raw, key).ready))
        ready = readiness(pods, dict(judged))
        entry = store.get(keys.node(self.node))
        node_ips = (NodeLease.from_json(entry.json(), entry.key).underlay_ip,) if entry else ()
        cidrs = (self.cluster_cidr,) if self.cluster_cidr else ()
        return node_plan(services, pods, slices, ready, self.node, node_ips, cidrs), revision

    def converge(self, full: bool = False) -> dict[str, Any]:
        """Bring the kernel's table to the store's services; never raises for what the
        store or nft holds (the table in force stays, the error shows in status)."""
        with self._lock:
            try:
                return self._converge(full)
            except PodnetError as exc:
                self.problems.append(f"keeping the table in force: {exc.msg}")
                log.warning("services: %s", exc.msg)
            except Exception as exc:  # noqa: BLE001 - a bug must not stop later updates
                self._parsed.clear()
                self.problems.append(f"internal error: {exc!r}")
                log.exception("services: internal error")
        return self.status()

    def _converge(self, full: bool) -> dict[str, Any]:
        started = time.monotonic()
        plan, revision = self._plan(self._store())
        old = self.applied
        if old is not None and plan == old and not full:
            self.stats["revision"] = revision
            return self._status_unlocked()
        generation = plan_generation(plan)
        if old is None and not full and self._generation_in_kernel() == generation:
            self.applied, self._generation = plan, generation  # a restart: the kernel holds this plan's table
            self.stats = {"revision": revision, "applied": "kept", "ms": 0.0, "udp_flows_flushed_for": []}
            return self._status_unlocked()
        if old is None or full or plan.node_ips != old.node_ips or plan.cluster_cidrs != old.cluster_cidrs:
            script, how = render.render_table(plan), "full"
        else:
            script, how = render.render_update(old, plan), "diff"
        self.nft.apply(script + _stamp(generation))
        self.applied, self._generation = plan, generation
        gone = _udp_backends(old) - _udp_backends(plan) if old is not None else set()
        flushed = _forget_udp_flows(gone)
        self.stats = {"revision": revision, "applied": how, "ms": round((time.monotonic() - started) * 1000, 1),
                      "udp_flows_flushed_for": sorted(f"{ip}:{port}" for ip, port in flushed)}
        if self.problems:
            log.warning("services: %s", "; ".join(self.problems[:5]))
        return self._status_unlocked()

    def _status_unlocked(self) -> dict[str, Any]:
        plan = self.applied
        return {"node": self.node, "table": f"{render.FAMILY} {render.TABLE}" if plan else None,
                "service_ports": len(plan.services) if plan else 0,
                "backends": sum(len(p.backends) for p in plan.services) if plan else 0,
                "problems": list(self.problems), **self.stats}

    def _run(self) -> None:
        assert self.node is not None  # started only on a cluster node
        own_lease = keys.node(self.node)

        def converge(periodic: bool, events: list | None) -> int:
            # other nodes renew their leases every few seconds: no reason to plan again
            if events is not None and not any(e.key.startswith(WATCHED) or e.key == own_lease for e in events):
                return max((e.revision for e in events), default=self.stats.get("revision", 0))
            self.converge(full=periodic and not self._intact())
            return int(self.stats.get("revision", 0))

        list_then_watch(self._loop.stopping, "", lambda: self._store(), converge, self.resync_seconds,
                        WATCH_TIMEOUT, log, MAX_BACKOFF)

    def _generation_in_kernel(self) -> int | None:
        elements = self.nft.set_elements(render.FAMILY, render.TABLE, GENERATION_SET)
        return elements[0] if elements and isinstance(elements[0], int) else None

    def _intact(self) -> bool:
        """The table still holds what this agent applied (not deleted or replaced by
        hand). Reads only the one-element generation set: listing the whole table
        costs 3.6 s and 29 MB of JSON at 10,000 services."""
        return self.applied is None or self._generation_in_kernel() == self._generation


def plan_generation(plan: NodePlan) -> int:
    """A checksum of the plan (and of how it is rendered), stamped into the table with
    every change: an agent restarted on an unchanged store finds its own table and
    leaves it alone instead of rebuilding it (a rebuild drops affinity and counters)."""
    return zlib.crc32(f"{render.FORMAT}\n{plan!r}".encode())


def _stamp(generation: int) -> str:
    name = f"{render.FAMILY} {render.TABLE} {GENERATION_SET}"
    return f"\nadd set {name} {{ type mark; }}\nflush set {name}\nadd element {name} {{ {generation} }}\n"


def _udp_backends(plan: NodePlan | None) -> set[tuple[str, int]]:
    if plan is None:
        return set()
    return {(b.ip, b.port) for p in plan.services if p.protocol == "udp" for b in p.backends}


def _forget_udp_flows(backends: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Delete the conntrack entries of UDP flows DNATed to backends that are gone, so a
    client's next datagram is balanced again instead of following a dead address."""
    done = set()
    for ip, port in sorted(backends):
        result = subprocess.run(["conntrack", "-D", "-p", "udp", "--dst-nat", ip, "--reply-port-src", str(port)],
                                capture_output=True, text=True, check=False)
        if result.returncode in (0, 1):  # 1: no entry matched
            done.add((ip, port))
        else:
            log.warning("services: conntrack -D for %s:%d failed: %s", ip, port, result.stderr.strip())
    return done

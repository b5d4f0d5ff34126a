"""The agent keeps its node's service load balancer (table `inet podnet-svc`,
services/render.py) in step with the store: Services, EndpointSlices, pods and their
readiness, at start, on every change (list-then-watch of the whole store, filtered to
those prefixes), every RESYNC_SECONDS (repairing a table changed by hand), and on
demand (`services.sync`, which `podnet apply` need not wait for).

A change costs what it touches, not the number of services: the watch's events go
into the incremental plan (services/cache.py: only the services whose inputs changed
are planned again), only the ports that changed are rendered (render.render_changes),
and their difference is applied in one nft transaction (kernel/libnft.py: no nft
process per change). A listing (start, periodic pass, `services.sync`, after any
failure or a compacted history) goes through the same cache: only what changed since
is parsed and planned. When a UDP backend goes away its conntrack entries go too, or
clients would keep sending to the dead address (the classic kube-proxy bug). A
malformed stored object is left out and reported in `services.status`, the others
still apply.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.agent.metrics_services import service_counters
from podnet.agent.service_thread import NodeLoopService, ServiceThread, list_then_watch
from podnet.errors import PodnetError
from podnet.kernel.libnft import LibNft
from podnet.kernel.nft import NftPort
from podnet.model.cluster import NodeLease
from podnet.services import render
from podnet.services.applied import AppliedTable
from podnet.services.cache import PlanCache
from podnet.services.plan import NodePlan
from podnet.store import Store
from podnet.store.base import PUT, Event

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler

log = logging.getLogger("podnet.agent.services")

RESYNC_SECONDS = 30.0
WATCH_TIMEOUT = 1.0
MAX_BACKOFF = 10.0
SYNC_OP = "services.sync"
GENERATION_SET = "generation"


class ServicesService(NodeLoopService):
    def __init__(self, agent: AgentContext, nft: NftPort | None = None,
                 resync_seconds: float = RESYNC_SECONDS) -> None:
        self.agent = agent
        options = getattr(agent, "node_options", None)
        self.node: str | None = options.node if options is not None else None
        self.cluster_cidr: str = options.cluster_cidr if options is not None else ""
        self.nft = nft or LibNft()
        self.resync_seconds = resync_seconds
        self._lock = threading.Lock()
        self._loop = ServiceThread("podnet-services", self._run, join_timeout=WATCH_TIMEOUT + 10)
        self.cache = self._new_cache()
        self.table = AppliedTable()  # what the kernel holds, as this agent applied it
        self._pending: set[str] = set()  # port ids planned since the last applied change
        self._relist = True  # read a listing at the next pass, whatever the watch saw
        self.problems: list[str] = []
        self.stats: dict[str, Any] = {}

    def _new_cache(self) -> PlanCache:
        """Pods of a node whose lease is gone back nothing (services/watched.py)."""
        return PlanCache(self.node or "", (self.cluster_cidr,) if self.cluster_cidr else (), track_nodes=True)

    # -- AgentService

    def ops(self) -> dict[str, OpHandler]:
        return {"services.status": lambda _message, _fds: self.status(),
                SYNC_OP: lambda _message, _fds: self.converge(full=False),
                "services.counters": lambda _message, _fds: self.counters()}

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._status_unlocked()

    def counters(self) -> dict[str, Any]:
        """Ready endpoints and NAT hits per service (agent/metrics_services.py); nft is
        read outside the lock, so a scrape never holds up a converge pass."""
        with self._lock:
            ports = list((self.table.ports or {}).values())
        return service_counters(self.node, ports, lambda: self.nft.list_counters_json(render.FAMILY, render.TABLE))

    @property
    def applied(self) -> NodePlan | None:
        """The plan the kernel's table was rendered from (None before the first pass)."""
        return self.table.plan()

    # -- converging

    def _store(self) -> Store:
        return self.agent.service.store(self.agent.store_path)

    def _read(self, events: list[Event] | None) -> int:
        """Feed the cache: the watch's events, or a listing of every watched prefix (and
        this node's lease: NodePorts answer on its address). The revision it reflects:
        the oldest listing's, so a watch from there misses nothing (the cache skips what
        it already holds)."""
        assert self.node is not None
        own_lease = keys.node(self.node)
        if events is not None and not self._relist:
            self.cache.feed(events)
            for event in events:
                if event.key == own_lease:
                    self._node_ips(event.value if event.kind == PUT else None)
            return max((e.revision for e in events), default=int(self.stats.get("revision", 0)))
        store = self._store()
        revision = self.cache.relist(store)
        entry = store.get(own_lease)
        self._node_ips(entry.value if entry is not None else None)
        self._relist = False
        return revision

    def _node_ips(self, lease: str | None) -> None:
        if lease is None:
            self.cache.node_ips = ()
            return
        try:
            self.cache.node_ips = (NodeLease.from_json(json.loads(lease), keys.node(self.node or "")).underlay_ip,)
        except ValueError as exc:
            raise PodnetError(f"this node's lease: {exc}") from None

    def converge(self, full: bool = False, events: list[Event] | None = None) -> dict[str, Any]:
        """Bring the kernel's table to the store's services (`events`: the changes seen
        since the last pass; None: list the store); never raises for what the store or
        nft holds (the table in force stays, the error shows in status)."""
        with self._lock:
            try:
                return self._converge(full, events)
            except PodnetError as exc:
                self._relist = True
                self.problems.append(f"keeping the table in force: {exc.msg}")
                log.warning("services: %s", exc.msg)
            except Exception as exc:  # noqa: BLE001 - a bug must not stop later updates
                self.cache = self._new_cache()  # built again from a listing
                self._pending = set()
                self.table.generation = None  # the next pass renders the whole table
                self._relist = True
                self.problems.append(f"internal error: {exc!r}")
                log.exception("services: internal error")
        return self.status()

    def _converge(self, full: bool, events: list[Event] | None) -> dict[str, Any]:
        started = time.monotonic()
        self.problems = self.cache.problems()
        revision = self._read(events)
        self._pending |= self.cache.refresh()
        self.problems = self.cache.problems()
        table, cache = self.table, self.cache
        if full or table.generation is None or table.settings_differ(cache.node_ips, cache.cluster_cidrs):
            plan, generation = cache.plan(), cache.generation()
            if table.ports is None and not full and self._generation_in_kernel() == generation:
                table.replace(plan, generation, render.shared_counts(plan.services))  # a restart: this plan's table
                self._pending.clear()
                self.stats = {"revision": revision, "applied": "kept", "ms": 0.0, "udp_flows_flushed_for": []}
                return self._status_unlocked()
            script, shared = render.render_full(plan)
            self.nft.apply(script + _stamp(generation))
            gone, how = table.replace(plan, generation, shared), "full"
        else:
            script, change = render.render_changes(table.ports or {}, cache.ports, self._pending, cache.cluster_cidrs,
                                                   table.shared)
            if not script:
                self._pending.clear()
                self.stats["revision"] = revision
                return self._status_unlocked()
            generation = cache.generation()
            self.nft.apply(script + _stamp(generation))
            gone, how = table.update(cache.ports, self._pending, generation, change), "diff"
        self._pending.clear()
        flushed = _forget_udp_flows(gone)
        self.stats = {"revision": revision, "applied": how, "ms": round((time.monotonic() - started) * 1000, 1),
                      "udp_flows_flushed_for": sorted(f"{ip}:{port}" for ip, port in flushed)}
        if self.problems:
            log.warning("services: %s", "; ".join(self.problems[:5]))
        return self._status_unlocked()

    def _status_unlocked(self) -> dict[str, Any]:
        applied = self.table.ports is not None
        return {"node": self.node, "table": f"{render.FAMILY} {render.TABLE}" if applied else None,
                "service_ports": len(self.table.ports or ()), "backends": self.table.backends if applied else 0,
                "problems": list(self.problems), **self.stats}

    def _run(self) -> None:
        assert self.node is not None  # started only on a cluster node
        def converge(periodic: bool, events: list | None) -> int:
            # lease renewals reach the cache too (a node that comes or goes changes its
            # pods' readiness), and cost a look-up when nothing changed
            if events is not None and not any(e.key.startswith(self.cache.prefixes) for e in events):
                return max((e.revision for e in events), default=self.stats.get("revision", 0))
            self.converge(full=periodic and not self._intact(), events=events)
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
        return self.table.generation is None or self._generation_in_kernel() == self.table.generation


def _stamp(generation: int) -> str:
    name = f"{render.FAMILY} {render.TABLE} {GENERATION_SET}"
    return f"\nadd set {name} {{ type mark; }}\nflush set {name}\nadd element {name} {{ {generation} }}\n"


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

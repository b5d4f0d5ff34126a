"""One node's plan kept up to date change by change (pure): what planner.node_plan gives
from scratch, without planning 10,000 services again for one endpoint.

The objects and what each change touches are services/watched.py's; `refresh` plans
again only the services touched since the last refresh. A service port that comes out
equal to the last one stays the very same object, so comparing two plans
(render.render_changes) costs one identity test per unchanged port, and the plan's
checksum (`generation`) is kept as a sum of per-port digests: a change costs its own
ports only.
"""

from __future__ import annotations

from collections.abc import Iterable

from podnet.services.generation import generation, port_digest
from podnet.services.objects import Service
from podnet.services.plan import NodePlan, ServicePort
from podnet.services.planner import service_ports
from podnet.services.watched import WatchedObjects


class PlanCache(WatchedObjects):
    """The watched objects and the service ports of every service."""

    def __init__(self, node: str, cluster_cidrs: Iterable[str] = (), track_nodes: bool = False) -> None:
        super().__init__(track_nodes)
        self.node = node
        self.cluster_cidrs = tuple(cluster_cidrs)
        self.node_ips: tuple[str, ...] = ()
        self.ports: dict[str, ServicePort] = {}  # id -> port: the plan's services
        self._digests: dict[str, int] = {}  # id -> port_digest(ports[id])
        self._digest_sum = 0
        self._service_ports: dict[str, tuple[str, ...]] = {}  # service key -> its port ids

    # -- planning

    def refresh(self) -> set[str]:
        """Plan the dirty services again; the ids of the ports that were added, removed or
        changed (an equal port keeps its object)."""
        changed: set[str] = set()
        dirty, _pods = self.take_dirty()
        for key in dirty:
            old_ids = self._service_ports.pop(key, ())
            new = self._plan_service(self.services.get(key))
            for port in new:
                held = self.ports.get(port.id)
                if held is not None and port.id in old_ids and held == port:
                    continue  # the same port: keep the object the last plan holds
                self._set_port(port.id, port)
                changed.add(port.id)
            new_ids = tuple(p.id for p in new)
            for gone in set(old_ids) - set(new_ids):
                self._set_port(gone, None)
                changed.add(gone)
            if new_ids:
                self._service_ports[key] = new_ids
        return changed

    def _plan_service(self, svc: Service | None) -> list[ServicePort]:
        if svc is None:
            return []
        pods, slices, ready = self.inputs(svc)
        return service_ports(svc, pods, slices, ready, self.node)

    def _set_port(self, port_id: str, port: ServicePort | None) -> None:
        self._digest_sum -= self._digests.pop(port_id, 0)
        if port is None:
            self.ports.pop(port_id, None)
            return
        self.ports[port_id] = port
        digest = self._digests[port_id] = port_digest(port)
        self._digest_sum += digest

    def plan(self) -> NodePlan:
        """The whole plan, as node_plan would give it from the same objects."""
        ports = sorted(self.ports.values(), key=lambda p: p.id)
        return NodePlan(self.node_ips, self.cluster_cidrs, tuple(ports))

    def generation(self) -> int:
        """plan.generation() of `plan()`, from the digests kept per port."""
        return generation(self.node_ips, self.cluster_cidrs, self._digest_sum)

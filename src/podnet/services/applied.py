"""What one agent put into its node's service table (pure): the service ports by id as
the kernel holds them, the node settings they were rendered with, the generation
stamped with them, how many ports hold each shared set element (render_diff.py), and
the counts `services.status` shows, all kept up to date port by port so that an
endpoint change never walks 10,000 services.

It also answers which UDP backends left the table (every port that used `ip:port` is
gone): their conntrack entries must go too (agent/services_service.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from podnet.services.plan import NodePlan, ServicePort

Address = tuple[str, int]


class AppliedTable:
    def __init__(self) -> None:
        self.ports: dict[str, ServicePort] | None = None  # None: nothing applied yet
        self.node_ips: tuple[str, ...] = ()
        self.cluster_cidrs: tuple[str, ...] = ()
        self.generation: int | None = None
        self.backends = 0
        self.shared: Counter[tuple[str, str]] = Counter()
        self._udp: Counter[Address] = Counter()

    def settings_differ(self, node_ips: tuple[str, ...], cluster_cidrs: tuple[str, ...]) -> bool:
        """True when nothing is applied yet or the node settings changed (a full render)."""
        return self.ports is None or (self.node_ips, self.cluster_cidrs) != (node_ips, cluster_cidrs)

    def replace(self, plan: NodePlan, generation: int, shared: Counter[tuple[str, str]]) -> set[Address]:
        """The whole table was rendered from `plan` (render.render_full gave `shared`);
        the UDP backends that left it."""
        before = set(self._udp)
        self.shared = Counter(shared)
        self.ports = {p.id: p for p in plan.services}
        self.node_ips, self.cluster_cidrs, self.generation = plan.node_ips, plan.cluster_cidrs, generation
        self.backends = sum(len(p.backends) for p in plan.services)
        self._udp = Counter(a for p in plan.services for a in _udp(p))
        return before - set(self._udp)

    def update(self, ports: Mapping[str, ServicePort], ids: Iterable[str], generation: int,
               shared: Counter[tuple[str, str]]) -> set[Address]:
        """The ports `ids` now hold what `ports` has for them (absent: deleted);
        `shared`: the change render.render_changes gave."""
        assert self.ports is not None
        for key, n in shared.items():
            if self.shared[key] + n > 0:
                self.shared[key] += n
            else:
                del self.shared[key]  # no port holds it any more
        gone: set[Address] = set()
        for i in ids:
            old, new = self.ports.pop(i, None), ports.get(i)
            if old is not None:
                self.backends -= len(old.backends)
                for address in _udp(old):
                    self._udp[address] -= 1
                    if not self._udp[address]:
                        del self._udp[address]
                        gone.add(address)
            if new is not None:
                self.ports[i] = new
                self.backends += len(new.backends)
                self._udp.update(_udp(new))
        self.generation = generation
        return gone - set(self._udp)

    def plan(self) -> NodePlan | None:
        """The applied plan as one value (sorted by id), or None."""
        if self.ports is None:
            return None
        return NodePlan(self.node_ips, self.cluster_cidrs, tuple(sorted(self.ports.values(), key=lambda p: p.id)))


def _udp(port: ServicePort) -> list[Address]:
    return [(b.ip, b.port) for b in port.backends] if port.protocol == "udp" else []

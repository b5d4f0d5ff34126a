"""What cluster DNS answers, computed from the services, pods and endpoints (pure).

The names of Kubernetes' DNS specification (cluster-dns spec v1.1.0), for a cluster
domain `D` (`cluster.local` by default):
- `<svc>.<ns>.svc.D`: A/AAAA of the ClusterIPs (both of a dual-stack service); for a
  headless service, of every *ready* endpoint (pods selected, or EndpointSlice
  addresses) of the service's IP families (a SingleStack IPv4 one: its pods' IPv4
  addresses only, as the EndpointSlice controller makes slices per family);
- `<ep>.<svc>.<ns>.svc.D` for each ready endpoint of a headless service, `<ep>` being
  the slice endpoint's hostname or the address with dashes (`10-244-1-5`), as CoreDNS;
- `_<port>._<proto>.<svc>.<ns>.svc.D`: SRV for every *named* port (target the
  service's name and port, or each endpoint's name and port for a headless service,
  which has no proxy in between, as CoreDNS does);
- `<a-b-c-d>.<ns>.pod.D`: A of a pod of that namespace that holds the address (CoreDNS's
  `pods verified`: no answer for an address no pod has);
- PTR of ClusterIPs (-> the service's name) and of headless endpoints' addresses;
- in a clusterset, `<name>.<ns>.svc.clusterset.local`: A of the ClusterSetIP of the
  import `<ns>/<name>` (the ClusterIP of its derived service; a zone of its own).
Names that lead to one of these (`svc.D`, `<ns>.svc.D`), and a headless service without
a ready endpoint, exist without data (NODATA);
anything else under D, or under the reverse zones of the service and pod CIDRs, is
NXDOMAIN and never leaves the server.

Each service and each pod contributes a fragment (its records); the zone keeps them by
owner, and `ZoneCache` sets again only the fragments of what a change touched
(services/watched.py), so one changed endpoint costs its own records, not the
cluster's (at 10,000 services a whole rebuild takes ~0.2 s, and the agent's interpreter
is shared with the service table's path, whose target is 50 ms). Values follow dns/answer.py's contract: addresses, PTR targets,
and SRV as "priority weight port target." strings.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

from podnet.clusterset.exports import CLUSTERSET_DOMAIN, SERVICE_NAME_LABEL
from podnet.dns.records import IPNetwork, fold, reverse_address, valid_name
from podnet.model.policy import PodRecord
from podnet.services.endpoints import Backing, backing
from podnet.services.objects import EndpointSlice, Service, ServicePortSpec
from podnet.services.watched import WatchedObjects

ANY_PORT = ServicePortSpec(port=0, target_port=0)  # a headless service without ports still has endpoints
SRV_PRIORITY = 0
EXISTS = ""  # a record type no query asks for: the name exists
Fragment = tuple[tuple[str, str, str], ...]  # (name, type, value), names folded


def dashed(ip: str) -> str:
    """An address as one DNS label: 10.244.1.5 -> 10-244-1-5, fd00::5 -> fd00--5."""
    return ip.replace(".", "-").replace(":", "-")


def _family(ip: str) -> str:
    return "AAAA" if ":" in ip else "A"


class _Fragment:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, str]] = []

    def add(self, name: str, rtype: str, value: str) -> None:
        name = fold(name)
        if valid_name(name) and (name, rtype, value) not in self.records:
            self.records.append((name, rtype, value))

    def address(self, name: str, ip: str) -> None:
        self.add(name, _family(ip), ip)

    def pointer(self, ip: str, name: str) -> None:
        try:
            self.add(ipaddress.ip_address(ip).reverse_pointer, "PTR", name)
        except ValueError:
            return  # checked when stored; never a reason to fail a zone


def service_fragment(domain: str, svc: Service, pods: Iterable[PodRecord], slices: Iterable[EndpointSlice],
                     ready: Mapping[str, bool]) -> Fragment:
    """The records of one service; `pods` may be any superset of its namespace's pods,
    `ready` as backing() takes it (pod "ns/name" -> ready; absent: ready)."""
    domain = fold(domain)
    out = _Fragment()
    base = f"{svc.name}.{svc.namespace}.svc.{domain}"
    out.add(base, EXISTS, "")  # a headless service with no ready endpoint: NODATA, not NXDOMAIN
    if svc.headless:
        _headless(out, svc, base, list(pods), list(slices), ready)
    elif svc.virtual_ips:
        for ip in svc.virtual_ips:
            out.address(base, ip)
            out.pointer(ip, base)
        for spec in svc.ports:
            if spec.name:
                out.add(f"_{spec.name}._{spec.protocol.lower()}.{base}", "SRV",
                        f"{SRV_PRIORITY} 100 {spec.port} {base}.")
    return tuple(out.records)


def clusterset_fragment(svc: Service) -> Fragment:
    """`<name>.<ns>.svc.clusterset.local` of a derived service (clusterset/exports.py):
    the ClusterSetIP of the import it serves; nothing for any other service."""
    name = svc.labels.get(SERVICE_NAME_LABEL)
    if not name or not svc.cluster_ip or svc.headless:
        return ()
    out = _Fragment()
    base = f"{fold(name)}.{svc.namespace}.svc.{CLUSTERSET_DOMAIN}"
    out.address(base, svc.cluster_ip)
    return tuple(out.records)


def pod_fragment(domain: str, pod: PodRecord) -> Fragment:
    out = _Fragment()
    for ip in pod.ips:
        out.address(f"{dashed(ip)}.{pod.namespace}.pod.{fold(domain)}", ip)
    return tuple(out.records)


def _headless(out: _Fragment, svc: Service, base: str, pods: list[PodRecord], slices: list[EndpointSlice],
              ready: Mapping[str, bool]) -> None:
    """A headless service answers with its ready endpoints, each also under its own name."""
    hostnames = {e.address: e.hostname for piece in slices if piece.namespace == svc.namespace
                 and piece.service == svc.name for e in piece.endpoints if e.hostname}
    families = {6 if f == "IPv6" else 4 for f in svc.ip_families}  # none given (stored before): every family
    for spec in svc.ports or (ANY_PORT,):
        endpoints: list[Backing] = [b for b in backing(svc, spec, pods, slices, ready)
                                    if b.ready and (not families or (6 if ":" in b.ip else 4) in families)]
        weight = max(1, 100 // max(1, len(endpoints)))
        for endpoint in endpoints:
            own = f"{hostnames.get(endpoint.ip) or dashed(endpoint.ip)}.{base}"
            out.address(base, endpoint.ip)
            out.address(own, endpoint.ip)
            out.pointer(endpoint.ip, own)
            if spec.name:
                out.add(f"_{spec.name}._{spec.protocol.lower()}.{base}", "SRV",
                        f"{SRV_PRIORITY} {weight} {endpoint.port} {own}.")  # no proxy: the endpoint's own port


class ClusterZone:
    """One cluster's names, kept as fragments by owner (a service's or a pod's key) and
    changed in place; `lookup` and `is_local` follow dns/answer.py's contract and may
    run in the server's thread while the watch thread sets fragments."""

    def __init__(self, domain: str, reverse_nets: Iterable[str] = ()) -> None:
        self.domain = fold(domain)
        self.reverse_nets: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in reverse_nets)
        self._owned: dict[str, Fragment] = {}
        self._records: dict[str, dict[str, Counter[str]]] = {}
        self._ancestors: Counter[str] = Counter({self.domain: 1})  # names on the way: NODATA
        self._lock = threading.Lock()

    def set(self, owner: str, fragment: Fragment | None) -> bool:
        """Replace what `owner` contributes (None or empty: nothing); True if it changed."""
        fragment = fragment or ()
        with self._lock:
            old = self._owned.get(owner, ())
            if old == fragment:
                return False
            for name, rtype, value in old:
                self._remove(name, rtype, value)
            for name, rtype, value in fragment:
                self._add(name, rtype, value)
            if fragment:
                self._owned[owner] = fragment
            else:
                self._owned.pop(owner, None)
            return True

    def _add(self, name: str, rtype: str, value: str) -> None:
        self._records.setdefault(name, defaultdict(Counter))[rtype][value] += 1
        for parent in self._parents(name):
            self._ancestors[parent] += 1

    def _remove(self, name: str, rtype: str, value: str) -> None:
        types = self._records[name]
        types[rtype][value] -= 1
        if types[rtype][value] <= 0:
            del types[rtype][value]
            if not types[rtype]:
                del types[rtype]
            if not types:
                del self._records[name]
        for parent in self._parents(name):
            self._ancestors[parent] -= 1
            if self._ancestors[parent] <= 0:
                del self._ancestors[parent]

    def _parents(self, name: str) -> list[str]:
        out, suffix = [], "." + self.domain
        while name.endswith(suffix):
            name = name.split(".", 1)[1]
            if name != self.domain:
                out.append(name)
        return out

    def lookup(self, qname: str, qtype: str) -> list[str] | None:
        name = fold(qname)
        with self._lock:
            types = self._records.get(name)
            if types is None:
                return [] if name in self._ancestors else None
            if qtype == "ANY":
                return [*types.get("A", ()), *types.get("AAAA", ())]
            return list(types.get(qtype, ()))

    def is_local(self, qname: str) -> bool:
        name = fold(qname)
        if name == self.domain or name.endswith("." + self.domain):
            return True
        address = reverse_address(name)
        return address is not None and any(address in net for net in self.reverse_nets)

    def names(self) -> int:
        with self._lock:
            return len(self._records)

    def records(self) -> dict[str, dict[str, list[str]]]:
        """Every name, type and value (sorted): what two zones are compared by."""
        with self._lock:
            return {name: {t: sorted(values) for t, values in types.items()} for name, types in self._records.items()}


def build_cluster_zone(domain: str, services: Iterable[Service], pods: Iterable[PodRecord],
                       slices: Iterable[EndpointSlice], ready: Mapping[str, bool],
                       reverse_nets: Iterable[str] = ()) -> ClusterZone:
    """The whole zone at once (tests, and what the incremental one must equal)."""
    zone = ClusterZone(domain, reverse_nets)
    pods, slices = list(pods), list(slices)
    by_namespace: dict[str, list[PodRecord]] = defaultdict(list)
    for pod in pods:
        by_namespace[pod.namespace].append(pod)
        zone.set(f"pod {pod.namespace}/{pod.name}", pod_fragment(domain, pod))
    for svc in services:
        zone.set(f"service {svc.namespace}/{svc.name}",
                 service_fragment(domain, svc, by_namespace.get(svc.namespace, []), slices, ready))
    return zone


class ZoneCache(WatchedObjects):
    """The watched objects and the zone built from them, change by change; pods of a
    node whose lease is gone are not ready (no headless answers point at them)."""

    def __init__(self, domain: str, reverse_nets: Iterable[str] = ()) -> None:
        super().__init__(track_nodes=True)
        self.domain = fold(domain)
        self.zone = ClusterZone(domain, reverse_nets)
        self.clusterset = ClusterZone(CLUSTERSET_DOMAIN)  # the imports of a clusterset, if any

    def refresh(self) -> int:
        """Set again the fragments of what changed; how many differ."""
        services, pods = self.take_dirty()
        changed = 0
        for key in services:
            svc = self.services.get(key)
            fragment: Fragment | None = None
            if svc is not None:
                selected, slices, ready = self.inputs(svc)
                fragment = service_fragment(self.domain, svc, selected, slices, ready)
            changed += self.zone.set(key, fragment)
            changed += self.clusterset.set(key, clusterset_fragment(svc) if svc is not None else None)
        for key in pods:
            pod = self.pods.get(key)
            changed += self.zone.set(key, pod_fragment(self.domain, pod) if pod is not None else None)
        return changed

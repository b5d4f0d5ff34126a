"""What cluster DNS answers, computed from the services, pods and endpoints (pure).

The names of Kubernetes' DNS specification (cluster-dns spec v1.1.0), for a cluster
domain `D` (`cluster.local` by default):
- `<svc>.<ns>.svc.D`: A/AAAA of the ClusterIP; for a headless service, of every
  *ready* endpoint (pods selected, or EndpointSlice addresses);
- `<ep>.<svc>.<ns>.svc.D` for each ready endpoint of a headless service, `<ep>` being
  the slice endpoint's hostname or the address with dashes (`10-244-1-5`), as CoreDNS;
- `_<port>._<proto>.<svc>.<ns>.svc.D`: SRV for every *named* port (target the
  service's name and port, or each endpoint's name and port for a headless service,
  which has no proxy in between, as CoreDNS does);
- `<a-b-c-d>.<ns>.pod.D`: A of a pod of that namespace that holds the address (CoreDNS's
  `pods verified`: no answer for an address no pod has);
- PTR of ClusterIPs (-> the service's name) and of headless endpoints' addresses.
Names that lead to one of these (`svc.D`, `<ns>.svc.D`) exist without data (NODATA);
anything else under D, or under the reverse zones of the service and pod CIDRs, is
NXDOMAIN and never leaves the server.

Values follow dns/answer.py's contract: addresses, PTR targets, and SRV as
"priority weight port target." strings.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from podnet.dns.records import IPNetwork, fold, reverse_address, valid_name
from podnet.model.policy import PodRecord
from podnet.services.endpoints import Backing, backing
from podnet.services.objects import EndpointSlice, Service, ServicePortSpec

ANY_PORT = ServicePortSpec(port=0, target_port=0)  # a headless service without ports still has endpoints
SRV_PRIORITY = 0


def dashed(ip: str) -> str:
    """An address as one DNS label: 10.244.1.5 -> 10-244-1-5, fd00::5 -> fd00--5."""
    return ip.replace(".", "-").replace(":", "-")


def _family(ip: str) -> str:
    return "AAAA" if ":" in ip else "A"


@dataclass(frozen=True)
class ClusterZone:
    """One cluster's names: name -> record type -> values. `lookup` and `is_local`
    follow dns/answer.py's contract."""

    domain: str
    records: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    nonterminals: frozenset[str] = frozenset()
    reverse_nets: tuple[IPNetwork, ...] = ()

    def lookup(self, qname: str, qtype: str) -> list[str] | None:
        name = fold(qname)
        rrsets = self.records.get(name)
        if rrsets is None:
            return [] if name in self.nonterminals else None
        if qtype == "ANY":
            return [*rrsets.get("A", ()), *rrsets.get("AAAA", ())]
        return list(rrsets.get(qtype, ()))

    def is_local(self, qname: str) -> bool:
        name = fold(qname)
        if name == self.domain or name.endswith("." + self.domain):
            return True
        address = reverse_address(name)
        return address is not None and any(address in net for net in self.reverse_nets)

    def names(self) -> int:
        return len(self.records)


class _Builder:
    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.records: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))

    def add(self, name: str, rtype: str, value: str) -> None:
        name = fold(name)
        if valid_name(name) and value not in self.records[name][rtype]:
            self.records[name][rtype].append(value)

    def address(self, name: str, ip: str) -> None:
        self.add(name, _family(ip), ip)

    def pointer(self, ip: str, name: str) -> None:
        self.add(ipaddress.ip_address(ip).reverse_pointer, "PTR", name)

    def zone(self, reverse_nets: tuple[IPNetwork, ...]) -> ClusterZone:
        suffix = "." + self.domain
        nonterminals = {self.domain}
        for name in self.records:
            while name.endswith(suffix):
                name = name.split(".", 1)[1]
                nonterminals.add(name)
        records = {name: {t: tuple(v) for t, v in types.items()} for name, types in self.records.items()}
        return ClusterZone(self.domain, records, frozenset(nonterminals - set(records)), reverse_nets)


def build_cluster_zone(domain: str, services: Iterable[Service], pods: Iterable[PodRecord],
                       slices: Iterable[EndpointSlice], ready: Mapping[str, bool],
                       reverse_nets: Iterable[str] = ()) -> ClusterZone:
    """The zone of `domain` from the cluster's objects; `ready` as backing() takes it
    (pod "ns/name" -> ready; absent: ready)."""
    domain = fold(domain)
    out = _Builder(domain)
    pods, slices = list(pods), list(slices)
    by_namespace: dict[str, list[PodRecord]] = defaultdict(list)
    for pod in pods:
        by_namespace[pod.namespace].append(pod)
        for ip in pod.ips:
            out.address(f"{dashed(ip)}.{pod.namespace}.pod.{domain}", ip)
    for svc in services:
        base = f"{svc.name}.{svc.namespace}.svc.{domain}"
        if svc.headless:
            _headless(out, svc, base, by_namespace.get(svc.namespace, []), slices, ready)
        elif svc.cluster_ip:
            out.address(base, svc.cluster_ip)
            out.pointer(svc.cluster_ip, base)
            for spec in svc.ports:
                if spec.name:
                    out.add(f"_{spec.name}._{spec.protocol.lower()}.{base}", "SRV",
                            f"{SRV_PRIORITY} 100 {spec.port} {base}.")
    nets = tuple(ipaddress.ip_network(net, strict=False) for net in reverse_nets)
    return out.zone(nets)


def _headless(out: _Builder, svc: Service, base: str, pods: list[PodRecord], slices: list[EndpointSlice],
              ready: Mapping[str, bool]) -> None:
    """A headless service answers with its ready endpoints, each also under its own name."""
    hostnames = {e.address: e.hostname for piece in slices if piece.namespace == svc.namespace
                 and piece.service == svc.name for e in piece.endpoints if e.hostname}
    for spec in svc.ports or (ANY_PORT,):
        endpoints: list[Backing] = [b for b in backing(svc, spec, pods, slices, ready) if b.ready]
        weight = max(1, 100 // max(1, len(endpoints)))
        for endpoint in endpoints:
            own = f"{hostnames.get(endpoint.ip) or dashed(endpoint.ip)}.{base}"
            out.address(base, endpoint.ip)
            out.address(own, endpoint.ip)
            out.pointer(endpoint.ip, own)
            if spec.name:
                out.add(f"_{spec.name}._{spec.protocol.lower()}.{base}", "SRV",
                        f"{SRV_PRIORITY} {weight} {endpoint.port} {own}.")  # no proxy: the endpoint's own port

"""The service checks of `podnet connectivity test`: every port of every service of
the lab, as the cluster store describes it.

- `service/cluster-ip`: from each node's first pod, the ClusterIP port must be
  answered by one of its ready backends (the lab's echo servers answer with the pod's
  name), or refused at once when it has none (podnet's promise: no timeouts);
- `service/node-port`: from the outside world, each node's NodePort likewise (with
  `externalTrafficPolicy: Local`, only that node's backends, and a node without one
  drops: then the check expects nothing and is skipped);
- `dns/cluster-ip`: from each node's first pod, the cluster DNS service's name asked
  of its own ClusterIP, over UDP and TCP, must give that address (the DNS pods behind
  it are the nodes' agents answering, not echo servers: the checks above skip it).

Split from connectivity.py: this part reads the store (services/ are objects there),
the rest of the test only the lab's state file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from podnet import keys
from podnet.model.policy import PodRecord
from podnet.services.endpoints import backing, judged_readiness, readiness
from podnet.services.kinds import read_service, read_slice
from podnet.store.base import Store


@dataclass(frozen=True)
class ServiceTarget:
    ref: str  # namespace/name:port
    ip: str
    port: int
    protocol: str  # tcp | udp
    node_port: int | None
    backends: tuple[tuple[str, str], ...]  # (echo name, node) of each ready pod backend
    external_local: bool = False


def service_targets(store: Store) -> list[ServiceTarget]:
    """Every port of every service with a ClusterIP, with its ready pod backends."""
    pods = [PodRecord.from_json(e.json(), e.key) for e in store.list(keys.PODS)]
    slices = [read_slice(e.json(), e.key) for e in store.list(keys.ENDPOINT_SLICES)]
    ready = readiness(pods, judged_readiness(store.list(keys.READINESS)))
    out = []
    for entry in store.list(keys.SERVICES):
        svc = read_service(entry.json(), entry.key)
        if svc.headless or not svc.cluster_ip:
            continue
        for spec in svc.ports:
            found = backing(svc, spec, pods, slices, ready)
            names = tuple(sorted({(b.target.rsplit("/", 1)[1], b.node) for b in found
                                  if b.ready and b.target.startswith("pod ")}))
            for ip in svc.virtual_ips:  # a dual-stack service: each family's ClusterIP
                out.append(ServiceTarget(f"{svc.ref}:{spec.name or spec.port}", ip, spec.port,
                                         spec.protocol.lower(), spec.node_port, names, svc.external_policy == "Local"))
    return out


def _spec(target: ServiceTarget, dst: str, port: int, backends: Sequence[str]) -> dict:
    if not backends:
        return {"kind": "refused", "dst": dst, "port": port}
    return {"kind": target.protocol, "dst": dst, "port": port, "expect_any": list(backends)}


Planned = tuple[str, str, str, str, dict]
DNS_SERVICE = "kube-dns.kube-system"  # the lab's cluster DNS service (lab/orchestrator.py)  # check, source, netns, destination, probe.py spec


def probes(lab: dict, targets: Sequence[ServiceTarget], first_pods: dict[str, str],
           only: int | None = None) -> list[Planned]:
    """The planned probes for `targets` (connectivity.py makes them Probes);
    `first_pods` maps each node to the pod that stands for it; `only`: one IP family
    (an IPv6 ClusterIP's checks end in `/ipv6`, as connectivity.py names them)."""
    nodes, pods = lab.get("nodes", {}), lab.get("pods", {})
    outside = lab.get("outside") or {}
    dns = lab.get("cluster_dns") or {}
    out = _dns_probes(dns, pods, first_pods, only) if dns.get("ip") else []
    for target in targets:
        v6 = ":" in target.ip
        if only is not None and only != (6 if v6 else 4):
            continue
        if target.ip in (dns.get("ip"), dns.get("ip6")):
            continue
        suffix, under = ("/ipv6", "underlay6") if v6 else ("", "underlay")
        if not target.backends and target.protocol == "udp":
            continue  # an unanswered datagram proves nothing: only TCP can show the refusal
        everyone = [name for name, _ in target.backends]
        for pod in first_pods.values():
            out.append(("service/cluster-ip" + suffix, pod, pods[pod]["netns"],
                             f"{target.ref} {_host(target.ip)}:{target.port}/{target.protocol}",
                             _spec(target, target.ip, target.port, everyone)))
        if target.node_port is None or not outside.get("netns"):
            continue
        for node, info in nodes.items():
            local = [name for name, where in target.backends if where == node]
            if (target.external_local and not local) or not info.get(under):
                continue  # dropped by design on a node without a local backend
            out.append(("service/node-port" + suffix, "outside", outside["netns"],
                             f"{target.ref} {node} {_host(info[under])}:{target.node_port}/{target.protocol}",
                             _spec(target, info[under], target.node_port,
                                   local if target.external_local else everyone)))
    return out


def _host(ip: str) -> str:
    """An address as it stands before `:port`."""
    return f"[{ip}]" if ":" in ip else ip


def _dns_probes(dns: dict, pods: dict, first_pods: dict[str, str], only: int | None = None) -> list[Planned]:
    """The DNS service's name asked of each of its ClusterIPs: A over IPv4, AAAA over
    IPv6 (a dual-stack lab's DNS service has both)."""
    name = f"{DNS_SERVICE}.svc.{dns['domain']}"
    asked = [(ip, qtype, suffix) for ip, qtype, suffix, v in ((dns.get("ip"), "A", "", 4),
                                                              (dns.get("ip6"), "AAAA", "/ipv6", 6))
             if ip and only in (None, v)]
    return [("dns/cluster-ip" + suffix, pod, pods[pod]["netns"], f"{name} {qtype} @{_host(ip)}/{transport}",
             {"kind": "dns", "dst": ip, "port": 53, "name": name, "qtype": qtype,
              "tcp": transport == "tcp", "expect": f"answer {ip}"})
            for ip, qtype, suffix in asked for pod in first_pods.values() for transport in ("udp", "tcp")]

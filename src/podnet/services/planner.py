"""From the cluster's services to one node's plan (pure): services/plan.py values.

Every node renders every service (a pod on any node may call any service); what
differs per node is which backends are local (the `Local` traffic policies) and the
addresses NodePorts answer on. Only ready backends are planned, of the service's
address families: a dual-stack service's port carries both its cluster IPs, and each
family is served with the backends of that family (a dual-stack pod backs it twice,
once by each of its addresses); render.py never DNATs across families. The ids naming chains and sets are a hash of the service port's
identity, so an unchanged service keeps its chains across updates and restarts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from podnet.model.policy import PodRecord
from podnet.services.endpoints import backing
from podnet.services.objects import EndpointSlice, Service, ServicePortSpec
from podnet.services.plan import Backend, NodePlan, ServicePort


def port_id(svc: Service, spec: ServicePortSpec) -> str:
    """16 hex digits naming one service port's chains (stable across restarts)."""
    text = f"{svc.namespace}/{svc.name}/{spec.port}/{spec.protocol}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version(ip: str) -> int:
    """4 or 6 of an address the parsers already checked (no ipaddress object: this runs
    once per backend of every service on every change)."""
    return 6 if ":" in ip else 4


def service_ports(svc: Service, pods: Iterable[PodRecord], slices: Iterable[EndpointSlice],
                  ready: Mapping[str, bool], node: str) -> list[ServicePort]:
    """What `node` renders for each port of `svc` (nothing for a headless service)."""
    cluster_ips = svc.virtual_ips
    if not cluster_ips:
        return []
    families = {_version(ip) for ip in cluster_ips}
    pods, slices = list(pods), list(slices)
    out = []
    for spec in svc.ports:
        backends = tuple(sorted({Backend(b.ip, b.port, b.node == node and bool(node))
                                 for b in backing(svc, spec, pods, slices, ready)
                                 if b.ready and _version(b.ip) in families}))
        external = tuple(ip for ip in (*svc.external_ips, *svc.load_balancer_ips) if _version(ip) in families)
        out.append(ServicePort(
            id=port_id(svc, spec), ref=f"{svc.namespace}/{svc.name}:{spec.name or spec.port}",
            protocol=spec.protocol.lower(), port=spec.port, cluster_ips=cluster_ips,
            node_port=spec.node_port, external_ips=external, backends=backends,
            affinity_timeout=svc.affinity_timeout, external_local=svc.external_policy == "Local",
            internal_local=svc.internal_policy == "Local"))
    return out


def node_plan(services: Iterable[Service], pods: Iterable[PodRecord], slices: Iterable[EndpointSlice],
              ready: Mapping[str, bool], node: str, node_ips: Iterable[str],
              cluster_cidrs: Iterable[str]) -> NodePlan:
    """The whole plan of one node, its service ports sorted by id."""
    by_namespace: dict[str, list[PodRecord]] = {}
    for pod in pods:  # a service only ever selects pods of its own namespace
        by_namespace.setdefault(pod.namespace, []).append(pod)
    slices = list(slices)
    ports = [p for svc in services
             for p in service_ports(svc, by_namespace.get(svc.namespace, []), slices, ready, node)]
    return NodePlan(tuple(node_ips), tuple(cluster_cidrs), tuple(sorted(ports, key=lambda p: p.id)))

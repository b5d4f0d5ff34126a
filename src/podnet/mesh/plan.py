"""The sidecars of one node, resolved from the cluster (pure): pods, services and their
endpoints (services/watched.py), the namespaces the mesh is enabled in, and the mesh
objects (mesh/objects.py) -> a SidecarSpec per local meshed pod (mesh/spec.py).

- Meshed: a pod in a namespace labelled `podnet.io/mesh=enabled` (`podnet mesh enable
  NS`), unless the pod itself says `podnet.io/mesh=disabled`; or a pod labelled
  `podnet.io/mesh=enabled` anywhere.
- Outbound: every HTTP service port of the cluster (a port named `http` or `http-*`,
  or one an HTTPRoute attaches to), with its routes' rules first (routes_for's order)
  and a default rule to the service itself last (as a Service without routes is
  routed); each rule's weighted backendRefs become one backend whose server weights
  give each ref its share whatever its number of endpoints.
- Inbound: each TCP port the pod serves; the first service selecting the pod on that
  port names it for the rate limit and the authorization policies of that service.
- Endpoints are the ready ones (services/endpoints.py `backing`, readiness as the
  service table sees it); meshed endpoints are reached over mTLS, their CN checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from podnet.mesh import identity
from podnet.mesh.model import MTLS_PERMISSIVE, BackendRef, RouteRule
from podnet.mesh.objects import MeshObjects
from podnet.mesh.spec import Authz, Backend, InboundPort, OutboundService, Rule, Server, SidecarSpec
from podnet.model.policy import PodRecord
from podnet.services.endpoints import backing, pod_port, selects
from podnet.services.objects import Service, ServicePortSpec
from podnet.services.watched import WatchedObjects

MESH_LABEL = "podnet.io/mesh"
ENABLED, DISABLED = "enabled", "disabled"
MAX_WEIGHT = 256


@dataclass(frozen=True)
class SidecarPaths:
    cert: str
    ca: str
    stats_socket: str
    log_socket: str
    lua: str
    budget_map: str = ""


def meshed(pod: PodRecord, meshed_namespaces: Iterable[str]) -> bool:
    label = pod.labels.get(MESH_LABEL)
    if label == DISABLED:
        return False
    return label == ENABLED or pod.namespace in set(meshed_namespaces)


def pod_identity(pod: PodRecord, trust_domain: str = identity.DEFAULT_TRUST_DOMAIN) -> str:
    """The CN of a pod's certificate (mesh/identity.py)."""
    return identity.identity_of_pod(pod.namespace, pod.labels, trust_domain, f"pod {pod.ref}").cn


def _http_port(spec: ServicePortSpec) -> bool:
    return spec.protocol == "TCP" and (spec.name == "http" or spec.name.startswith("http-"))


def _stable(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:10]


class Planner:
    """One pass over the cluster as the watch holds it."""

    def __init__(self, watched: WatchedObjects, meshed_namespaces: Iterable[str], mesh: MeshObjects,
                 trust_domain: str = identity.DEFAULT_TRUST_DOMAIN) -> None:
        self.w = watched
        self.namespaces = frozenset(meshed_namespaces)
        self.mesh = mesh
        self.trust_domain = trust_domain
        self._pods_by_ip = {ip: pod for pod in watched.pods.values() for ip in pod.ips}
        self._services = {(s.namespace, s.name): s for s in watched.services.values()
                          if s.cluster_ip and not s.headless}

    def node(self, node: str, paths: Callable[[PodRecord], SidecarPaths]) -> dict[str, SidecarSpec]:
        """pod ref -> its sidecar, for the meshed pods of `node`."""
        outbound, backends = self._outbound()
        out = {}
        for pod in self.w.pods.values():
            if pod.node != node or not pod.ips or not meshed(pod, self.namespaces):
                continue
            where = paths(pod)
            peer_auth = self.mesh.peer_auth.get(pod.namespace)
            out[pod.ref] = SidecarSpec(
                pod=pod.ref, identity=pod_identity(pod, self.trust_domain),
                mtls=peer_auth.mode if peer_auth else MTLS_PERMISSIVE,
                inbound=self._inbound(pod), outbound=outbound, backends=backends,
                cert=where.cert, ca=where.ca, stats_socket=where.stats_socket, log_socket=where.log_socket,
                lua=where.lua if any(s.fault and s.fault.delay_percent for s in outbound) else "",
                budget_map=where.budget_map)
        return out

    # -- inbound

    def _inbound(self, pod: PodRecord) -> tuple[InboundPort, ...]:
        ports = []
        for entry in pod.ports:
            if entry.get("protocol", "TCP") != "TCP" or not isinstance(entry.get("port"), int):
                continue
            port = int(entry["port"])
            services = self._services_on(pod, port)
            limits, rules = [], []
            for svc in services:
                policy = self.mesh.traffic.get((svc.namespace, svc.name))
                if policy and policy.rate_limit:
                    limits.append((svc.ref, policy.rate_limit.requests_per_second))
                rules += [Authz(f"{p.namespace}/{p.name}", svc.ref, tuple(sorted({identity.cn_of(a) for a in p.allowed})))
                          for p in self.mesh.authz.get((svc.namespace, svc.name), ())]
            ports.append(InboundPort(port, tuple(s.ref for s in services), tuple(limits), tuple(rules)))
        return tuple(ports)

    def _services_on(self, pod: PodRecord, port: int) -> list[Service]:
        """The services selecting `pod` whose port reaches its `port`, by name."""
        return [svc for svc in sorted(self._services.values(), key=lambda s: s.ref)
                if svc.namespace == pod.namespace and svc.selector and selects(svc.selector, pod.labels)
                and any(spec.protocol == "TCP" and pod_port(pod, spec) == port for spec in svc.ports)]

    # -- outbound

    def _outbound(self) -> tuple[tuple[OutboundService, ...], tuple[Backend, ...]]:
        services, backends = [], []
        for (ns, name), svc in sorted(self._services.items()):
            for spec in svc.ports:
                routes = self.mesh.routes_for(ns, name, spec.port)
                if not (_http_port(spec) or routes) or spec.protocol != "TCP":
                    continue
                ref = f"{ns}/{name}:{spec.port}"
                rules: list[Rule] = []
                for route in routes:
                    for index, rule in enumerate(route.rules):
                        backend = self._backend(f"be_{_stable(ref, route.namespace, route.name, index)}", rule,
                                                rule.backend_timeout or rule.timeout)
                        backends.append(backend)
                        rules.append(Rule(rule.matches, backend.name, f"{route.namespace}/{route.name}#{index}"))
                policy = self.mesh.traffic.get((ns, name))
                default = RouteRule(backends=(BackendRef(name, ns, spec.port),))
                backend = self._backend(f"be_{_stable(ref, 'default')}", default, policy.timeout if policy else None)
                backends.append(backend)
                rules.append(Rule(default.matches, backend.name, f"{ref} default"))
                services.append(OutboundService(ref, svc.cluster_ip, spec.port, tuple(rules),
                                                policy.fault if policy else None))
        return tuple(services), tuple(backends)

    def _backend(self, name: str, rule: RouteRule, timeout: float | None = None) -> Backend:
        shares: list[tuple[float, list[Server]]] = []
        policy = None
        for ref in rule.backends:
            svc = self._services.get((ref.namespace, ref.service))
            if svc is None:
                continue
            policy = policy or self.mesh.traffic.get((ref.namespace, ref.service))
            servers = self._servers(svc, ref)
            if servers and ref.weight > 0:
                shares.append((ref.weight / len(servers), servers))
        top = max((per for per, _ in shares), default=1.0)
        weighted = tuple(Server(s.name, s.ip, s.port, max(1, round(MAX_WEIGHT * per / top)), s.meshed, s.identity)
                         for per, servers in shares for s in servers)
        return Backend(name, tuple(dict.fromkeys(weighted)), policy, timeout or (policy.timeout if policy else None))

    def _servers(self, svc: Service, ref: BackendRef) -> list[Server]:
        spec = next((p for p in svc.ports if p.port == ref.port and p.protocol == "TCP"), None)
        if spec is None:
            return []
        pods, slices, ready = self.w.inputs(svc)
        out = []
        for entry in backing(svc, spec, pods, slices, ready):
            if not entry.ready:
                continue
            pod = self._pods_by_ip.get(entry.ip)
            if ref.subset and (pod is None or any(pod.labels.get(k) != v for k, v in ref.subset)):
                continue
            is_meshed = pod is not None and meshed(pod, self.namespaces)
            mtls = self.mesh.peer_auth.get(pod.namespace) if pod is not None else None
            out.append(Server(f"s_{entry.ip.replace('.', '_')}_{entry.port}", entry.ip, entry.port, 1,
                              is_meshed and not (mtls and mtls.mode == "DISABLE"),
                              pod_identity(pod, self.trust_domain) if is_meshed and pod else ""))
        return out


def meshed_namespaces(namespace_labels: Mapping[str, Mapping[str, str]]) -> set[str]:
    return {ns for ns, labels in namespace_labels.items() if labels.get(MESH_LABEL) == ENABLED}


"""The Multi-Cluster Services API in a clusterset (KEP-1645 shapes): ServiceExport,
ServiceImport, and what an import becomes in the importing cluster (pure).

    kind: ServiceExport   (multicluster.x-k8s.io/v1alpha1, applied next to a Service
                           of the same name: "share it with the clusterset")
    -> every cluster's gateway in charge reads the exports of every cluster of the set
       (ours and each peer's store) and writes, in its own store:
       ServiceImport <ns>/<name>      ports, the clusterset IP, the exporting clusters
       Service <ns>/derived-<name>    selectorless, labelled with the import's name: its
                                      ClusterIP is the clusterset IP (allocated as any)
       EndpointSlice <ns>/derived-<name>-<cluster>   the endpoints that cluster exports
    -> the node's service table serves the derived Service like any other, and cluster
       DNS answers <name>.<ns>.svc.clusterset.local with its ClusterIP.

A cluster with a global CIDR (globalnet.py) is imported elsewhere on global IPs: its
share of a service is one endpoint, the service's global IP on the service's own ports,
which its gateway serves through a `global-<name>` Service (global_service below).

Local first: while our cluster exports ready endpoints of a service, only our slice is
written; when they are gone, every other exporter's ready endpoints take over (and give
way again when ours come back). A slice names its source cluster in a label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from podnet import keys
from podnet.clusterset.globalnet import GlobalLayout, global_service_name
from podnet.schema.kind import Column, Kind, Metadata, manifest
from podnet.services.objects import (
    EndpointSlice,
    Service,
    ServicePortSpec,
    SliceEndpoint,
    SlicePort,
)

MCS_API = "multicluster.x-k8s.io/v1alpha1"
SERVICE_NAME_LABEL = "multicluster.kubernetes.io/service-name"  # on derived services and their slices
SOURCE_LABEL = "multicluster.kubernetes.io/source-cluster"
GLOBAL_FOR_LABEL = "podnet.io/global-ip-for"  # on a global-<name> Service: the exported Service it serves
DERIVED = "derived-"
CLUSTERSET_DOMAIN = "clusterset.local"


@dataclass(frozen=True)
class ServiceExport:
    kind = "ServiceExport"
    api_version = MCS_API

    name: str
    namespace: str

    @property
    def key(self) -> str:
        return keys.object_key(keys.SERVICE_EXPORTS, self.name, self.namespace)

    def to_dict(self) -> dict[str, Any]:
        return manifest(MCS_API, self.kind, self.name, self.namespace, {}, None)


def parse_export(meta: Metadata, spec: Any) -> ServiceExport:
    if spec not in (None, {}):
        raise meta.loc.field("spec").error("a ServiceExport has no spec: its name is the service it shares")
    assert meta.namespace is not None
    return ServiceExport(meta.name, meta.namespace)


def _import_spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("spec") or {}


SERVICE_EXPORT = Kind("ServiceExport", MCS_API, "serviceexports", keys.SERVICE_EXPORTS, ("svcex",),
                      namespaced=True, name_is_label=True, parse=parse_export)
SERVICE_IMPORT = Kind(
    "ServiceImport", MCS_API, "serviceimports", keys.SERVICE_IMPORTS, ("svcim",), namespaced=True,
    columns=(Column("IP", lambda d: ",".join(_import_spec(d).get("ips") or []) or "<pending>"),
             Column("CLUSTERS", lambda d: ",".join(c["cluster"] for c in (d.get("status") or {}).get("clusters")
                                                   or [])),
             Column("SERVING", lambda d: ",".join((d.get("status") or {}).get("serving") or []) or "-")))
CLUSTERSET_KINDS: tuple[Kind, ...] = (SERVICE_EXPORT, SERVICE_IMPORT)


@dataclass(frozen=True)
class Exported:
    """One cluster's share of one service: its ports, and per port the endpoints'
    target port with each endpoint's address and readiness."""

    cluster: str
    namespace: str
    name: str
    ports: tuple[ServicePortSpec, ...]
    target_ports: tuple[int, ...]  # per port, the number the endpoints listen on
    endpoints: tuple[SliceEndpoint, ...]
    cluster_ip: str = ""
    selector: tuple[tuple[str, str], ...] | None = None  # the Service's (None: endpoints by hand)

    @property
    def ready(self) -> bool:
        return any(e.ready for e in self.endpoints)


@dataclass
class ImportPlan:
    """What one importing cluster writes for one exported service."""

    namespace: str
    name: str
    ports: tuple[ServicePortSpec, ...]
    clusters: list[str] = field(default_factory=list)  # every exporter
    serving: list[str] = field(default_factory=list)  # whose endpoints are in the slices now
    slices: list[EndpointSlice] = field(default_factory=list)

    @property
    def derived(self) -> str:
        return DERIVED + self.name

    def service(self) -> Service:
        ports = tuple(ServicePortSpec(p.port, p.protocol, p.name, p.port) for p in self.ports)
        return Service(self.derived, self.namespace, ports=ports, labels={SERVICE_NAME_LABEL: self.name})

    def import_manifest(self, cluster_ip: str) -> dict[str, Any]:
        doc = manifest(MCS_API, "ServiceImport", self.name, self.namespace, {}, {
            "type": "ClusterSetIP", "ips": [cluster_ip] if cluster_ip else [],
            "ports": [{"port": p.port, "protocol": p.protocol, **({"name": p.name} if p.name else {})}
                      for p in self.ports]})
        doc["status"] = {"clusters": [{"cluster": c} for c in self.clusters], "serving": list(self.serving)}
        return doc


def globalized(item: Exported, layout: GlobalLayout) -> Exported:
    """`item` as the other clusters reach it: its global IP on the service's ports,
    ready while any of its endpoints is (none while it has no ClusterIP)."""
    try:
        address = layout.service_ip(item.cluster_ip)
    except ValueError:
        return replace(item, endpoints=())
    return replace(item, target_ports=tuple(p.port for p in item.ports),
                   endpoints=(SliceEndpoint(address, item.ready),))


def global_service(item: Exported, layout: GlobalLayout) -> Service | None:
    """The Service that gives `item` its global IP in its own cluster: the same
    selector and ports, the global IP as an external IP (None: it cannot have one)."""
    name = global_service_name(item.name)
    if name is None or item.selector is None or not item.cluster_ip:
        return None
    ports = tuple(ServicePortSpec(p.port, p.protocol, p.name, p.target_port) for p in item.ports)
    return Service(name, item.namespace, selector=dict(item.selector), ports=ports,
                   external_ips=(layout.service_ip(item.cluster_ip),), labels={GLOBAL_FOR_LABEL: item.name})


def plan_imports(me: str, exported: Iterable[Exported]) -> dict[tuple[str, str], ImportPlan]:
    """Every service some cluster exports -> what cluster `me` writes for it. Ports are
    the first exporter's (by cluster name, ours first); an exporter whose ports differ
    is listed but not served (as the MCS API's conflict resolution leaves it out)."""
    by_service: dict[tuple[str, str], list[Exported]] = {}
    for item in exported:
        by_service.setdefault((item.namespace, item.name), []).append(item)
    plans = {}
    for (namespace, name), items in sorted(by_service.items()):
        items.sort(key=lambda e: (e.cluster != me, e.cluster))
        ports = items[0].ports
        plan = ImportPlan(namespace, name, ports, clusters=[e.cluster for e in items])
        same = [e for e in items if _shape(e.ports) == _shape(ports)]
        local = [e for e in same if e.cluster == me and e.ready]
        serving = local or [e for e in same if e.cluster != me and e.ready]
        for item in serving:
            plan.serving.append(item.cluster)
            plan.slices.append(EndpointSlice(
                f"{plan.derived}-{item.cluster}", namespace, plan.derived, endpoints=item.endpoints,
                ports=tuple(SlicePort(t, p.protocol, p.name) for p, t in zip(item.ports, item.target_ports,
                                                                             strict=True)),
                labels={"kubernetes.io/service-name": plan.derived, SERVICE_NAME_LABEL: name,
                        SOURCE_LABEL: item.cluster}))
        plans[(namespace, name)] = plan
    return plans


def _shape(ports: Iterable[ServicePortSpec]) -> tuple[tuple[int, str, str], ...]:
    return tuple(sorted((p.port, p.protocol, p.name) for p in ports))

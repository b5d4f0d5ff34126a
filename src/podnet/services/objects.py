"""Service and EndpointSlice, the Kubernetes v1 kinds `podnet apply -f` takes, as
frozen values (pure).

  v1 Service                       services/<namespace>/<name>
  discovery.k8s.io/v1 EndpointSlice endpointslices/<namespace>/<name>

The subset of the API podnet implements is accepted field by field; any other field
is an error naming its path (a `sessionAfinity` typo must not silently drop affinity).
Decisions worth knowing, each as the API server makes it:
- `spec.type` ClusterIP (default), NodePort or LoadBalancer; LoadBalancer ingress IPs
  are given by hand in `status.loadBalancer.ingress` (there is no cloud to ask).
- `clusterIP: None` is a headless service: ClusterIP type, no node ports, no affinity.
- A port's `targetPort` defaults to its `port`; a name is looked up in each backing
  pod's named ports. With more than one port every port needs a unique name.
- `externalTrafficPolicy: Local` needs something external (NodePort, LoadBalancer or
  externalIPs).
- ClusterIP and node ports may be left out: services/allocate.py fills them in when
  the object is applied, and keeps them across re-applies (they are immutable).
- Dual stack (`ipFamilyPolicy`, `ipFamilies`, `clusterIPs`): checked here as the API
  server validates them, defaulted against the cluster's service CIDRs when applied
  (services/families.py); `cluster_ip` is always `cluster_ips[0]`, the primary.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from podnet import keys
from podnet.schema import fields
from podnet.schema.fields import Loc
from podnet.schema.kind import Metadata, manifest
from podnet.services.families import HEADLESS, parse_cluster_ips

TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
PROTOCOLS = ("TCP", "UDP")
POLICIES = ("Cluster", "Local")
DEFAULT_AFFINITY_SECONDS = 10800  # the API server's default for ClientIP affinity
MAX_AFFINITY_SECONDS = 86400
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ADDRESS_TYPES = ("IPv4", "IPv6")


@dataclass(frozen=True, order=True)
class ServicePortSpec:
    """One entry of `spec.ports`."""

    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: int | str = 0  # a number, or the name of a pod's port
    node_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"port": self.port, "protocol": self.protocol, "targetPort": self.target_port}
        if self.name:
            out["name"] = self.name
        if self.node_port is not None:
            out["nodePort"] = self.node_port
        return out


@dataclass(frozen=True)
class Service:
    kind: ClassVar[str] = "Service"
    api_version: ClassVar[str] = "v1"

    name: str
    namespace: str
    type: str = "ClusterIP"
    selector: Mapping[str, str] | None = None  # None: endpoints come from EndpointSlices by hand
    ports: tuple[ServicePortSpec, ...] = ()
    cluster_ip: str = ""  # "": to be allocated; "None": headless
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    affinity_timeout: int | None = None  # ClientIP affinity seconds; None: no affinity
    external_policy: str = "Cluster"
    internal_policy: str = "Cluster"
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    cluster_ips: tuple[str, ...] = ()  # every family's, the primary first; ("None",): headless
    ip_family_policy: str = ""  # "": not given (allocate.py defaults it, as the API server)
    ip_families: tuple[str, ...] = ()  # "IPv4"/"IPv6", the primary first; (): not given

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", fields.frozen_labels(self.labels))
        if self.selector is not None:
            object.__setattr__(self, "selector", fields.frozen_labels(self.selector))
        if self.cluster_ips and not self.cluster_ip:
            object.__setattr__(self, "cluster_ip", self.cluster_ips[0])
        elif self.cluster_ip and not self.cluster_ips:
            object.__setattr__(self, "cluster_ips", (self.cluster_ip,))
        if self.cluster_ips and self.cluster_ips[0] != self.cluster_ip:
            raise ValueError(f"cluster_ip {self.cluster_ip!r} is not cluster_ips[0] {self.cluster_ips[0]!r}")

    @property
    def key(self) -> str:
        return keys.object_key(keys.SERVICES, self.name, self.namespace)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip == HEADLESS

    @property
    def virtual_ips(self) -> tuple[str, ...]:
        """The cluster IPs clients call (both families' on a dual-stack service; none headless)."""
        return tuple(ip for ip in self.cluster_ips if ip and ip != HEADLESS)

    @property
    def families(self) -> tuple[str, ...]:
        """ipFamilies, else those of its cluster IPs (a service stored before dual stack)."""
        return self.ip_families or tuple(f"IPv{6 if ':' in ip else 4}" for ip in self.virtual_ips)

    @property
    def uses_node_ports(self) -> bool:
        return self.type in ("NodePort", "LoadBalancer")

    def with_allocation(self, cluster_ips: tuple[str, ...], node_ports: Mapping[tuple[int, str], int]) -> Service:
        """This service with its ClusterIPs (the primary first) and node ports filled in
        (by allocate.py)."""
        ports = tuple(replace(p, node_port=node_ports.get((p.port, p.protocol), p.node_port)) for p in self.ports)
        return replace(self, cluster_ip=cluster_ips[0] if cluster_ips else "", cluster_ips=cluster_ips, ports=ports)

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": self.type, "ports": [p.to_dict() for p in self.ports]}
        if self.selector is not None:
            spec["selector"] = dict(self.selector)
        if self.cluster_ip:
            spec["clusterIP"] = self.cluster_ip
            spec["clusterIPs"] = list(self.cluster_ips)
        if self.ip_family_policy:
            spec["ipFamilyPolicy"] = self.ip_family_policy
        if self.ip_families:
            spec["ipFamilies"] = list(self.ip_families)
        if self.external_ips:
            spec["externalIPs"] = list(self.external_ips)
        if self.affinity_timeout is not None:
            spec["sessionAffinity"] = "ClientIP"
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": self.affinity_timeout}}
        if self.external_policy != "Cluster":
            spec["externalTrafficPolicy"] = self.external_policy
        if self.internal_policy != "Cluster":
            spec["internalTrafficPolicy"] = self.internal_policy
        doc = manifest(self.api_version, self.kind, self.name, self.namespace, self.labels, spec)
        if self.load_balancer_ips:
            doc["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in self.load_balancer_ips]}}
        return doc


@dataclass(frozen=True)
class SliceEndpoint:
    """One endpoint of an EndpointSlice: an address (a pod, a VM, a plain host)."""

    address: str
    ready: bool = True
    node: str = ""
    hostname: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"addresses": [self.address], "conditions": {"ready": self.ready}}
        if self.node:
            out["nodeName"] = self.node
        if self.hostname:
            out["hostname"] = self.hostname
        return out


@dataclass(frozen=True)
class SlicePort:
    port: int
    protocol: str = "TCP"
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"port": self.port, "protocol": self.protocol}
        if self.name:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class EndpointSlice:
    kind: ClassVar[str] = "EndpointSlice"
    api_version: ClassVar[str] = "discovery.k8s.io/v1"

    name: str
    namespace: str
    service: str  # the service it backs (label kubernetes.io/service-name)
    address_type: str = "IPv4"
    endpoints: tuple[SliceEndpoint, ...] = ()
    ports: tuple[SlicePort, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", fields.frozen_labels(self.labels))

    @property
    def key(self) -> str:
        return keys.object_key(keys.ENDPOINT_SLICES, self.name, self.namespace)

    def to_dict(self) -> dict[str, Any]:
        doc = manifest(self.api_version, self.kind, self.name, self.namespace, self.labels, None)
        doc["addressType"] = self.address_type
        doc["endpoints"] = [e.to_dict() for e in self.endpoints]
        doc["ports"] = [p.to_dict() for p in self.ports]
        return doc


# --- parsing ---------------------------------------------------------------------------

SPEC_FIELDS = ("type", "selector", "ports", "clusterIP", "clusterIPs", "ipFamilyPolicy", "ipFamilies",
               "externalIPs", "sessionAffinity", "sessionAffinityConfig", "externalTrafficPolicy",
               "internalTrafficPolicy")


def _choice(obj: Any, loc: Loc, allowed: tuple[str, ...], default: str) -> str:
    if obj is None:
        return default
    if obj not in allowed:
        raise loc.error(f"{obj!r} is not one of {', '.join(allowed)}")
    return obj


def _port_name(obj: Any, loc: Loc) -> str:
    """A port name (IANA_SVC_NAME, fields.is_port_name)."""
    name = fields.dns_name(obj, loc, label=True)
    if not fields.is_port_name(name):
        raise loc.error(f"{name!r} is not a port name",
                        "at most 15 lowercase alphanumerics or single '-', with at least one letter")
    return name


def _target_port(obj: Any, loc: Loc, default: int) -> int | str:
    if obj is None:
        return default
    if isinstance(obj, str):
        return _port_name(obj, loc)
    return fields.port_number(obj, loc)


def _ports(raw: Any, loc: Loc, node_ports_allowed: bool) -> tuple[ServicePortSpec, ...]:
    listed = fields.items(raw, loc)
    if not listed:
        raise loc.error("at least one port is required")
    ports: list[ServicePortSpec] = []
    for i, item in enumerate(listed):
        ploc = loc.item(i)
        entry = fields.mapping(item, ploc, ("name", "protocol", "port", "targetPort", "nodePort", "appProtocol"))
        if entry.get("port") is None:
            raise ploc.field("port").error("required")
        port = fields.port_number(entry["port"], ploc.field("port"))
        name = _port_name(entry["name"], ploc.field("name")) if entry.get("name") is not None else ""
        if len(listed) > 1 and not name:
            raise ploc.field("name").error("required when a service has more than one port")
        node_port = None
        if entry.get("nodePort") is not None:
            if not node_ports_allowed:
                raise ploc.field("nodePort").error("only a NodePort or LoadBalancer service has node ports")
            node_port = fields.port_number(entry["nodePort"], ploc.field("nodePort"))
        ports.append(ServicePortSpec(
            port, _choice(entry.get("protocol"), ploc.field("protocol"), PROTOCOLS, "TCP"), name,
            _target_port(entry.get("targetPort"), ploc.field("targetPort"), port), node_port))
    names = [p.name for p in ports if p.name]
    if len(set(names)) != len(names):
        raise loc.error(f"port names must be unique, got {names}")
    pairs = [(p.port, p.protocol) for p in ports]
    if len(set(pairs)) != len(pairs):
        raise loc.error("two ports share a port number and protocol")
    return tuple(ports)


def _affinity(spec: Mapping[str, Any], loc: Loc) -> int | None:
    mode = _choice(spec.get("sessionAffinity"), loc.field("sessionAffinity"), ("None", "ClientIP"), "None")
    config = spec.get("sessionAffinityConfig")
    if mode == "None":
        if config is not None:
            raise loc.field("sessionAffinityConfig").error("given without sessionAffinity: ClientIP")
        return None
    if config is None:
        return DEFAULT_AFFINITY_SECONDS
    cloc = loc.field("sessionAffinityConfig")
    client = fields.mapping(fields.mapping(config, cloc, ("clientIP",)).get("clientIP") or {},
                            cloc.field("clientIP"), ("timeoutSeconds",))
    seconds = client.get("timeoutSeconds", DEFAULT_AFFINITY_SECONDS)
    tloc = cloc.field("clientIP.timeoutSeconds")
    seconds = fields.integer(seconds, tloc)
    if not 1 <= seconds <= MAX_AFFINITY_SECONDS:
        raise tloc.error(f"{seconds} is not 1..{MAX_AFFINITY_SECONDS} seconds")
    return seconds


def _load_balancer_ips(status: Any, loc: Loc) -> tuple[str, ...]:
    if status is None:
        return ()
    lb = fields.mapping(fields.mapping(status, loc, ("loadBalancer",)).get("loadBalancer") or {},
                        loc.field("loadBalancer"), ("ingress",))
    ingress_loc = loc.field("loadBalancer.ingress")
    out = []
    for i, item in enumerate(fields.items(lb.get("ingress") or [], ingress_loc)):
        entry = fields.mapping(item, ingress_loc.item(i), ("ip",))
        out.append(fields.address(entry.get("ip"), ingress_loc.item(i).field("ip")))
    return tuple(out)


def _addresses(raw: Any, loc: Loc) -> tuple[str, ...]:
    return tuple(fields.address(ip, loc.item(i)) for i, ip in enumerate(fields.items(raw or [], loc)))


def parse_service(meta: Metadata, body: Mapping[str, Any]) -> Service:
    loc = meta.loc.field("spec")
    spec = fields.mapping(body.get("spec"), loc, SPEC_FIELDS)
    kind = _choice(spec.get("type"), loc.field("type"), TYPES, "ClusterIP")
    selector = None
    if spec.get("selector") is not None:
        selector = fields.parse_labels(fields.mapping(spec["selector"], loc.field("selector")),
                                       str(loc.field("selector"))) or None  # {}: none (as the API stores it)
    cluster_ips, family_policy, families = parse_cluster_ips(spec, loc)
    cluster_ip = cluster_ips[0] if cluster_ips else ""
    ports = _ports(spec.get("ports"), loc.field("ports"), kind != "ClusterIP")
    external_ips = _addresses(spec.get("externalIPs"), loc.field("externalIPs"))
    affinity = _affinity(spec, loc)
    external = _choice(spec.get("externalTrafficPolicy"), loc.field("externalTrafficPolicy"), POLICIES, "Cluster")
    internal = _choice(spec.get("internalTrafficPolicy"), loc.field("internalTrafficPolicy"), POLICIES, "Cluster")
    lb_ips = _load_balancer_ips(body.get("status"), meta.loc.field("status"))
    if cluster_ip == HEADLESS:
        if kind != "ClusterIP":
            raise loc.field("clusterIP").error(f"a headless service (clusterIP: None) cannot be {kind}")
        if affinity is not None or external_ips:
            raise loc.error("a headless service has no virtual IP: no sessionAffinity or externalIPs")
    if lb_ips and kind != "LoadBalancer":
        raise meta.loc.field("status.loadBalancer").error("only a LoadBalancer service has ingress IPs")
    if external == "Local" and kind == "ClusterIP" and not external_ips:
        raise loc.field("externalTrafficPolicy").error(
            "Local needs something external to apply to", "type NodePort or LoadBalancer, or externalIPs")
    assert meta.namespace is not None
    return Service(meta.name, meta.namespace, kind, selector, ports, cluster_ip, external_ips, lb_ips,
                   affinity, external, internal, meta.labels, cluster_ips, family_policy, families)


def _slice_endpoint(item: Any, loc: Loc, address_type: str) -> SliceEndpoint:
    entry = fields.mapping(item, loc, ("addresses", "conditions", "nodeName", "hostname", "zone", "targetRef"))
    listed = fields.items(entry.get("addresses"), loc.field("addresses"))
    if len(listed) != 1:
        raise loc.field("addresses").error("give exactly one address (as Kubernetes does)")
    ip = fields.address(listed[0], loc.field("addresses").item(0))
    if (ipaddress.ip_address(ip).version == 4) != (address_type == "IPv4"):
        raise loc.field("addresses").item(0).error(f"{ip} is not an {address_type} address")
    conditions = fields.mapping(entry.get("conditions") or {}, loc.field("conditions"),
                                ("ready", "serving", "terminating"))
    ready = conditions.get("ready", True)
    if not isinstance(ready, bool):
        raise loc.field("conditions.ready").error(f"{ready!r} is not true or false")
    node = entry.get("nodeName")
    if node is not None:
        fields.dns_name(node, loc.field("nodeName"), label=True)
    hostname = entry.get("hostname")
    if hostname is not None:
        fields.dns_name(hostname, loc.field("hostname"), label=True)
    return SliceEndpoint(ip, ready, node or "", hostname or "")


def parse_endpoint_slice(meta: Metadata, body: Mapping[str, Any]) -> EndpointSlice:
    service = meta.labels.get(SERVICE_NAME_LABEL)
    if not service:
        raise meta.loc.field(f"metadata.labels.{SERVICE_NAME_LABEL}").error(
            "required: the name of the service this slice backs")
    fields.dns_name(service, meta.loc.field(f"metadata.labels.{SERVICE_NAME_LABEL}"), label=True)
    address_type = _choice(body.get("addressType"), meta.loc.field("addressType"), ADDRESS_TYPES, "")
    if not address_type:
        raise meta.loc.field("addressType").error("required: IPv4 or IPv6")
    eloc = meta.loc.field("endpoints")
    endpoints = tuple(_slice_endpoint(e, eloc.item(i), address_type)
                      for i, e in enumerate(fields.items(body.get("endpoints") or [], eloc)))
    ploc = meta.loc.field("ports")
    ports: list[SlicePort] = []
    for i, item in enumerate(fields.items(body.get("ports") or [], ploc)):
        entry = fields.mapping(item, ploc.item(i), ("name", "port", "protocol", "appProtocol"))
        if entry.get("port") is None:
            raise ploc.item(i).field("port").error("required")
        name = _port_name(entry["name"], ploc.item(i).field("name")) if entry.get("name") else ""
        ports.append(SlicePort(fields.port_number(entry["port"], ploc.item(i).field("port")),
                               _choice(entry.get("protocol"), ploc.item(i).field("protocol"), PROTOCOLS, "TCP"),
                               name))
    assert meta.namespace is not None
    return EndpointSlice(meta.name, meta.namespace, service, address_type, endpoints, tuple(ports), meta.labels)

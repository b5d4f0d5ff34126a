"""What service allocation keeps in the store besides the Service manifests.

- `alloc/clusterips/<address>` -> ServiceClaim: which service owns a ClusterIP.
  Claims are written in the transaction that stores the service, so two applies can
  never both get one.
- `alloc/nodeports/<protocol>-<port>` -> PortClaim: one claim per (protocol, port) of
  the node-port range, held either by a service (its node port, on every node) or by
  the endpoints that publish it as a host port (CNI `portMappings`, each on its own
  node: several nodes may publish one host port). So a node port and a published
  port can never both exist (services/ports.py).
- `readiness/<namespace>/<pod>` -> Readiness: what the pod's node last judged of a
  pod with a readiness probe (services/probes.py); backends follow it on every node.
- `settings/services` -> ServiceSettings: the cluster's service CIDR (one prefix, or
  two of different families on a dual-stack cluster), node port range and DNS domain
  (written by `lab up` and `agent --init`; defaults otherwise).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from podnet import addresses, keys
from podnet.defaults import DEFAULT_CLUSTER_DOMAIN
from podnet.errors import InvalidConfig
from podnet.model.base import CorruptRecord, Fields
from podnet.schema.fields import DNS_SUBDOMAIN_RE
from podnet.store.base import dumps

DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
DEFAULT_NODE_PORTS = (30000, 32767)


@dataclass(frozen=True)
class ServiceClaim:
    """Who owns a ClusterIP: `namespace/name` of the service."""

    service: str

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "service claim") -> ServiceClaim:
        f = Fields(raw, what)
        return cls(_service_ref(f))


def _service_ref(f: Fields) -> str:
    service = f.text("service")
    namespace, sep, name = service.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise f.error("service", f"is not namespace/name: {service!r}")
    return service


@dataclass(frozen=True)
class PortHolder:
    """One endpoint that publishes a host port: the node it runs on (for messages) and
    its attachment, whose endpoint record (keys.endpoint) says whether it still exists."""

    node: str
    network: str
    container_id: str
    ifname: str

    @property
    def endpoint(self) -> tuple[str, str, str]:
        """What identifies the holder: its attachment (the node that wrote it may have
        been the agent or the plugin's fallback, which name the node differently)."""
        return self.network, self.container_id, self.ifname

    def __str__(self) -> str:
        return f"node {self.node or '(unnamed)'} (endpoint {self.network}/{self.container_id}/{self.ifname})"

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "network": self.network, "containerID": self.container_id,
                "ifname": self.ifname}

    @classmethod
    def from_json(cls, raw: object, what: str = "host port holder") -> PortHolder:
        f = Fields(raw, what)
        names = []
        for name in ("network", "containerID"):
            try:
                names.append(keys.segment(f.text(name), name))
            except keys.BadKey as exc:
                raise f.error(name, exc.msg) from None
        return cls(f.text("node", ""), names[0], names[1], f.ifname("ifname"))


@dataclass(frozen=True)
class PortClaim:
    """Who owns one (protocol, port) of the node-port range: a service (`service`) or
    the endpoints publishing it as a host port (`holders`), never both."""

    service: str = ""
    holders: tuple[PortHolder, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.service) == bool(self.holders):
            raise InvalidConfig("a port claim names either a service or host port holders")

    def to_json(self) -> dict[str, Any]:
        if self.service:
            return {"service": self.service}  # as ServiceClaim wrote it
        return {"hostPorts": [h.to_json() for h in self.holders]}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "port claim") -> PortClaim:
        f = Fields(raw, what)
        if f.has("service") == f.has("hostPorts"):
            raise CorruptRecord(f"{what}: names neither a service nor host port holders, or both")
        if f.has("service"):
            return cls(_service_ref(f))
        raw_holders = f.raw["hostPorts"]
        if not isinstance(raw_holders, list) or not raw_holders:
            raise f.error("hostPorts", f"must be a non-empty list, got {raw_holders!r}")
        holders = tuple(PortHolder.from_json(h, f"{what}: hostPorts[{i}]") for i, h in enumerate(raw_holders))
        if len({h.endpoint for h in holders}) != len(holders):
            raise f.error("hostPorts", "names one endpoint twice")
        return cls(holders=holders)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    node: str
    since: float = 0.0  # when it last flipped
    reason: str = ""  # the last failure, for `describe svc`

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "node": self.node, "since": self.since, "reason": self.reason}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "readiness") -> Readiness:
        f = Fields(raw, what)
        return cls(f.flag("ready"), f.text("node", ""), f.number("since"), f.text("reason", "")[:200])


@dataclass(frozen=True)
class ServiceSettings:
    """The cluster's service ranges. `service_cidr` is the primary family's prefix (what
    single-stack readers take, and the family a SingleStack service gets); a dual-stack
    cluster has the other family's in `secondary_cidr`. `service_cidr` may be given as
    kube-apiserver's `--service-cluster-ip-range`, `10.96.0.0/16,fd00:10:96::/112`: it is
    split into the two."""

    service_cidr: str = DEFAULT_SERVICE_CIDR
    node_ports: tuple[int, int] = DEFAULT_NODE_PORTS
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    secondary_cidr: str = ""  # "": a single-stack cluster

    def __post_init__(self) -> None:
        primary, secondary = split_service_cidrs(self.service_cidr, self.secondary_cidr)
        object.__setattr__(self, "service_cidr", primary)
        object.__setattr__(self, "secondary_cidr", secondary)
        check_settings(self.service_cidr, self.node_ports, self.cluster_domain)
        if secondary:
            check_service_cidr(secondary)
            if self.networks[0].version == self.networks[1].version:
                raise InvalidConfig(f"service CIDRs {primary} and {secondary} are both IPv{self.networks[0].version}",
                                    "give at most one prefix per family, the primary first: "
                                    "10.96.0.0/16,fd00:10:96::/112")

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The primary family's range."""
        return ipaddress.ip_network(self.service_cidr)

    @property
    def service_cidrs(self) -> tuple[str, ...]:
        """One prefix per family, the primary first."""
        return (self.service_cidr, self.secondary_cidr) if self.secondary_cidr else (self.service_cidr,)

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c) for c in self.service_cidrs)

    @property
    def families(self) -> tuple[str, ...]:
        """"IPv4"/"IPv6" of each range, the primary first (what Services may ask for)."""
        return tuple(f"IPv{n.version}" for n in self.networks)

    @property
    def dual_stack(self) -> bool:
        return bool(self.secondary_cidr)

    def network_of(self, family: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The range of `family` ("IPv4"/"IPv6"), None when the cluster has none."""
        return next((n for n in self.networks if f"IPv{n.version}" == family), None)

    def to_json(self) -> dict[str, Any]:
        # serviceCIDR stays the primary alone: a reader that knows one range reads it as before
        out: dict[str, Any] = {"serviceCIDR": self.service_cidr,
                               "nodePortRange": f"{self.node_ports[0]}-{self.node_ports[1]}",
                               "clusterDomain": self.cluster_domain}
        if self.secondary_cidr:
            out["serviceCIDRs"] = list(self.service_cidrs)
        return out

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "service settings") -> ServiceSettings:
        f = Fields(raw, what)
        primary, secondary = f.text("serviceCIDR"), ""
        if f.has("serviceCIDRs"):
            listed = f.raw["serviceCIDRs"]
            if (not isinstance(listed, list) or not 1 <= len(listed) <= 2
                    or not all(isinstance(c, str) for c in listed) or listed[0] != primary):
                raise f.error("serviceCIDRs", f"must list one or two prefixes, serviceCIDR first, got {listed!r}")
            secondary = listed[1] if len(listed) == 2 else ""
        try:
            return cls(primary, parse_port_range(f.text("nodePortRange")), f.text("clusterDomain"), secondary)
        except InvalidConfig as exc:
            raise f.error("serviceCIDR", exc.msg) from None


def split_service_cidrs(text: str, secondary: str = "") -> tuple[str, str]:
    """`A` or `A,B` (kube-apiserver's form) -> (A, B or ""), with `secondary` given apart."""
    if not isinstance(text, str):
        raise InvalidConfig(f"service CIDR {text!r} is not a CIDR")
    parts = [p.strip() for p in text.split(",")]
    if secondary:
        parts.append(secondary)
    if len(parts) > 2 or not all(parts):
        raise InvalidConfig(f"service CIDR {','.join(parts)!r}: give one prefix, or two of different families "
                            "separated by a comma (10.96.0.0/16,fd00:10:96::/112)")
    return parts[0], parts[1] if len(parts) == 2 else ""


def parse_port_range(text: str) -> tuple[int, int]:
    """`30000-32767` -> (30000, 32767)."""
    low, sep, high = text.partition("-")
    if not sep or not low.isdigit() or not high.isdigit() or not 1 <= int(low) <= int(high) <= 65535:
        raise InvalidConfig(f"node port range {text!r} is not LOW-HIGH within 1-65535")
    return int(low), int(high)


def check_settings(cidr: str, node_ports: tuple[int, int], domain: str) -> None:
    """A service CIDR with room for services, not one of the machine's own ranges; a
    port range; a DNS domain."""
    check_service_cidr(cidr)
    low, high = node_ports
    if not 1 <= low <= high <= 65535:
        raise InvalidConfig(f"node port range {low}-{high} is not within 1-65535")
    if not isinstance(domain, str) or len(domain) > 253 or not DNS_SUBDOMAIN_RE.fullmatch(domain):
        raise InvalidConfig(f"cluster domain {domain!r} is not a DNS name")


def check_service_cidr(cidr: str) -> None:
    """One family's service range: assignable, at least 16 addresses, IPv6 /108 or longer."""
    net = addresses.network(cidr, "service CIDR")
    try:
        addresses.check_assignable(net, "service CIDR")
    except InvalidConfig as exc:
        raise InvalidConfig(exc.msg, "ClusterIPs cannot come from it; the default is " + DEFAULT_SERVICE_CIDR) from None
    if net.num_addresses < 16:
        raise InvalidConfig(f"service CIDR {cidr} is too small (at least 16 addresses)")
    if net.version == 6 and net.prefixlen < 108:
        raise InvalidConfig(f"service CIDR {cidr}: an IPv6 service CIDR must be /108 or longer")

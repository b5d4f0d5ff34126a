"""What service allocation keeps in the store besides the Service manifests.

- `alloc/clusterips/<address>` and `alloc/nodeports/<protocol>-<port>` ->
  ServiceClaim: which service owns a ClusterIP or a node port. Claims are written in
  the transaction that stores the service, so two applies can never both get one.
- `readiness/<namespace>/<pod>` -> Readiness: what the pod's node last judged of a
  pod with a readiness probe (services/probes.py); backends follow it on every node.
- `settings/services` -> ServiceSettings: the cluster's service CIDR, node port range
  and DNS domain (written by `lab up` and `agent --init`; defaults otherwise).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from podnet import addresses
from podnet.errors import InvalidConfig
from podnet.model.base import Fields
from podnet.schema.fields import DNS_SUBDOMAIN_RE
from podnet.store.base import dumps

DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
DEFAULT_NODE_PORTS = (30000, 32767)
DEFAULT_CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class ServiceClaim:
    """Who owns a ClusterIP or node port: `namespace/name` of the service."""

    service: str

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "service claim") -> ServiceClaim:
        f = Fields(raw, what)
        service = f.text("service")
        namespace, sep, name = service.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise f.error("service", f"is not namespace/name: {service!r}")
        return cls(service)


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
    service_cidr: str = DEFAULT_SERVICE_CIDR
    node_ports: tuple[int, int] = DEFAULT_NODE_PORTS
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN

    def __post_init__(self) -> None:
        check_settings(self.service_cidr, self.node_ports, self.cluster_domain)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.service_cidr)

    def to_json(self) -> dict[str, Any]:
        return {"serviceCIDR": self.service_cidr, "nodePortRange": f"{self.node_ports[0]}-{self.node_ports[1]}",
                "clusterDomain": self.cluster_domain}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "service settings") -> ServiceSettings:
        f = Fields(raw, what)
        try:
            return cls(f.text("serviceCIDR"), parse_port_range(f.text("nodePortRange")), f.text("clusterDomain"))
        except InvalidConfig as exc:
            raise f.error("serviceCIDR", exc.msg) from None


def parse_port_range(text: str) -> tuple[int, int]:
    """`30000-32767` -> (30000, 32767)."""
    low, sep, high = text.partition("-")
    if not sep or not low.isdigit() or not high.isdigit() or not 1 <= int(low) <= int(high) <= 65535:
        raise InvalidConfig(f"node port range {text!r} is not LOW-HIGH within 1-65535")
    return int(low), int(high)


def check_settings(cidr: str, node_ports: tuple[int, int], domain: str) -> None:
    """A service CIDR with room for services, not one of the machine's own ranges; a
    port range; a DNS domain."""
    net = addresses.network(cidr, "service CIDR")
    try:
        addresses.check_assignable(net, "service CIDR")
    except InvalidConfig as exc:
        raise InvalidConfig(exc.msg, "ClusterIPs cannot come from it; the default is " + DEFAULT_SERVICE_CIDR) from None
    if net.num_addresses < 16:
        raise InvalidConfig(f"service CIDR {cidr} is too small (at least 16 addresses)")
    if net.version == 6 and net.prefixlen < 108:
        raise InvalidConfig(f"service CIDR {cidr}: an IPv6 service CIDR must be /108 or longer")
    low, high = node_ports
    if not 1 <= low <= high <= 65535:
        raise InvalidConfig(f"node port range {low}-{high} is not within 1-65535")
    if not isinstance(domain, str) or len(domain) > 253 or not DNS_SUBDOMAIN_RE.fullmatch(domain):
        raise InvalidConfig(f"cluster domain {domain!r} is not a DNS name")

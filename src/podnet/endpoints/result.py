"""What ADD gives the kernel and the runtime, derived from the IPAM's typed result.

```
IpamResult ──addressing()──> container addresses, gateways, routes ──> AttachContext
     │                                                                  (attach/*)
     └────────── AddResult(attached, addresses, dns) ──as_cni()──> endpoint record
                                                        └──skel.reply──> the runtime
```

The CNI result is built once, from typed values, after the attachment stands: it is
stored in the ready endpoint record and converted to the request's cniVersion by skel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from podnet.attach.base import AttachContext, Attached
from podnet.attach.routed import gateway_for
from podnet.cni.config import PodnetConf
from podnet.cni.skel import CniRequest
from podnet.ipam.result import IpamAddress, IpamResult, IPInterface
from podnet.naming import attach_id

RouteSpec = tuple[str, str | None]  # (dst, gateway) as the attachment installs it


@dataclass(frozen=True)
class AddResult:
    """ADD's answer: the interfaces the attachment built, the addresses and routes the
    IPAM handed out, and the DNS settings (the config's, else the IPAM's)."""

    attached: Attached
    addresses: IpamResult
    dns: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def as_cni(self) -> dict[str, Any]:
        """Built once: the ready endpoint record stores it, skel writes it."""
        return self._cni

    @cached_property
    def _cni(self) -> dict[str, Any]:
        return {
            "interfaces": self.attached.interfaces,
            "ips": [ip.as_cni(self.attached.container_index) for ip in self.addresses.ips],
            "routes": [route.as_cni() for route in self.addresses.routes],
            "dns": self.dns,
        }


def attach_context(
    conf: PodnetConf,
    req: CniRequest,
    host_fd: int,
    container_fd: int | None,
    ips: tuple[IPInterface, ...] = (),
    gateways: tuple[str, ...] = (),
    routes: tuple[RouteSpec, ...] = (),
) -> AttachContext:
    return AttachContext(
        conf=conf,
        container_id=req.container_id,
        ifname=req.ifname,
        netns_path=req.netns,
        attach_id=attach_id(conf.name, req.container_id, req.ifname),
        host_fd=host_fd,
        container_fd=container_fd,
        ips=ips,
        gateways=gateways,
        routes=routes,
    )


def as_routed(addresses: IpamResult) -> IpamResult:
    """What a routed pod gets (attach/routed.py, Calico's model): each address alone
    (/32, /128), whatever block the IPAM took it from, and the link-local gateway."""
    return replace(addresses, ips=tuple(
        IpamAddress(ip.address, ipaddress.ip_network(f"{ip.address}/{ip.address.max_prefixlen}"),
                    ipaddress.ip_address(gateway_for(ip.address.version)), ip.range_set)
        for ip in addresses.ips))


def on_segment(addresses: IpamResult, subnet: str, gateway: str) -> IpamResult:
    """What a macvlan pod on a pod segment gets (fabric/macvlan.py): each address of
    the segment's family with the segment's prefix and router, whatever block the
    IPAM took it from (every pod of every node is on-link)."""
    net, router = ipaddress.ip_network(subnet), ipaddress.ip_address(gateway)
    return replace(addresses, ips=tuple(
        IpamAddress(ip.address, net, router, ip.range_set) if ip.address in net else ip
        for ip in addresses.ips))


def addressing(
    conf: PodnetConf, addresses: IpamResult
) -> tuple[tuple[IPInterface, ...], tuple[str, ...], tuple[RouteSpec, ...]]:
    """The container's addresses, their gateways ("" for none) and its routes; a
    routed pod's gateway is reached by a link-scope route first (it is in no subnet)."""
    ips = tuple(ip.ip_interface for ip in addresses.ips)
    gateways = tuple(str(ip.gateway) if ip.gateway is not None else "" for ip in addresses.ips)
    routes = _routes(conf, addresses, gateways, ips)
    if conf.mode == "routed":
        links = tuple((f"{gw}/{ipaddress.ip_address(gw).max_prefixlen}", None) for gw in dict.fromkeys(gateways) if gw)
        routes = links + routes
    return ips, gateways, routes


def _routes(
    conf: PodnetConf, addresses: IpamResult, gateways: tuple[str, ...], ips: tuple[IPInterface, ...]
) -> tuple[RouteSpec, ...]:
    """The IPAM's routes (on a bridge, via the gateway of their family when they name
    none), plus a default route per family when the config says isDefaultGateway."""
    routes: list[RouteSpec] = []
    for route in addresses.routes:
        gw = str(route.gw) if route.gw is not None else None
        if gw is None and conf.mode in ("bridge", "routed"):
            version = route.dst.version
            gw = next((g for g, ip in zip(gateways, ips, strict=False) if g and ip.version == version), None)
        routes.append((str(route.dst), gw))
    if conf.is_default_gateway:
        have = {ipaddress.ip_network(d, strict=False) for d, _ in routes}
        for gw, ip in zip(gateways, ips, strict=False):
            default = "0.0.0.0/0" if ip.version == 4 else "::/0"
            if gw and ipaddress.ip_network(default) not in have:
                routes.append((default, gw))
    return tuple(routes)

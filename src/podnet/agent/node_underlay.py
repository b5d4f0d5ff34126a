"""What a cluster node reads off its underlay interface when it joins: its addresses of
each family, their prefixes, its MTU and GSO limit (detected, never typed).

Why apart from node_service.py: one netlink reading with its own failure messages,
while the node service is the loop that uses it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from podnet.errors import PodnetError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

AF_INET, AF_INET6 = 2, 10


@dataclass(frozen=True)
class Underlay:
    """The underlay's first IPv4 address, its MTU, the prefixes of all its IPv4
    addresses (no peer block may overlap one) and its first global IPv6 address (None
    when it has none: the node's IPv6 pods then ride the IPv4 underlay)."""

    address: ipaddress.IPv4Interface
    mtu: int
    prefixes: tuple[ipaddress.IPv4Network, ...]
    address6: ipaddress.IPv6Interface | None = None


def detect_underlay(ipr: IPRoute, ifname: str) -> Underlay:
    """The underlay `ifname` as the calling thread's namespace has it."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise PodnetError(f"underlay interface {ifname} does not exist")
    addresses = [ipaddress.IPv4Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
                 for msg in ipr.get_addr(index=found[0], family=AF_INET)]
    if not addresses:
        raise PodnetError(f"underlay interface {ifname} has no IPv4 address")
    v6 = [ipaddress.IPv6Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
          for msg in ipr.get_addr(index=found[0], family=AF_INET6)]
    mtu = int(ipr.get_links(found[0])[0].get("IFLA_MTU"))
    return Underlay(addresses[0], mtu, tuple(dict.fromkeys(a.network for a in addresses)),
                    next((a for a in v6 if not a.ip.is_link_local), None))


def pod_gso(ipr: IPRoute, ifname: str, cap: int | None) -> int:
    """What pods may send: the underlay's GSO limit, at most the fabric's `cap`."""
    from podnet.kernel import gso, rtnl

    found = ipr.link_lookup(ifname=ifname)
    with rtnl.RtnlSocket() as sock:  # the calling thread is in the node's namespace
        limits = gso.limits_of(sock, found[0] if found else None)
    return min(limits.ipv4, limits.ipv6, cap or limits.ipv4)

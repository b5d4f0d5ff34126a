"""The host side of `host join|leave --apply`: read the underlay, apply or undo a plan.

Runs in the calling process's network namespace (the host itself; the lab runs it
with nsenter), on an IPRoute the caller owns. Idempotent, as pyroute2's `ensure`: the
address and the routes are `replace`d, so a second run changes nothing and never
duplicates; routes tagged HOST_ROUTE_PROTO that the plan no longer has (a node that
left) are removed; `leave` removes exactly those routes and the podnet address.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.defaults import HOST_ROUTE_PROTO
from podnet.errors import KernelError
from podnet.hostjoin.plan import HostNet, HostRoute, JoinError, JoinPlan
from podnet.kernel import links

MAIN_TABLE = 254


def local_host(ipr: IPRoute, device: str | None, cluster: ipaddress.IPv4Network) -> HostNet:
    """This machine's underlay: `device` (else the default route's interface), its
    first IPv4 address outside the cluster CIDR, and the default gateway."""
    index = links.link_index(ipr, device) if device else links.uplink_index(ipr)
    if index is None:
        raise JoinError(f"--underlay: no interface {device!r} here" if device else
                        "--underlay: no default route to find the underlay interface by; give --underlay IF")
    name = str(links.link_attr(ipr, index, "IFLA_IFNAME"))
    found = [ipaddress.IPv4Interface(f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}")
             for m in ipr.get_addr(index=index, family=socket.AF_INET)]
    underlay = [a for a in found if a.ip not in cluster]
    if not underlay:
        raise JoinError(f"--underlay: interface {name} has no IPv4 address outside the cluster CIDR {cluster}")
    gateway = ""
    for route in ipr.get_default_routes(family=socket.AF_INET):
        if route.get("RTA_OIF") == index and route.get("RTA_GATEWAY"):
            gateway = str(route.get("RTA_GATEWAY"))
            break
    return HostNet(name, underlay[0], gateway)


def _index(ipr: IPRoute, name: str) -> int:
    index = links.link_index(ipr, name)
    if index is None:
        raise KernelError(f"host join: device {name} does not exist")
    return index


def _own_routes(ipr: IPRoute) -> dict[HostRoute, dict[str, Any]]:
    """The routes `host join` made (its protocol) -> what deletes each."""
    names = {msg["index"]: msg.get("IFLA_IFNAME") for msg in ipr.get_links()}
    out = {}
    for msg in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE, proto=HOST_ROUTE_PROTO):
        if msg["proto"] != HOST_ROUTE_PROTO:
            continue
        dst = f"{msg.get('RTA_DST')}/{msg['dst_len']}"
        spec = HostRoute(dst, str(msg.get("RTA_GATEWAY") or ""), str(names.get(msg.get("RTA_OIF"), "")),
                         str(msg.get("RTA_PREFSRC") or ""))
        out[spec] = {"dst": dst, "oif": msg.get("RTA_OIF"), "proto": HOST_ROUTE_PROTO, "table": MAIN_TABLE}
    return out


def _netlink(what: str, fn: Any, *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except NetlinkError as exc:
        if args[0] == "del" and exc.code in (errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL):
            return
        raise KernelError(f"host join: cannot {args[0]} {what}: {exc.args[1] if len(exc.args) > 1 else exc}") from None


def apply_plan(ipr: IPRoute, plan: JoinPlan, stale_address: str = "") -> list[str]:
    """Make the kernel hold the plan's address and exactly its routes; the changes
    made. `stale_address`: a podnet address this host had before (a re-join that got
    another one), removed."""
    index = _index(ipr, plan.device)
    changes = []
    if stale_address and stale_address != plan.pod_ip:
        changes += _remove_address(ipr, stale_address)
    have_addr = {f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}" for m in ipr.get_addr(index=index, family=socket.AF_INET)}
    if str(plan.address) not in have_addr:
        _remove_address(ipr, plan.pod_ip)  # the same address with another prefix length
        _netlink(f"address {plan.address}", ipr.addr, "replace", index=index, address=plan.pod_ip,
                 prefixlen=plan.address.network.prefixlen)
        changes.append(f"address {plan.address} dev {plan.device}")
    have = _own_routes(ipr)
    for spec, raw in have.items():
        if spec not in plan.routes:
            _netlink(f"route {spec.dst}", ipr.route, "del", **raw)
            changes.append(f"removed route {spec.dst}")
    for route in plan.routes:
        if route in have:
            continue
        _netlink(f"route {route.dst}", ipr.route, "replace", dst=route.dst, gateway=route.via,
                 oif=_index(ipr, route.dev), prefsrc=route.src, proto=HOST_ROUTE_PROTO, table=MAIN_TABLE)
        changes.append(f"route {route.dst} via {route.via} src {route.src}")
    return changes


def _remove_address(ipr: IPRoute, address: str) -> list[str]:
    removed = []
    for msg in ipr.get_addr(family=socket.AF_INET, address=address):
        _netlink(f"address {address}", ipr.addr, "del", index=msg["index"], address=address,
                 prefixlen=msg["prefixlen"])
        removed.append(f"removed address {address}/{msg['prefixlen']}")
    return removed


def undo(ipr: IPRoute, pod_ip: str = "") -> list[str]:
    """What `host leave --apply` does: every `host join` route, then the address."""
    changes = []
    for spec, raw in _own_routes(ipr).items():
        _netlink(f"route {spec.dst}", ipr.route, "del", **raw)
        changes.append(f"removed route {spec.dst}")
    if pod_ip:
        changes += _remove_address(ipr, pod_ip)
    return changes

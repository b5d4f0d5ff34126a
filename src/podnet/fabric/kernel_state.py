"""The fabric's kernel half: the node's fabric routes, neighbour and FDB entries made
to match a `Desired`, the difference written in batched netlink messages.

Why a module of its own, and not pyroute2 for the writes: a node converges its fabric
after every peer's join, and in a 50-node lab each agent wrote ~150 entries one
pyroute2 request at a time (~0.5 ms of Python each) and dumped its routes, neighbours
and FDB before every pass to diff them: the node loop was the agents' biggest CPU user
while a lab came up (py-spy `--gil` on an agent, 2026-12-06). Now a pass may diff
against the state the last one left (`RouteNetwork.apply(trust=True)`), and the kernel
is read (pyroute2 dumps) only when asked: the repair pass, `podnet doctor`, and
whenever nothing is known (start, after a failure).

Ownership, as ever: routes of the fabric's protocol number in the main table, and
neighbour and FDB entries on the fabric's own devices only.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from podnet.errors import KernelError
from podnet.kernel.rtnl import (
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NUD_PERMANENT,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    RtnlSocket,
    attr,
    mac_bytes,
)

if TYPE_CHECKING:
    from pyroute2 import IPRoute

RTNH_F_ONLINK = 4
NTF_SELF = 0x02
RT_SCOPE_NOWHERE = 255  # a delete that matches a route of any scope
GONE = (errno.ESRCH, errno.ENOENT)  # a delete of what is not there: someone converged it


@dataclass(frozen=True, order=True)
class RouteSpec:
    dst: str  # "10.244.2.0/24"
    gateway: str
    dev: str
    onlink: bool = False


@dataclass(frozen=True, order=True)
class NeighSpec:
    ip: str
    mac: str
    dev: str


@dataclass(frozen=True, order=True)
class FdbSpec:
    mac: str
    dst: str  # the remote underlay IP
    dev: str


class Wanted(Protocol):
    """What a pass wants (fabric/base.py `Desired`): its entries of each kind."""

    routes: set[RouteSpec]
    neighbours: set[NeighSpec]
    fdb: set[FdbSpec]


@dataclass(frozen=True)
class KernelState:
    """The fabric's entries, as the kernel holds them or as a pass wants them."""

    routes: frozenset[RouteSpec]
    neighbours: frozenset[NeighSpec]
    fdb: frozenset[FdbSpec]


@dataclass(frozen=True)
class Change:
    """One entry to write: `op` "replace" or "del" of a route, neighbour or FDB entry."""

    op: str
    spec: RouteSpec | NeighSpec | FdbSpec

    @property
    def what(self) -> str:
        """How reports name it (the doctor's findings and the drift metric read the first word)."""
        spec, added = self.spec, self.op == "replace"
        if isinstance(spec, RouteSpec):
            return (f"route {spec.dst}{f' via {spec.gateway}' if spec.gateway else ''} dev {spec.dev}" if added
                    else f"route {spec.dst}")
        if isinstance(spec, NeighSpec):
            return f"neigh {spec.ip} {spec.mac}" if added else f"neigh {spec.ip}"
        return f"fdb {spec.mac} dst {spec.dst}" if added else f"fdb {spec.mac}"


def wanted(want: Wanted, devices: Iterable[str]) -> KernelState:
    """What `want` puts in the kernel: its neighbour and FDB entries on `devices` only."""
    names = set(devices)
    return KernelState(frozenset(want.routes), frozenset(n for n in want.neighbours if n.dev in names),
                       frozenset(f for f in want.fdb if f.dev in names))


def read(ipr: IPRoute, proto: int, devices: Iterable[str]) -> tuple[KernelState, set[str]]:
    """The kernel's fabric entries (routes of `proto` in the main table; neighbour and
    FDB entries on `devices`), and which of `devices` exist."""
    links = {msg["index"]: str(msg.get("IFLA_IFNAME") or "") for msg in ipr.get_links()}
    routes = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family, table=RT_TABLE_MAIN, proto=proto):
            if msg["proto"] != proto or msg.get("RTA_DST") is None:
                continue
            dst = str(ipaddress.ip_network(f"{msg.get('RTA_DST')}/{msg['dst_len']}", strict=False))
            routes.add(RouteSpec(dst, msg.get("RTA_GATEWAY") or "", links.get(msg.get("RTA_OIF"), ""),
                                 bool(msg["flags"] & RTNH_F_ONLINK)))
    index = {name: i for i, name in links.items()}
    present = {name for name in devices if name in index}
    neighbours, fdb = set(), set()
    for name in present:
        neighbours |= {NeighSpec(str(n.get("NDA_DST")), str(n.get("NDA_LLADDR")), name)
                       for family in (socket.AF_INET, socket.AF_INET6)
                       for n in ipr.get_neighbours(family=family, ifindex=index[name])
                       if n["state"] & NUD_PERMANENT and n.get("NDA_LLADDR")}
        fdb |= {FdbSpec(str(n.get("NDA_LLADDR")), str(n.get("NDA_DST")), name)
                for n in ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=index[name])
                if n.get("NDA_DST") and n["ifindex"] == index[name]}
    return KernelState(frozenset(routes), frozenset(neighbours), frozenset(fdb)), present


def changes(have: KernelState, want: KernelState) -> list[Change]:
    """What turns `have` into `want`, in the order it is written: routes, then each
    device's neighbours, then its FDB; within each, stale entries before new ones."""
    out = [Change("del", r) for r in sorted(have.routes - want.routes)]
    out += [Change("replace", r) for r in sorted(want.routes - have.routes)]
    for name in sorted({e.dev for e in (*have.neighbours, *have.fdb, *want.neighbours, *want.fdb)}):
        for kind_have, kind_want in ((have.neighbours, want.neighbours), (have.fdb, want.fdb)):
            out += [Change("del", e) for e in sorted(kind_have - kind_want) if e.dev == name]
            out += [Change("replace", e) for e in sorted(kind_want - kind_have) if e.dev == name]
    return out


def write(todo: list[Change], proto: int, sock: RtnlSocket | None = None) -> tuple[list[str], list[str], bool]:
    """Write `todo` through `sock` (None: a socket of its own, in the calling thread's
    namespace): (added, removed, complete). Not complete: a neighbour or FDB entry's
    device is missing (skipped; the next read pass looks again). A route's missing
    device, or any refusal but a delete of what is gone, raises KernelError once every
    request has been answered."""
    added: list[str] = []
    removed: list[str] = []
    if not todo:
        return added, removed, True
    with contextlib.nullcontext(sock) if sock is not None else RtnlSocket() as sock:
        indexes = {name: sock.link_index(name) for name in {c.spec.dev for c in todo}}
        requests, sent, complete = [], [], True
        for change in todo:
            index = indexes[change.spec.dev]
            if index is None:
                if change.op == "del":
                    continue  # gone with its device
                if isinstance(change.spec, RouteSpec):
                    raise KernelError(f"fabric: device {change.spec.dev} does not exist")
                complete = False
                continue
            requests.append(_request(change, index, proto))
            sent.append(change)
        codes = sock.batch(requests)
    failed = []
    for change, code in zip(sent, codes, strict=True):
        if code == 0 or (change.op == "del" and code in GONE):
            (added if change.op == "replace" else removed).append(change.what)
        else:
            failed.append(f"cannot {change.op} {change.what}: {os.strerror(code)}")
    if failed:
        raise KernelError(f"fabric: {failed[0]}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
    return added, removed, complete


def _request(change: Change, index: int, proto: int) -> tuple[int, int, bytes]:
    """The netlink request (type, flags, body) of one change."""
    spec, replace = change.spec, change.op == "replace"
    flags = NLM_F_CREATE | NLM_F_REPLACE if replace else 0
    if isinstance(spec, RouteSpec):
        net = ipaddress.ip_network(spec.dst)
        family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
        body = RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, proto,
                          RT_SCOPE_UNIVERSE if replace else RT_SCOPE_NOWHERE, RTN_UNICAST,
                          RTNH_F_ONLINK if spec.onlink and replace else 0)
        body += attr(RTA_DST, net.network_address.packed)
        if spec.gateway:
            body += attr(RTA_GATEWAY, ipaddress.ip_address(spec.gateway).packed)
        body += attr(RTA_OIF, struct.pack("=i", index))
        return (RTM_NEWROUTE if replace else RTM_DELROUTE), flags, body
    kind = RTM_NEWNEIGH if replace else RTM_DELNEIGH
    state = NUD_PERMANENT if replace else 0
    if isinstance(spec, NeighSpec):
        address = ipaddress.ip_address(spec.ip)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        body = NDMSG.pack(family, index, state, 0, RTN_UNICAST) + attr(NDA_DST, address.packed)
        return kind, flags, body + attr(NDA_LLADDR, mac_bytes(spec.mac))
    body = NDMSG.pack(socket.AF_BRIDGE, index, state, NTF_SELF, 0) + attr(NDA_LLADDR, mac_bytes(spec.mac))
    return kind, flags, body + attr(NDA_DST, ipaddress.ip_address(spec.dst).packed)

"""The pod network's MTU following the underlay's (issue 18).

The agent sizes the pod network from its underlay interface at start (the fabric's
MTU: the underlay's less the encapsulation). An underlay whose MTU changes later (a
NIC set to jumbo frames, a VPN in the path, a link replaced) would leave pods with the
old size: too large and their big packets black-hole, too small and throughput is
lost. So the node loop reads the underlay's MTU over netlink at most LOOK_SECONDS
apart (its passes come at most WATCH_TIMEOUT apart), and when it changed:

    1. every pod of this node: its host veth, then its own interface from inside its
       namespace (endpoint records of this node name both), to the new pod MTU;
    2. the node's own devices and the conflist (node_service._prepare, given the new
       underlay MTU): the fabric device, the pod bridge, and what new pods get;
    3. the change, its figures and the pods it could not resize, kept for `podnet
       status` (the last CHANGES_KEPT) and logged.

A pod whose namespace is gone is skipped (its DEL is on the way); one that fails is
named, and the next change tries it again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.kernel import links
from podnet.model.endpoint import EndpointRecord, decode_entries

if TYPE_CHECKING:
    from podnet.agent.node_service import NodeService

log = logging.getLogger("podnet.node")

CHANGES_KEPT = 10


@dataclass
class MtuChange:
    at: float
    underlay: tuple[int, int]  # before, after
    pods_mtu: tuple[int, int]
    resized: list[str] = field(default_factory=list)  # "<netns> <ifname>" of each pod resized
    failed: list[str] = field(default_factory=list)  # the same, with why

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "underlay": list(self.underlay), "pods": list(self.pods_mtu),
                "resized": len(self.resized), "failed": self.failed}


LOOK_SECONDS = 1.0


class UnderlayLook:
    """The node loop's look at its underlay's MTU: one netlink request by name on a
    socket kept open, at most every LOOK_SECONDS. Why: the loop wakes for every batch of
    store events, and a pyroute2 lookup each time (a dump of every link: one per pod)
    was the largest part of an agent's CPU while a 20-node lab attached its pods."""

    def __init__(self, clock: Any = time.monotonic) -> None:  # noqa: ANN401 - a clock
        self._clock = clock
        self._sock: Any = None  # kernel/rtnl.RtnlSocket, opened by the loop's thread
        self._next = 0.0

    def due(self) -> bool:
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + LOOK_SECONDS
        return True

    def mtu(self, ifname: str) -> int | None:
        from podnet.kernel.rtnl import RtnlSocket

        if self._sock is None:
            self._sock = RtnlSocket()  # in this thread's namespace: the node's
        return self._sock.link_mtu(ifname) or None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def pod_interfaces(records: Iterable[EndpointRecord], node: str) -> list[tuple[tuple[str, ...], str, str]]:
    """(host links, netns path, interface) of each ready pod of `node` (pure)."""
    out = []
    for record in records:
        if not record.local_to(node):
            continue
        for interface in record.result.get("interfaces") or []:
            if interface.get("sandbox") and interface.get("name"):
                out.append((tuple(record.host_links), record.netns, str(interface["name"])))
    return out


def resize_pods(ipr: Any, pods: list[tuple[tuple[str, ...], str, str]], mtu: int,  # noqa: ANN401 - IPRoute
                change: MtuChange) -> None:
    """Each pod's host links (in this namespace) and its own interface (inside its
    namespace) set to `mtu`; what happened goes into `change`."""
    from podnet.kernel import netns

    for host_links, path, name in pods:
        what = f"{path} {name}"
        try:
            for link in host_links:
                _set_mtu(ipr, link, mtu)
            if not os.path.exists(path):
                continue  # the pod is going: its DEL is on the way
            fd = netns.open_netns(path)
            try:
                with netns.entered(fd):
                    _set_mtu_here(name, mtu)
            finally:
                os.close(fd)
            change.resized.append(what)
        except Exception as exc:  # noqa: BLE001 - one pod must not stop the others; named
            change.failed.append(f"{what}: {getattr(exc, 'msg', None) or exc}")


def _set_mtu(ipr: Any, name: str, mtu: int) -> None:  # noqa: ANN401 - pyroute2 IPRoute
    index = links.link_index(ipr, name)
    if index is not None:
        ipr.link("set", index=index, mtu=mtu)


def _set_mtu_here(name: str, mtu: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:  # opened inside the pod's namespace (this thread entered it)
        _set_mtu(ipr, name, mtu)


def new_change(before: int, after: int, pods_before: int, pods_after: int) -> MtuChange:
    return MtuChange(time.time(), (before, after), (pods_before, pods_after))


def follow(node: NodeService) -> None:
    """One look at the underlay's MTU from `node`'s loop; a change re-sizes the node's
    pods, its devices and its conflist."""
    assert node.options is not None and node.fabric is not None and node.ctx is not None
    if not node.mtu_look.due():
        return
    now = node.mtu_look.mtu(node.options.underlay)
    before = node.ctx.underlay_mtu
    if now is None or now == before:
        return
    ipr = node._iproute()
    pods = node.fabric.mtu(now)
    change = new_change(before, now, node.fabric.mtu(before), pods)
    records = decode_entries(node._store().list(keys.ENDPOINTS))
    resize_pods(ipr, pod_interfaces(records, node.options.node), pods, change)
    with node._lock:
        node.ctx = replace(node.ctx, underlay_mtu=now)
        node.mtu_changes = [*node.mtu_changes, change][-CHANGES_KEPT:]
    node._prepare()
    log.info("node: underlay %s MTU %d -> %d: pods %d -> %d, %d pod interface(s) resized%s",
             node.options.underlay, before, now, change.pods_mtu[0], pods, len(change.resized),
             f", failed: {'; '.join(change.failed)}" if change.failed else "")

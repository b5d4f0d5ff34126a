"""A clusterset plan (plan.py) made real in the calling thread's namespace (the node's).

- The encrypted tunnel (sleeve.py) runs only on the gateway in charge of peers joined
  with --encrypt, started before the routes into its TUN are applied.
- pncs0 exists only on the gateway in charge; it is recreated when its identity (VNI,
  port, tunnel address, the interface holding that address) differs, and deleted
  elsewhere. Its MTU is that interface's less the VXLAN overhead: a pod's packet too
  big for it gets "fragmentation needed" back from the gateway, never a silent drop.
- Routes, next hops and FDB entries go through the fabrics' shared apply with their
  own route protocol (80), so neither side ever removes the other's routes.
- The nft table is one transaction, written when it differs from what this process
  last wrote, and every REWRITE_PASSES passes anyway (someone may have deleted it).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.clusterset.model import ClusterInfo
from podnet.clusterset.plan import (
    DEVICE,
    OVERHEAD,
    PORT,
    VNI,
    NodePlan,
    Tunnel,
    nft_script,
    removal_script,
)
from podnet.clusterset.sleeve import ClustersetSleeve
from podnet.defaults import CLUSTERSET_ROUTE_PROTO
from podnet.errors import KernelError
from podnet.fabric.base import ApplyReport, RouteNetwork
from podnet.fabric.vxlan import ensure_vxlan

REWRITE_PASSES = 30


class ClustersetRoutes(RouteNetwork):
    """The shared route/neighbour/FDB apply, on pncs0 and protocol 80."""

    name = "clusterset"
    device = DEVICE
    route_proto = CLUSTERSET_ROUTE_PROTO


class ClustersetKernel:
    """Owns pncs0, the routes of protocol 80 and `ip podnet-clusterset` here."""

    def __init__(self, nft) -> None:  # noqa: ANN001 - kernel/nft.NftPort
        self.nft = nft
        self.routes = ClustersetRoutes()
        self.sleeve = ClustersetSleeve()
        self._written = ""
        self._passes = 0

    def apply(self, me: ClusterInfo, plan: NodePlan, secrets: Mapping[str, bytes] | None = None,
              problems: list[str] | None = None) -> ApplyReport:
        """`secrets`: the encrypted tunnels' (peer -> secret); `problems` gets what
        keeps a planned part from working (a peer without its key)."""
        with IPRoute() as ipr:
            if plan.tunnel is not None:
                self._ensure_tunnel(ipr, plan.tunnel)
            else:
                _delete_link(ipr, DEVICE)
            if plan.sleeve is not None:
                holder = _holder_of(ipr, plan.sleeve.listen)
                if holder is None:
                    raise KernelError(f"clusterset: no interface here holds the tunnel address {plan.sleeve.listen}")
                self.sleeve.sync(me.name, plan.sleeve, secrets or {}, holder[1], problems if problems is not None
                                 else [])
            else:
                self.sleeve.stop()
            report = self.routes.apply(ipr, plan.fabric)
        script = nft_script(me, plan.remote_cidrs, gateway=plan.tunnel is not None)
        self._passes += 1
        if script != self._written or self._passes % REWRITE_PASSES == 0:
            self.nft.apply(script)
            self._written = script
        return report

    def remove(self) -> None:
        """Everything this node holds for the clusterset (the last peer is gone)."""
        self.sleeve.stop()
        with IPRoute() as ipr:
            _delete_link(ipr, DEVICE)
            self.routes.apply(ipr, NodePlan().fabric)
        if self._written != removal_script():
            self.nft.apply(removal_script())
            self._written = removal_script()

    def _ensure_tunnel(self, ipr: IPRoute, tunnel: Tunnel) -> None:
        holder = _holder_of(ipr, tunnel.local)
        if holder is None:
            raise KernelError(f"clusterset: no interface here holds the tunnel address {tunnel.local}",
                              "the gateway candidate's address must be one of this node's (podnet cluster gateway)")
        index, mtu = holder
        ensure_vxlan(ipr, DEVICE, vni=VNI, local=tunnel.local, link=index, port=PORT, mac=tunnel.mac,
                     mtu=mtu - OVERHEAD, what="clusterset")


def _holder_of(ipr: IPRoute, address: str) -> tuple[int, int] | None:
    """(index, MTU) of the interface holding `address`."""
    for msg in ipr.get_addr(family=socket.AF_INET):
        if msg.get("IFA_ADDRESS") == address:
            link = ipr.get_links(msg["index"])[0]
            return msg["index"], int(link.get("IFLA_MTU") or 1500)
    return None


def _delete_link(ipr: IPRoute, name: str) -> None:
    found = ipr.link_lookup(ifname=name)
    if found:
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise KernelError(f"clusterset: cannot delete {name}: {exc}") from None

"""VXLAN fabric, after Flannel's vxlan backend.

Design notes:
- One VXLAN device per node (`pnvx0`, VNI 1, UDP 8472 like Flannel; learning off),
  bound to the underlay interface and address. Its MAC (the VTEP MAC) is derived
  from the node name, so a restarted agent or a recreated device keeps the MAC its
  peers already know; it is published in the lease as backend.vtep_mac.
- The VTEP IP of a node is its block's network address (10.244.N.0), put on pnvx0 as
  a /32, as Flannel does. Per remote node exactly three kernel objects:
    route  <block> via <vtep ip> dev pnvx0 onlink      (L3: which VTEP)
    neigh  <vtep ip> lladdr <vtep mac> permanent       (no ARP across the overlay)
    fdb    <vtep mac> dst <underlay ip> self permanent (which host carries it)
  With learning off and no flooding, nothing is ever discovered by traffic: the store
  is the only source of truth, which keeps the data plane predictable.
- Dual stack: IPv6 pods ride the same device over the IPv4 underlay (the inner frame
  is Ethernet; its family does not matter to the tunnel). The IPv6 VTEP is the twin
  block's network address (/128 on pnvx0), with its own onlink route and permanent
  neighbour entry per peer, and the same FDB entry.
- MTU = underlay MTU - 50 (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14),
  detected from the underlay interface, never typed.
- No BIG TCP through the tunnel (kernel/gso.py): an encapsulated packet over 64 KiB
  cannot be expressed in the outer IPv4 header, and measured it collapses throughput
  (0.5 instead of 12 Gbit/s). So pnvx0 keeps the legacy 64 KiB GSO limit and the
  node's pod conflist caps its pods there too (`gso_cap`, "gsoMaxSize"): a pod packet
  bigger than pnvx0 takes would be segmented in software at pnvx0.
- Peers need no shared L2 segment: VXLAN rides the routed underlay.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.cluster.leases import vtep_ip_of
from podnet.errors import KernelError
from podnet.fabric.base import (
    OK,
    Desired,
    FabricContext,
    FdbSpec,
    NeighSpec,
    RouteNetwork,
    RouteSpec,
    peer_blocks,
    peer_blocks6,
    valid_peers,
)
from podnet.kernel import gso, links, rtnl
from podnet.model.cluster import NodeLease

DEVICE = "pnvx0"
VNI = 1
PORT = 8472
OVERHEAD = 50


def vtep_mac(node: str) -> str:
    """A stable, locally administered unicast MAC for `node`'s VTEP."""
    octets = bytearray(hashlib.sha256(f"podnet-vtep\0{node}".encode()).digest()[:6])
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


class VxlanFabric(RouteNetwork):
    name = "vxlan"
    device = DEVICE
    gso_cap = gso.LEGACY

    def mtu(self, underlay_mtu: int) -> int:
        return underlay_mtu - OVERHEAD

    def backend_data(self, node: str) -> dict[str, Any]:
        return {"vtep_mac": vtep_mac(node), "vni": VNI, "port": PORT}

    def desired(self, ctx: FabricContext, peers: Iterable[NodeLease], claims: Mapping[str, str]) -> Desired:
        good, refused = valid_peers(ctx, peers, claims)
        want = Desired(peers=dict(refused))
        for peer in good:
            mac = peer.backend.get("vtep_mac")
            if peer.fabric != self.name or not isinstance(mac, str):
                want.peers[peer.name] = f"refused: peer runs fabric {peer.fabric!r} without a VTEP MAC"
                continue
            vtep = str(vtep_ip_of(peer.block))
            for block in peer_blocks(ctx, peer, claims):  # every block via the peer's one VTEP
                want.routes.add(RouteSpec(str(block), vtep, DEVICE, onlink=True))
            want.neighbours.add(NeighSpec(vtep, mac.lower(), DEVICE))
            twins = peer_blocks6(ctx, peer, claims)
            if twins:  # IPv6 inside the same tunnel: the twin's network address is the IPv6 VTEP
                vtep6 = str(twins[0].network_address)
                want.routes.update(RouteSpec(str(b), vtep6, DEVICE, onlink=True) for b in twins)
                want.neighbours.add(NeighSpec(vtep6, mac.lower(), DEVICE))
            want.fdb.add(FdbSpec(mac.lower(), peer.underlay_ip, DEVICE))
            want.peers[peer.name] = OK
        return want

    def setup(self, ipr: IPRoute, ctx: FabricContext) -> None:
        """pnvx0 as specified (recreated if its identity differs), up, with the VTEP IP."""
        underlay = ipr.link_lookup(ifname=ctx.own.underlay_if)
        if not underlay:
            raise KernelError(f"vxlan: underlay interface {ctx.own.underlay_if} does not exist")
        index = ensure_vxlan(ipr, DEVICE, vni=VNI, local=str(ctx.underlay.ip), link=underlay[0], port=PORT,
                             mac=vtep_mac(ctx.own.name), mtu=self.mtu(ctx.underlay_mtu), what="vxlan")
        with rtnl.RtnlSocket() as sock:  # this thread is in the node's namespace
            gso.ensure(sock, index, gso.DEFAULT)
        twin = ctx.twin(ctx.own.block)
        wanted = {(str(vtep_ip_of(ctx.own.block)), 32)}
        if twin is not None:
            wanted.add((str(twin.network_address), 128))
        have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)
                if a.get("IFA_ADDRESS") and not a.get("IFA_ADDRESS").startswith("fe80:")}
        for addr, plen in have - wanted:
            ipr.addr("del", index=index, address=addr, prefixlen=plen)  # an old block's VTEP IP
        for addr, plen in sorted(wanted - have):
            ipr.addr("add", index=index, address=addr, prefixlen=plen,
                     **({"flags": links.IFA_F_NODAD} if plen == 128 else {}))


def ensure_vxlan(ipr: IPRoute, name: str, *, vni: int, local: str, link: int, port: int, mac: str, mtu: int,
                 what: str) -> int:
    """VXLAN device `name` as specified (learning off; recreated when its identity
    differs: VNI, local address, underlying link, port), with `mac` and `mtu`, up; its
    index. The fabric's pnvx0 and the clusterset's tunnel (clusterset/kernel.py)."""
    found = ipr.link_lookup(ifname=name)
    if found and not _matches(ipr, found[0], vni, local, link, port):
        ipr.link("del", index=found[0])
        found = []
    if not found:
        try:
            ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=local, vxlan_link=link,
                     vxlan_port=port, vxlan_learning=0, address=mac, mtu=mtu)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise KernelError(f"{what}: cannot create {name}: {exc}") from None
        found = ipr.link_lookup(ifname=name)
    index = found[0]
    attrs = ipr.get_links(index)[0]
    if attrs.get("IFLA_ADDRESS") != mac or attrs.get("IFLA_MTU") != mtu:
        ipr.link("set", index=index, address=mac, mtu=mtu)
    ipr.link("set", index=index, state="up")
    return index


def _matches(ipr: IPRoute, index: int, vni: int, local: str, link: int, port: int) -> bool:
    info = ipr.get_links(index)[0]
    if info.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) != "vxlan":
        return False
    data = info.get(("IFLA_LINKINFO", "IFLA_INFO_DATA"))
    attrs = dict(data.get("attrs", [])) if data else {}
    return (
        attrs.get("IFLA_VXLAN_ID") == vni
        and attrs.get("IFLA_VXLAN_LOCAL") == local
        and attrs.get("IFLA_VXLAN_LINK") == link
        and attrs.get("IFLA_VXLAN_PORT") == port
        and not attrs.get("IFLA_VXLAN_LEARNING")
    )

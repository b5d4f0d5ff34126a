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
- Dual stack: the IPv6 VTEP is the twin block's network address (/128), with an
  onlink route and a permanent neighbour entry per peer. Where both nodes have an
  IPv6 underlay, IPv6 pods ride `pnvx6` (VNI 1, port 8472, bound to the IPv6
  underlay address; Flannel's flannel-v6.1), with its own FDB entry to the peer's
  IPv6 underlay address; the pods' MTU is then the IPv6 tunnel's (underlay - 70, one
  MTU for both families). Otherwise they ride pnvx0 over the IPv4 underlay (the inner
  frame is Ethernet: its family does not matter to the tunnel).
- MTU = underlay MTU - 50 (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14),
  detected from the underlay interface, never typed.
- No BIG TCP through the tunnel (kernel/gso.py): an encapsulated packet over 64 KiB
  cannot be expressed in the outer IPv4 header, and measured it collapses throughput
  (0.5 instead of 12 Gbit/s). So pnvx0 keeps the legacy 64 KiB GSO limit and the
  node's pod conflist caps its pods there too (`gso_cap`, "gsoMaxSize"): a pod packet
  bigger than pnvx0 takes would be segmented in software at pnvx0.
- Peers need no shared L2 segment: VXLAN rides the routed underlay.
- The tunnel's outer packets are not tracked (fabric/untracked.py, `inet
  podnet-fabric`): nothing NATs or judges them by state, and tracking them costs CPU
  on both nodes (issue 19). `--fastpath ebpf` (fabric/fastpath.py) takes pod-to-pod
  packets past the bridge and netfilter, and writes and reads their VXLAN header
  itself, past pnvx0 (fabric/fastpath_tunnel.py); pnvx0 carries what it does not take.
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
from podnet.fabric import untracked
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
from podnet.fabric.fastpath import Tunnel, TunnelPeer
from podnet.kernel import gso, links, rtnl
from podnet.model.cluster import NodeLease

DEVICE = "pnvx0"
DEVICE6 = "pnvx6"  # a dual-stack node's tunnel over its IPv6 underlay (Flannel's flannel-v6.1)
VNI = 1
PORT = 8472
OVERHEAD = 50
OVERHEAD6 = 70  # outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14


def vtep_mac(node: str) -> str:
    """A stable, locally administered unicast MAC for `node`'s VTEP."""
    octets = bytearray(hashlib.sha256(f"podnet-vtep\0{node}".encode()).digest()[:6])
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


class VxlanFabric(RouteNetwork):
    name = "vxlan"
    device = DEVICE
    gso_cap = gso.LEGACY
    ipv6_outer = True  # IPv6 pods over an IPv6 underlay where both ends have one (the gossip fabric: never)

    def __init__(self) -> None:
        self.outer6 = False  # this node carries IPv6 pods over its IPv6 underlay (pnvx6), set by setup()
        self._untracked: tuple[str, int] | None = None  # (underlay, port) of the table applied

    @property
    def fastpath_ok(self) -> bool:  # type: ignore[override]
        return self.name == "vxlan"  # (the gossip fabric's relayed routes: not through it)

    def fastpath_device(self, ctx: FabricContext) -> str:
        return DEVICE

    def fastpath_tunnel(self, ctx: FabricContext) -> Tunnel:
        """The fast path writes and reads this fabric's VXLAN itself (fabric/fastpath_tunnel.py)."""
        return Tunnel(ctx.own.underlay_if, str(ctx.underlay.ip), vtep_mac(ctx.own.name), PORT, VNI)

    def fastpath_peers(self, want: Desired) -> dict[str, TunnelPeer]:
        """Each IPv4 block routed via pnvx0 -> its VTEP's MAC (the neighbour entry) and
        the host behind that MAC (the FDB entry): the same three entries the kernel
        path follows."""
        macs = {n.ip: n.mac for n in want.neighbours if n.dev == DEVICE}
        hosts = {f.mac: f.dst for f in want.fdb if f.dev == DEVICE and ":" not in f.dst}
        ends = {}
        for route in want.routes:
            mac = macs.get(route.gateway)
            if route.dev == DEVICE and ":" not in route.dst and mac in hosts:
                ends[route.dst] = TunnelPeer(hosts[mac], mac)
        return ends

    @property
    def devices(self) -> tuple[str, ...]:
        return (DEVICE, DEVICE6) if self.outer6 else (DEVICE,)

    def mtu(self, underlay_mtu: int) -> int:
        """The pods' MTU: what the tunnel leaves of the underlay's, the IPv6 tunnel's
        (20 bytes more of outer header) when this node uses one: pods have one MTU."""
        return underlay_mtu - (OVERHEAD6 if self.outer6 else OVERHEAD)

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
            mac = mac.lower()
            vtep = str(vtep_ip_of(peer.block))
            for block in peer_blocks(ctx, peer, claims):  # every block via the peer's one VTEP
                want.routes.add(RouteSpec(str(block), vtep, DEVICE, onlink=True))
            want.neighbours.add(NeighSpec(vtep, mac, DEVICE))
            want.fdb.add(FdbSpec(mac, peer.underlay_ip, DEVICE))
            twins = peer_blocks6(ctx, peer, claims)
            if twins:  # the twin's network address is the peer's IPv6 VTEP
                dev = DEVICE6 if self.outer6 and peer.underlay_ip6 else DEVICE
                vtep6 = str(twins[0].network_address)
                want.routes.update(RouteSpec(str(b), vtep6, dev, onlink=True) for b in twins)
                want.neighbours.add(NeighSpec(vtep6, mac, dev))
                if dev == DEVICE6:
                    want.fdb.add(FdbSpec(mac, str(peer.underlay_ip6), DEVICE6))
            want.peers[peer.name] = OK
        return want

    def setup(self, ipr: IPRoute, ctx: FabricContext) -> None:
        """pnvx0 as specified (recreated if its identity differs), up, with the VTEP IP;
        on a dual-stack node with an IPv6 underlay, pnvx6 beside it, with the IPv6 VTEP."""
        underlay = ipr.link_lookup(ifname=ctx.own.underlay_if)
        if not underlay:
            raise KernelError(f"vxlan: underlay interface {ctx.own.underlay_if} does not exist")
        twin = ctx.twin(ctx.own.block)
        self.outer6 = self.ipv6_outer and twin is not None and ctx.underlay6 is not None
        mac, mtu = vtep_mac(ctx.own.name), self.mtu(ctx.underlay_mtu)
        index = ensure_vxlan(ipr, DEVICE, vni=VNI, local=str(ctx.underlay.ip), link=underlay[0], port=PORT,
                             mac=mac, mtu=mtu, what="vxlan")
        vtep6 = (str(twin.network_address), 128) if twin is not None else None
        _vtep_addresses(ipr, index, {(str(vtep_ip_of(ctx.own.block)), 32), *([vtep6] if vtep6 and not self.outer6 else [])})
        if self.outer6:
            assert ctx.underlay6 is not None and vtep6 is not None
            index6 = ensure_vxlan(ipr, DEVICE6, vni=VNI, local=str(ctx.underlay6.ip), link=underlay[0], port=PORT,
                                  mac=mac, mtu=mtu, what="vxlan")
            _vtep_addresses(ipr, index6, {vtep6})
        elif found := ipr.link_lookup(ifname=DEVICE6):  # no IPv6 underlay (any more): IPv6 rides pnvx0
            ipr.link("del", index=found[0])
        with rtnl.RtnlSocket() as sock:  # this thread is in the node's namespace
            for name in self.devices:
                gso.ensure(sock, sock.link_index(name), gso.DEFAULT)
        if self._untracked != (ctx.own.underlay_if, PORT):  # once per agent: an nft process per repair pass costs
            untracked.ensure(ctx.own.underlay_if, PORT)
            self._untracked = (ctx.own.underlay_if, PORT)
        self.setup_fastpath(ipr, ctx)


def _vtep_addresses(ipr: IPRoute, index: int, wanted: set[tuple[str, int]]) -> None:
    """Exactly `wanted` (address, prefix length) on a VTEP device, link-local aside (an
    old block's VTEP IP goes)."""
    have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)
            if a.get("IFA_ADDRESS") and not a.get("IFA_ADDRESS").startswith("fe80:")}
    for addr, plen in have - wanted:
        ipr.addr("del", index=index, address=addr, prefixlen=plen)
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
            where = {"vxlan_local6": local} if ":" in local else {"vxlan_local": local}
            ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_link=link,
                     vxlan_port=port, vxlan_learning=0, address=mac, mtu=mtu, **where)
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
        and attrs.get("IFLA_VXLAN_LOCAL6" if ":" in local else "IFLA_VXLAN_LOCAL") == local
        and attrs.get("IFLA_VXLAN_LINK") == link
        and attrs.get("IFLA_VXLAN_PORT") == port
        and not attrs.get("IFLA_VXLAN_LEARNING")
    )

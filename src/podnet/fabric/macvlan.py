"""macvlan fabric: pods sit straight on the nodes' L2 segment, with no bridge, no
tunnel and no routing hop.

Design notes:
- The pod segment is the cluster CIDR, a second prefix on the nodes' L2 (a rack's
  /24 has too few addresses for pods): the segment's router (`gateway`, by default
  the CIDR's first address) holds an address in it, pods are macvlan children of
  their node's underlay interface with `address/<segment prefix>` and the router as
  default gateway, so pod to pod (any node) and pod to the world are one L2 hop.
  Block IPAM still numbers pods in the cluster store, a block per node, so no two
  nodes ever hand out one address on the shared segment; the block holding the
  router's address is kept for the router and plain hosts (leases.keep_for_hosts).
- A macvlan parent never exchanges frames with its own children (the classic
  macvlan limitation), so each node gets a shim: `pnmv0`, a bridge-mode macvlan
  sibling of its pods, holding its block's first address (which IPAM never hands
  out) as a /32, and the route to the segment through it. The node then reaches its
  own pods (readiness probes, `podnet probe`) and every other pod through the shim.
- Services: pods route the service CIDR via their node's shim address, so the
  node's service table DNATs them; `inet podnet-macvlan` masquerades what came in
  on the shim and was DNATed, or a backend on the segment would answer the client
  straight over L2 with an address it never asked.
- Peers get no routes (the segment is on-link); a peer is accepted only when its
  underlay address is on this node's segment and it runs the same segment.
- Dual stack: the IPv6 pool is a second on-link prefix of the same L2, its router at
  the router's place in the kept block's twin; the shim also holds its twin block's
  first IPv6 address.
- Real-network mapping: the router's interface on the nodes' VLAN gets the pod
  prefix as a secondary address (or a second VLAN on a trunk, with the nodes'
  shims and pods on it), the pod prefix is routed to it from the rest of the
  network, and the hosts' block is kept out of the DHCP scope of whatever else
  lives there.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.cluster.dualstack import Pools, gateway6_of
from podnet.cluster.leases import gateway_of
from podnet.errors import KernelError
from podnet.fabric.base import OK, Desired, FabricContext, RouteNetwork, RouteSpec, valid_peers
from podnet.kernel import links
from podnet.model.cluster import NodeLease

SHIM = "pnmv0"
NAT_TABLE = "podnet-macvlan"


# The node's address on the segment: its lease block's first (the block's IPAM
# gateway, never a pod's).
shim_address = gateway_of


def nat_script(shim: str = SHIM) -> str:
    """Masquerade service traffic a pod sent through the shim (one atomic script,
    the table rebuilt whole)."""
    return (f"table inet {NAT_TABLE}\ndelete table inet {NAT_TABLE}\n"
            f"table inet {NAT_TABLE} {{\n"
            f"  chain postrouting {{ type nat hook postrouting priority srcnat + 1; policy accept;\n"
            f'    iifname "{shim}" ct status dnat masquerade comment "macvlan pod to a service: answer via the node"\n'
            f"  }}\n}}\n")


class MacvlanFabric(RouteNetwork):
    name = "macvlan"

    def __init__(self) -> None:
        self.segment: ipaddress.IPv4Network | None = None  # the cluster CIDR, on-link for pods
        self.gateway: ipaddress.IPv4Address | None = None  # the segment's router
        self.segment6: ipaddress.IPv6Network | None = None  # dual stack: the IPv6 pool, on-link too
        self.gateway6: ipaddress.IPv6Address | None = None  # ... and the router's address in it
        self._nat_done = False

    def configure(self, segment: str, gateway: str | None, pools: Pools | None = None) -> None:
        """The segment (the cluster CIDR) and its router (default: its first address);
        with an IPv6 pool (`pools`), the IPv6 segment too, its router at the same place
        in its block's twin (so the block kept for the router keeps both addresses)."""
        self.segment = ipaddress.IPv4Network(segment)
        self.gateway = ipaddress.IPv4Address(gateway) if gateway else self.segment[1]
        if self.gateway not in self.segment:
            raise ValueError(f"segment gateway {self.gateway} is outside the segment {self.segment}")
        if pools is not None and pools.v6 is not None:
            kept = ipaddress.IPv4Network(f"{self.gateway}/{pools.block_prefix}", strict=False)
            twin = pools.twin(kept)
            assert twin is not None
            self.segment6 = pools.v6
            self.gateway6 = twin.network_address + (int(self.gateway) - int(kept.network_address))

    def backend_data(self, node: str) -> dict[str, Any]:
        """What `podnet host join` and the peers read: the segment and its router."""
        return {"segment": str(self.segment), "gateway": str(self.gateway),
                **({"segment6": str(self.segment6), "gateway6": str(self.gateway6)} if self.segment6 else {})}

    def segments(self) -> list[tuple[str, str]]:
        """(subnet, router) of each family's pod segment, IPv4 first: the conflist's."""
        out = [(str(self.segment), str(self.gateway))]
        if self.segment6 is not None:
            out.append((str(self.segment6), str(self.gateway6)))
        return out

    def setup(self, ipr: IPRoute, ctx: FabricContext) -> None:
        """The shim (a bridge-mode macvlan of the underlay) with this node's address,
        up, and the services' masquerade table (once per agent)."""
        underlay = ipr.link_lookup(ifname=ctx.own.underlay_if)
        if not underlay:
            raise KernelError(f"macvlan fabric: underlay {ctx.own.underlay_if} does not exist")
        found = ipr.link_lookup(ifname=SHIM)
        try:
            if not found:
                ipr.link("add", ifname=SHIM, kind="macvlan", link=underlay[0], macvlan_mode="bridge",
                         mtu=ctx.underlay_mtu)
                found = ipr.link_lookup(ifname=SHIM)
            index = found[0]
            ipr.link("set", index=index, state="up")
            have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)
                    if not str(a.get("IFA_ADDRESS")).startswith("fe80:")}
            wanted = {(str(shim_address(ctx.own.block)), 32)}
            twin = ctx.twin(ctx.own.block)
            if twin is not None:  # the IPv6 shim: the twin's first address
                wanted.add((str(gateway6_of(twin)), 128))
            for stale, plen in have - wanted:
                ipr.addr("del", index=index, address=stale, prefixlen=plen)
            for address, plen in sorted(wanted - have):
                ipr.addr("add", index=index, address=address, prefixlen=plen,
                         **({"flags": links.IFA_F_NODAD} if plen == 128 else {}))
        except NetlinkError as exc:
            if exc.code == errno.EINVAL:
                raise KernelError(f"macvlan fabric: cannot make the shim {SHIM} on {ctx.own.underlay_if} "
                                  "(a passthru macvlan holds it?)") from None
            raise KernelError(f"macvlan fabric: shim {SHIM}: {exc}") from None
        if not self._nat_done:
            from podnet.kernel.nft import Nft

            Nft().apply(nat_script())
            self._nat_done = True

    def desired(self, ctx: FabricContext, peers: Iterable[NodeLease], claims: Mapping[str, str]) -> Desired:
        assert self.segment is not None
        good, refused = valid_peers(ctx, peers, claims)
        want = Desired(peers=dict(refused), routes={RouteSpec(str(self.segment), "", SHIM)})
        if self.segment6 is not None:
            want.routes.add(RouteSpec(str(self.segment6), "", SHIM))
        for peer in good:
            want.peers[peer.name] = self._verdict(ctx, peer)
        return want

    def _verdict(self, ctx: FabricContext, peer: NodeLease) -> str:
        if peer.fabric != self.name:
            return f"refused: peer runs fabric {peer.fabric!r}, not macvlan"
        if ipaddress.IPv4Address(peer.underlay_ip) not in ctx.underlay.network:
            return (f"refused: not on this node's L2 segment: underlay {peer.underlay_ip} is outside "
                    f"{ctx.underlay.network} (macvlan pods live on one L2 segment)")
        if peer.backend.get("segment") != str(self.segment):
            return f"refused: peer's pod segment {peer.backend.get('segment')!r} is not {self.segment}"
        return OK

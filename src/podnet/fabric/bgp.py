"""bgp fabric, after Calico: no encapsulation, no routes of podnet's own; every node's
BIRD announces its block and installs the others' (issue 12).

Design notes:
- The route-network base still runs (fabric/base.py): `desired` gives no routes, so
  any podnet route (proto 77) left by a former fabric goes, and the peers' verdicts
  (a lease for a block its node does not hold is refused) show in `node.status` as
  for the other fabrics. BIRD's routes carry proto bird (12): neither side ever
  removes the other's.
- `sync` turns this node's lease, the valid peers' leases and the BGP settings into a
  BirdSpec (bgp/model.py), renders it (bgp/render.py) and has this node's BIRD run it
  (bgp/bird.py: started once, reconfigured in place, adopted after an agent restart).
- Dual stack: each session with a dual-stack node has an IPv6 twin between the two
  nodes' IPv6 underlay addresses (`_ipv6_sessions`), announcing the blocks' IPv6
  twins; a borrowed address of either family is announced as a host route.
- The default topology is Calico's node-to-node mesh: iBGP with every other bgp node
  (`direct` on the node's own segment, multihop across it); BGPConfiguration and
  BGPPeer objects (bgp/objects.py) change the AS, turn the mesh off, add routers and
  route reflectors, and advertise service ranges.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from podnet.bgp.bird import BirdDaemon
from podnet.bgp.model import BirdSpec, Neighbor
from podnet.bgp.objects import BGPConfiguration, BGPPeer, effective_config, node_infos, peers_for
from podnet.fabric.base import OK, Desired, FabricContext, RouteNetwork, own_blocks, valid_peers
from podnet.model.cluster import NodeLease
from podnet.store.base import Store

_UNSAFE = re.compile(r"[^a-z0-9_]")
MAX_PROTOCOL_NAME = 48  # BIRD symbols are short; the renderer adds its own prefix


def protocol_name(prefix: str, name: str) -> str:
    """A BIRD protocol name for a session: `<prefix>_<name>` in [a-z0-9_]; a name that
    would be too long, or that lost characters, ends in a hash of the original, so two
    names never collide."""
    safe = _UNSAFE.sub("_", name.lower())
    if len(safe) + len(prefix) + 1 > MAX_PROTOCOL_NAME or safe != name.replace("-", "_"):
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        safe = f"{safe[:MAX_PROTOCOL_NAME - len(prefix) - 10]}_{digest}"
    return f"{prefix}_{safe}"


def bird_spec(ctx: FabricContext, peers: Iterable[NodeLease], configs: Iterable[BGPConfiguration] = (),
              bgp_peers: Iterable[BGPPeer] = (), blocks: Iterable[str] = (), borrowed: Iterable[str] = ()) -> BirdSpec:
    """This node's BIRD (pure): its blocks (the lease's and `blocks`, its other claims),
    a /32 per `borrowed` address (its pods' addresses in other nodes' blocks) and the
    service ranges its effective BGPConfiguration advertises, announced; its blocks
    blackholed in its own kernel (Calico's: an address of the block without a pod goes
    nowhere, not back out of the default route); sessions with every valid bgp peer
    when the node-to-node mesh is on, and those the BGPPeers give (routers, reflectors)."""
    configs, peers = tuple(configs), sorted(peers, key=lambda p: p.name)
    own = ctx.own
    config = effective_config(configs, own.name)
    nodes = node_infos({p.name: (p.underlay_ip, p.labels) for p in (own, *peers)}, configs)

    def on_link(address: str) -> bool:
        return ipaddress.IPv4Address(address) in ctx.underlay.network

    neighbors: dict[str, Neighbor] = {}  # by address: one session per neighbour
    if config.node_to_node_mesh:
        for peer in peers:
            asn = nodes[peer.name].asn or config.as_number
            neighbors[peer.underlay_ip] = Neighbor(protocol_name("node", peer.name), peer.underlay_ip,
                                                   asn or 0, direct=on_link(peer.underlay_ip),
                                                   port=nodes[peer.name].listen_port)
    for target in peers_for(own.name, own.labels, bgp_peers, nodes):
        if target.address in neighbors:
            continue
        label = target.name if target.node is None else f"{target.name}-{target.node}"
        ebgp = target.asn != (config.as_number or 0)
        neighbors[target.address] = Neighbor(protocol_name("peer", label), target.address, target.asn,
                                             rr_client=target.rr_client, direct=on_link(target.address),
                                             port=target.port, allow_local_as=ebgp)
    services = (*(config.service_cluster_ips or ()), *(config.service_external_ips or ()))
    own_blocks = tuple(dict.fromkeys((str(own.network), *blocks)))
    hosts = tuple(f"{address}/{128 if ':' in address else 32}" for address in borrowed)
    local6, accept6 = None, ()
    if ctx.cluster6 is not None and ctx.underlay6 is not None:  # dual stack: an IPv6 twin of each session
        local6, accept6 = str(ctx.underlay6.ip), (str(ctx.cluster6),)
        own_blocks += tuple(str(t) for b in own_blocks if (t := ctx.twin(b)) is not None)
        neighbors.update(_ipv6_sessions(ctx, neighbors, peers))
    return BirdSpec(router_id=own.underlay_ip, asn=config.as_number or 0, local_address=own.underlay_ip,
                    neighbors=tuple(sorted(neighbors.values())), originate=(*own_blocks, *hosts, *services),
                    kernel_blackholes=own_blocks,
                    accept=(str(ctx.cluster), *accept6, *services), rr_cluster_id=config.rr_cluster_id,
                    listen_port=config.listen_port or 179, transit=False, local_address6=local6)


def _ipv6_sessions(ctx: FabricContext, neighbors: Mapping[str, Neighbor],
                   peers: Iterable[NodeLease]) -> dict[str, Neighbor]:
    """For each session with a dual-stack node, the same session between the two IPv6
    underlay addresses, carrying the IPv6 blocks (as Calico peers IPv6 over IPv6: the
    next hop a route carries is then the node's own IPv6 address). Routers named by
    address (a ToR) stay IPv4 only."""
    by_address = {p.underlay_ip: p for p in peers if p.underlay_ip6}
    segment6 = ctx.underlay6.network if ctx.underlay6 is not None else None
    out = {}
    for address, n in neighbors.items():
        peer = by_address.get(address)
        if peer is None or peer.underlay_ip6 is None:
            continue
        on_link = segment6 is not None and ipaddress.IPv6Address(peer.underlay_ip6) in segment6
        out[peer.underlay_ip6] = replace(n, name=f"{n.name}_v6", address=peer.underlay_ip6, direct=on_link)
    return out


class BgpFabric(RouteNetwork):
    name = "bgp"

    def __init__(self) -> None:
        self.bird: BirdDaemon | None = None
        self.last: str = ""  # what the last sync did (status)
        self.borrowed: frozenset[str] = frozenset()  # this node's pods' addresses in other nodes' blocks

    def desired(self, ctx: FabricContext, peers: Iterable[NodeLease], claims: Mapping[str, str]) -> Desired:
        good, refused = valid_peers(ctx, peers, claims)
        want = Desired(peers=dict(refused), blocks=own_blocks(ctx, claims))  # what sync announces
        for peer in good:
            if peer.fabric != self.name:
                want.peers[peer.name] = f"refused: peer runs fabric {peer.fabric!r}, not bgp"
            else:
                want.peers[peer.name] = OK
        return want

    def sync(self, ctx: FabricContext, peers: Iterable[NodeLease], want: Desired, state_dir: Path,
             store: Store | None = None) -> str:
        """Have this node's BIRD announce its block and peer with the bgp peers that
        `want` judged OK and the BGPPeers of `store` (`state_dir`: StatePaths.bird_dir);
        what BIRD did ("started", "adopted", "reconfigured", "unchanged")."""
        from podnet.bgp.kinds import load_bgp
        from podnet.bgp.render import render

        if self.bird is None:
            self.bird = BirdDaemon(state_dir)
        configs, bgp_peers = load_bgp(store) if store is not None else ([], [])
        ok = [p for p in peers if want.peers.get(p.name) == OK]
        from podnet.cluster.leases import CLUSTER_NETWORK
        from podnet.ipam.blocks import borrowed

        mine: list = [ipaddress.IPv4Network(b) for b in want.blocks] or [ctx.own.network]
        mine += [t for b in mine if (t := ctx.twin(b)) is not None]  # a borrowed IPv6 address lies outside these
        lent = borrowed(store, ctx.own.name, CLUSTER_NETWORK, mine) if store is not None else []
        self.borrowed = frozenset(lent)
        self.last = self.bird.ensure(render(bird_spec(ctx, ok, configs, bgp_peers, want.blocks, lent)))
        return self.last

    def status(self) -> dict[str, Any]:
        """This node's BIRD and its BGP sessions, from its control socket: state, since,
        the neighbour, routes imported and exported (`podnet bgp status`)."""
        from podnet.bgp.birdc import BirdError

        if self.bird is None:
            return {"bird": None, "sessions": [], "last": self.last}
        out: dict[str, Any] = {"bird": {"pid": self.bird.pid(), "config": str(self.bird.conf)},
                               "last": self.last, "sessions": []}
        control = self.bird.control
        try:
            for row in control.protocols():
                if row["proto"] != "BGP":
                    continue
                detail = control.protocol_detail(row["name"])
                routes = detail.get("routes", {})
                out["sessions"].append({
                    "name": row["name"], "state": row["info"] or row["state"], "since": row["since"],
                    "neighbor": detail.get("neighbor_address", ""), "neighbor_as": detail.get("neighbor_as"),
                    "imported": routes.get("imported", 0), "exported": routes.get("exported", 0),
                    "last_error": detail.get("last_error", "")})
        except (BirdError, OSError) as exc:
            out["error"] = getattr(exc, "msg", None) or str(exc)
        return out

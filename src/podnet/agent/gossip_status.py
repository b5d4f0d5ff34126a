"""Op `gossip.status`: what one gossip node knows, as `podnet peers` shows it.

Apart from gossip_service.py so the service stays the loop; this only reads: the
peer's connections and paths, the ring's owners and dead peers, the names in the
gossip (observe/peers_view.py renders it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from podnet.agent.gossip_dns import DOC_PREFIX as DNS_PREFIX
from podnet.agent.gossip_dns import parse_doc_key
from podnet.cluster import leases

if TYPE_CHECKING:
    from podnet.cluster.options import GossipOptions
    from podnet.gossip.blocks import BlockSpace
    from podnet.gossip.peers import GossipPeer
    from podnet.gossip.ring import Ring
    from podnet.store.base import Store



def describe(peer: GossipPeer, ring: Ring, space: BlockSpace, store: Store, options: GossipOptions,
             secured: bool, sleeve: frozenset[str] = frozenset()) -> dict[str, Any]:
    """`secured`: a password or key file is set (every control frame is sealed; the
    sleeve's traffic is encrypted, the kernel's fast path is not)."""
    base = peer.status()
    underlay = {lease.name: lease.underlay_ip for lease in leases.list_leases(store)}
    encrypted = secured
    peers = []
    known = {p["name"] for p in base["peers"]}
    for entry in base["peers"]:
        path = "sleeve" if entry["name"] in sleeve else "fast"
        peers.append({**entry, "path": path, "encrypted": path == "sleeve" and encrypted,
                      "underlay": underlay.get(entry["name"])})
    for name in sorted((ring.members() | set(underlay)) - known - {peer.name}):
        peers.append({"name": name, "via": None, "direct": False, "path": "unreachable", "encrypted": False,
                      "underlay": underlay.get(name), "last_seen": None})
    deaths = {name: {"reclaimed_by": death.reclaimed_by or None,
                     "votes": {voter: ("gone" if vote.gone else "seen") for voter, vote in death.votes.items()}}
              for name, death in ring.deaths.items()
              if death.reclaimed_by or any(vote.gone for vote in death.votes.values())}
    dns = []
    for key, value in peer.documents(DNS_PREFIX).items():
        try:
            name, ip = parse_doc_key(key)
        except ValueError:
            name, ip = key[len(DNS_PREFIX):], ""
        record = value if isinstance(value, dict) else {}
        dns.append({"name": name, "ip": ip, "node": record.get("node"), "ttl": record.get("ttl"),
                    "pod": record.get("pod")})
    return {**base, "encrypted": encrypted, "peers": peers, "domain": options.dns_domain,
            "ring": {"range": str(space.cidr), "block_prefix": space.prefix, "owners": space.owners(ring),
                     "members": sorted(ring.members()), "deaths": deaths},
            "dns": dns, "nodes": sorted(underlay)}

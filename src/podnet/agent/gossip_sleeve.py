"""The sleeve as a gossip node's encrypted data path (fabric/sleeve/, issue 14).

Design notes:
- With a cluster secret (`--key-file` or $PODNET_GOSSIP_PASSWORD) every peer's pod
  traffic goes through the sleeve, never the kernel's VXLAN fast path, which carries
  it in clear (Weave: encryption implies the sleeve). Without a secret every peer
  takes the fast path while it works, and the plain sleeve carries a direct peer whose
  fast path does not answer (agent/gossip_probe.py); the sleeve starts with the first
  peer it has to carry.
- Keys: per direct connection, `derive_sleeve_keys` over that gossip session's secret
  (gossip/auth.py: HKDF of the password, both nonces, both names), so a reconnect
  brings new keys, and a counter that starts at the wall clock never reuses a nonce.
- Routes: the node service's gossip fabric routes each sleeve peer's blocks to the TUN
  `pnsl0` (proto 77, like every fabric route); the sleeve's own table sends each
  prefix to the peer's first hop (the gossip's `next_hops`, the fast path's too). A
  middle peer decrypts into its kernel, which routes the packet back into its own
  sleeve, sealed again for the next hop: encryption is hop by hop, as the gossip is.
- The forwarding runs in the agent's process (threads that spend their time in
  syscalls and the AEAD, which release the GIL); fabric/sleeve/forwarder.py is the same
  datapath as a process of its own (the bench and the sleeve tests).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping

from podnet.cluster.dualstack import Pools
from podnet.fabric.gossip import SLEEVE_DEVICE as DEVICE
from podnet.fabric.sleeve.crypto import derive_sleeve_keys
from podnet.fabric.sleeve.datapath import PORT, PeerRoute, Sleeve
from podnet.fabric.sleeve.tun import TunOptions, set_mtu
from podnet.model.cluster import NodeLease

log = logging.getLogger("podnet.gossip")


def plan(name: str, port: int, hops: Mapping[str, str], secrets: Mapping[str, bytes] | None,
         leases: Mapping[str, NodeLease], claims: Mapping[str, str], fast_down: frozenset[str] = frozenset(),
         pools: Pools | None = None) -> tuple[dict[str, PeerRoute], dict[str, str], frozenset[str]]:
    """(sleeve peers, prefix -> first hop, peers carried). With a secret (`secrets`
    not None: the session secret per connected peer) every direct peer with a session
    and a lease is a sleeve peer, keyed from that session; without one only the direct
    peers whose fast path is down (`fast_down`), plain. Every peer whose first hop is a
    sleeve peer is carried, its blocks as their CIDR cover, and in a dual-stack cluster
    (`pools`) their IPv6 twins too. Pure."""
    peers = {}
    for peer, first in hops.items():
        lease = leases.get(peer)
        if first != peer or lease is None:
            continue
        if secrets is not None:
            if (secret := secrets.get(peer)) is None:
                continue
            tx, rx = derive_sleeve_keys(secret, name, peer)
            peers[peer] = PeerRoute(lease.underlay_ip, port, tx, rx)
        elif peer in fast_down:
            peers[peer] = PeerRoute(lease.underlay_ip, port)
    routes, carried = {}, set()
    for peer, first in hops.items():
        if first not in peers or peer not in leases:
            continue
        blocks = [ipaddress.IPv4Network(b) for b, owner in claims.items() if owner == peer]
        twins = [t for b in blocks if (t := pools.twin(b)) is not None] if pools is not None else []
        for net in (*ipaddress.collapse_addresses(blocks), *ipaddress.collapse_addresses(twins)):
            routes[str(net)] = first
        carried.add(peer)
    return peers, routes, frozenset(carried)


class GossipSleeve:
    """This node's sleeve: started on the first `sync` that has something to carry."""

    def __init__(self, name: str, mtu: int, port: int = PORT) -> None:
        self.name, self.mtu, self.port = name, mtu, port
        self.sleeve: Sleeve | None = None
        self.carried: frozenset[str] = frozenset()

    def sync(self, hops: Mapping[str, str], secrets: Mapping[str, bytes] | None, leases: Mapping[str, NodeLease],
             claims: Mapping[str, str], own_block: str, fast_down: frozenset[str] = frozenset(),
             pools: Pools | None = None) -> frozenset[str]:
        """Peers and routes from the gossip's view now; returns the peers it carries."""
        peers, routes, carried = plan(self.name, self.port, hops, secrets, leases, claims, fast_down, pools)
        if not carried and self.sleeve is None:
            return frozenset()
        if self.sleeve is None:
            vtep = ipaddress.IPv4Network(own_block).network_address
            self.sleeve = Sleeve(DEVICE, ("0.0.0.0", self.port), peers, local=self.name, routes=routes,
                                 addresses=(f"{vtep}/32",), options=TunOptions(mtu=self.mtu))
            self.sleeve.start()
            log.info("gossip %s: sleeve %s up on UDP %d (%s)", self.name, DEVICE, self.port,
                     "encrypted" if secrets is not None else "plain: the fast path is down to some peer")
        else:
            self.sleeve.set_peers(peers)
            self.sleeve.set_routes(routes)
        if carried != self.carried:
            log.info("gossip %s: the sleeve carries %s", self.name, ", ".join(sorted(carried)) or "no peer")
        self.carried = carried
        return carried

    def follow_mtu(self, mtu: int) -> None:
        """The pod network's MTU changed (agent/mtu_follow.py re-rendered the conflist):
        the TUN follows, so pods' packets of the new size pass it."""
        if mtu == self.mtu:
            return
        if self.sleeve is not None:
            set_mtu(DEVICE, mtu)
        log.info("gossip %s: sleeve %s MTU %d -> %d", self.name, DEVICE, self.mtu, mtu)
        self.mtu = mtu

    def stats(self) -> dict[str, int]:
        return self.sleeve.stats() if self.sleeve is not None else {}

    def stop(self) -> None:
        if self.sleeve is not None:
            self.sleeve.stop()
            self.sleeve = None

"""The encrypted tunnel between gateways: the gossip fabric's sleeve (fabric/sleeve/),
run by the gateway in charge for the peers joined with `--encrypt`.

- One TUN `pnslcs0` and one UDP socket on the gateway's tunnel address, port 6785;
  each such peer's routed ranges go into the TUN (plan.py), the sleeve seals them
  (AES-256-GCM) and sends them to the peer's gateway in charge, which opens them into
  its own TUN. Keys per direction come from the pair's secret (`podnet cluster join
  --encrypt` writes the same random secret into both stores) through the sleeve's own
  derivation, named by the two cluster names, so a failover to another gateway of
  either cluster needs no new key.
- A peer without a secret here gets no sleeve peer: its traffic enters the TUN and is
  dropped there, never sent in clear (the status names the missing key).
- Unlike pncs0 (a kernel device that outlives its agent), the sleeve forwards in the
  agent's process, as the gossip fabric's does: it stops with the agent, its TUN and
  routes vanish with it, and the next agent's first pass brings them back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from podnet.clusterset.plan import SLEEVE_DEVICE, SLEEVE_PORT, SleevePlan
from podnet.fabric.gossip import SLEEVE_OVERHEAD
from podnet.fabric.sleeve.crypto import derive_sleeve_keys
from podnet.fabric.sleeve.datapath import PeerRoute, Sleeve
from podnet.fabric.sleeve.tun import TunOptions

log = logging.getLogger("podnet.clusterset")

# The gateway forwards other nodes' pods, whose GSO packets reach 64 KiB: a TUN that took
# less would have each cut in software and read one MTU-sized packet at a time (measured:
# 0.2-0.35 Gbit/s); at 64 KiB a sealed message goes out in two UDP GSO sends instead of one.
FORWARDED_GSO = 65536


def sleeve_peers(me: str, plan: SleevePlan, secrets: Mapping[str, bytes],
                 problems: list[str]) -> dict[str, PeerRoute]:
    """Each planned peer that has a secret, with this direction's keys (pure)."""
    peers = {}
    for peer, address in sorted(plan.peers.items()):
        secret = secrets.get(peer)
        if secret is None:
            problems.append(f"{peer}: joined encrypted but this cluster holds no tunnel key for it "
                            "(clusterset/tunnel-keys): its traffic is dropped, never sent in clear")
            continue
        tx, rx = derive_sleeve_keys(secret, me, peer)
        peers[peer] = PeerRoute(address, SLEEVE_PORT, tx, rx)
    return peers


class ClustersetSleeve:
    """The sleeve this node runs while it is the gateway in charge of encrypted peers."""

    def __init__(self) -> None:
        self.sleeve: Sleeve | None = None
        self._listen: tuple[str, int] | None = None

    def sync(self, me: str, plan: SleevePlan | None, secrets: Mapping[str, bytes], underlay_mtu: int,
             problems: list[str]) -> None:
        if plan is None:
            self.stop()
            return
        peers = sleeve_peers(me, plan, secrets, problems)
        routes = {cidr: peer for cidr, peer in plan.routes.items() if peer in peers}
        listen = (plan.listen, SLEEVE_PORT)
        if self.sleeve is not None and self._listen != listen:
            self.stop()
        if self.sleeve is None:
            self.sleeve = Sleeve(SLEEVE_DEVICE, listen, peers, local=me, routes=routes,
                                 options=TunOptions(mtu=underlay_mtu - SLEEVE_OVERHEAD, gso_max_size=FORWARDED_GSO))
            self.sleeve.start()
            self._listen = listen
            log.info("clusterset: encrypted tunnel %s up on %s:%d", SLEEVE_DEVICE, *listen)
        else:
            self.sleeve.set_peers(peers)
            self.sleeve.set_routes(routes)

    def stats(self) -> dict[str, int]:
        return self.sleeve.stats() if self.sleeve is not None else {}

    def stop(self) -> None:
        if self.sleeve is not None:
            self.sleeve.stop()
            self.sleeve = None
            self._listen = None
            log.info("clusterset: encrypted tunnel %s down", SLEEVE_DEVICE)

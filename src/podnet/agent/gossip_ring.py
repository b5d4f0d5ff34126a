"""The gossip node's duties toward the ring IPAM, one round at a time.

Why apart from gossip_service.py: each duty is a decision over the ring, this node's
store and who is reachable, testable with a MemoryStore and a fake peer, while the
service is the thread that runs them.

- `claim_initial`: an empty ring is split among `--ipalloc-init`'s peers (every one of
  them computes the same ring); without that list, a node with no seed peer starts a
  new cluster and owns it all, and a node with seeds waits for the ring to come.
- `write_claims`: the ring's owners become the store's `blocks/` claims (no TTL), the
  only place the node's IPAM and fabric read ownership from. A claim the ring no longer
  has goes.
- `ask_for_space` / `answer_requests`: a node short of free addresses asks the live
  peer owning most blocks (a `ring/requests/<me>` document); a donor answers each
  request once with a donation; the asker withdraws its request once it has room.
- `bury`: a peer whose space was reclaimed (or removed): its lease and the addresses
  its pods held go from the store (by the taker only; the deletes travel as
  tombstones), and the peer is refused as a gossip connection from then on.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable

from podnet import keys
from podnet.agent.gossip_mirror import Documents
from podnet.cluster import leases
from podnet.cluster.leases import CLUSTER_NETWORK
from podnet.gossip.blocks import REQUESTS, BlockRequest, BlockSpace, answer, choose_donor
from podnet.gossip.ring import Ring
from podnet.gossip.ring_parts import RingError
from podnet.gossip.ring_sync import RingSync
from podnet.ipam.blocks import occupied_blocks
from podnet.ipam.config import BlockAffinity
from podnet.model.cluster import BlockClaim
from podnet.store.base import Store

log = logging.getLogger("podnet.gossip")

LOW_WATER = 0.25  # ask for a block when less than this share of a block is free
RETRY_REQUEST = 5.0  # seconds before an unanswered request is sent again (to the donor of then)


class RingDuties:
    def __init__(self, name: str, space: BlockSpace, sync: RingSync, store: Store, docs: Documents,
                 genesis: tuple[str, ...], has_seeds: bool, dead_after: float = 5.0) -> None:
        self.name, self.space, self.sync, self.store, self.docs = name, space, sync, store, docs
        self.genesis, self.has_seeds = genesis, has_seeds
        # The others may reclaim `grace` after they last heard from this node; it notices
        # the cut `dead_after` later than that: hold halfway through what is left.
        self.hold_after = max(0.0, (sync.grace - dead_after) / 2)
        self.at_risk_since: float | None = None
        self.answered: dict[str, int] = {}  # asker -> the request seq answered
        self.seq = 0
        self.asked_at = 0.0
        self.buried: set[str] = set()
        self.refusals: dict[str, str] = {}  # what was logged last, per subject (log once per change)

    # -- the initial split
    def claim_initial(self) -> bool:
        ring = self.sync.ring()
        if ring.tokens:
            return False
        if self.genesis:
            if self.name not in self.genesis:
                return False  # one of the listed peers brings the ring
            peers = self.genesis
        elif not self.has_seeds:
            peers = (self.name,)
        else:
            return False
        self.sync.change(lambda r: r.claim_initial(peers))
        log.info("gossip %s: the ring of %s split among %s", self.name, self.space.cidr, ", ".join(sorted(peers)))
        return True

    # -- ring -> blocks/ claims
    def write_claims(self) -> int:
        """The ring's owners as the store's claims; the number of keys changed."""
        want = {claim.key: claim.encode()
                for claim in (BlockClaim(owner, block) for block, owner in self.space.claims(self.sync.ring()).items())}
        have = {entry.key: entry.value for entry in self.store.list(keys.BLOCKS)}
        changed = 0
        for key, value in want.items():
            if have.get(key) != value:
                self.store.put(key, value)
                changed += 1
        for key in have.keys() - want.keys():
            try:
                stale = ipaddress.IPv4Network(key[len(keys.BLOCKS):].replace("-", "/")).subnet_of(self.space.cidr)
            except ValueError:
                stale = False  # not a claim of this pool's shape: not the ring's to remove
            if stale:
                self.store.delete(key)
                changed += 1
        return changed

    # -- space requests
    def occupied(self) -> set[str]:
        """Blocks of the pool that hold a reservation (any node's)."""
        affinity = BlockAffinity(self.name, self.space.cidr, self.space.prefix)
        return {str(b) for b in occupied_blocks(self.store, CLUSTER_NETWORK, affinity)}

    def free_addresses(self) -> int:
        """Addresses this node may still hand out in its blocks."""
        mine = self.space.owned(self.sync.ring(), self.name)
        used = 0
        for entry in self.store.list(keys.ipam_addresses(CLUSTER_NETWORK)):
            try:
                address = ipaddress.IPv4Address(entry.key.rsplit("/", 1)[1])
            except ValueError:
                continue
            used += any(address in block for block in mine)
        return sum(block.num_addresses - 3 for block in mine) - used  # network, gateway, broadcast

    def ask_for_space(self, reachable: set[str], now: float | None = None) -> BlockRequest | None:
        now = time.monotonic() if now is None else now
        ring = self.sync.ring()
        key = REQUESTS + self.name
        short = ring.tokens and self.free_addresses() < LOW_WATER * (self.space.block(0).num_addresses - 3)
        if not short:
            if self.docs.document(key) is not None and not self.docs.document(key).deleted:
                self.docs.delete(key)
            return None
        if now - self.asked_at < RETRY_REQUEST:
            return None
        donor = choose_donor(ring, self.name, reachable)
        if donor is None:
            self._once("ask", f"gossip {self.name}: short of addresses and no live peer has a block to give")
            return None
        self.seq = max(self.seq + 1, int(time.time() * 1000))  # grows across restarts: a donor answers each once
        request = BlockRequest(self.name, donor, 1, self.seq)
        self.docs.put(request.key, request.to_json())
        self.asked_at = now
        log.info("gossip %s: asked %s for a block (request %d)", self.name, donor, self.seq)
        return request

    def answer_requests(self, reachable: set[str], keep: Iterable[str]) -> list[str]:
        """Donate to every asker whose newest request names this node; the askers served."""
        served = []
        for key, value in self.docs.documents(REQUESTS).items():
            try:
                request = BlockRequest.from_doc(key, value)
            except RingError as exc:
                self._once(key, f"gossip {self.name}: {exc}")
                continue
            if request.donor != self.name or self.answered.get(request.asker, -1) >= request.seq:
                continue
            occupied, keep = self.occupied(), tuple(keep)
            try:
                self.sync.change(lambda r, q=request, o=occupied, k=keep: answer(r, self.space, q, self.name, o, k,
                                                                                 reachable))
            except RingError as exc:
                self._once(key, f"gossip {self.name}: request {request.seq} of {request.asker}: {exc}")
                continue
            self.answered[request.asker] = request.seq
            served.append(request.asker)
            log.info("gossip %s: gave %s a block (its request %d)", self.name, request.asker, request.seq)
        return served

    # -- the minority side of a partition
    def hold(self, reachable: set[str], now: float | None = None) -> bool:
        """Cut off from most of the ring's members for `hold_after` seconds (counted from
        when this node noticed, which is `dead_after` after they last heard from it): they may
        reclaim this node's blocks once their grace has passed, so its IPAM hands out
        nothing more (`meta/ipam-hold/<node>`, read by every ADD) until it reaches them
        again. Pods that have addresses keep them. True while held."""
        now = time.monotonic() if now is None else now
        ring = self.sync.ring()
        key = keys.ipam_hold(self.name)
        if not ring.tokens or not ring.at_risk(self.name, reachable):
            self.at_risk_since = None
            if self.store.get(key) is not None:
                self.store.delete(key)
                log.info("gossip %s: in contact with most of the ring again: handing out addresses", self.name)
            return False
        if self.at_risk_since is None:
            self.at_risk_since = now
        if now - self.at_risk_since < self.hold_after:
            return False
        members = ring.members() | {self.name}
        cut_off = sorted(members - set(reachable) - {self.name})
        reason = (f"cut off from {len(cut_off)} of the ring's {len(members)} members ({', '.join(cut_off)}), "
                  "who may reclaim its blocks")
        if self.store.get_json(key) != {"reason": reason}:
            self.store.put_json(key, {"reason": reason})
            log.warning("gossip %s: %s: handing out no address until they are reached", self.name, reason)
        return True

    # -- dead and removed peers
    def bury(self) -> list[str]:
        """Clean up after each peer whose space was reclaimed and that is not yet buried."""
        ring = self.sync.ring()
        done = []
        for peer, death in ring.deaths.items():
            if not death.reclaimed_by or peer in self.buried:
                continue
            self.buried.add(peer)
            done.append(peer)
            if death.reclaimed_by != self.name:
                continue
            freed = leases.free_node_addresses(self.store, peer)
            gone = self.store.delete(keys.node(peer))
            log.info("gossip %s: %s is gone; its space is mine, %d address(es) freed%s", self.name, peer,
                     len(freed), ", lease deleted" if gone else "")
        return done

    def _once(self, subject: str, message: str) -> None:
        if self.refusals.get(subject) != message:
            self.refusals[subject] = message
            log.warning("%s", message)


def ring_from_file(raw: object, space: BlockSpace) -> Ring:
    """A saved ring, checked like one from a peer and against this node's block space."""
    ring = Ring.from_json(raw)
    space.check_ring(ring)
    return ring

"""One peer's copy of the ring, kept in step through the gossip (gossip/peers.py).

Why a module of its own: the ring (ring.py) is pure and the peer (peers.py) carries
the ring as an opaque blob; this binds the two. `get_ring`/`merge_ring` are the
peer's callbacks (a blob read from a peer is validated by `Ring.from_json` and merged,
and a merge the ring refuses is logged and leaves the copy as it was). `tick` is one
round of the death rules: this peer votes on the members it cannot reach (since when
it last reached them; a member it never reached counts from this copy's start), and
reclaims the space of each peer the rules let it take (ring.py: grace passed, every
peer it is in contact with agrees, a majority, one agreed taker). The caller runs
`tick` every gossip round and pushes when it returns True.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from podnet.gossip.ring import Ring
from podnet.gossip.ring_parts import RingError

log = logging.getLogger("podnet.gossip")


class RingSync:
    def __init__(self, name: str, ring: Ring, grace: float, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.grace = grace
        self._clock = clock
        self._ring = ring
        self._lock = threading.Lock()
        self._started = clock()
        self._last_contact: dict[str, float] = {}
        self.reclaimed: list[tuple[str, float]] = []  # (peer, when) this copy took

    def ring(self) -> Ring:
        with self._lock:
            return self._ring

    def get_ring(self) -> dict:
        return self.ring().to_json()

    def merge_ring(self, blob: object) -> None:
        other = Ring.from_json(blob)
        with self._lock:
            try:
                self._ring = self._ring.merge(other)
            except RingError as exc:
                log.warning("gossip %s: ring merge refused: %s", self.name, exc)
                raise

    def change(self, edit: Callable[[Ring], Ring]) -> Ring:
        """A change this peer makes (an initial claim, a donation, a removal): `edit`
        gets the copy and returns the new one, under the lock; RingError leaves it."""
        with self._lock:
            ring = edit(self._ring)
            ring.check()
            self._ring = ring
            return ring

    def tick(self, reachable: Iterable[str], now: float | None = None) -> bool:
        """One round of votes and reclaims; True when this copy changed."""
        now = self._clock() if now is None else now
        in_contact = set(reachable) - {self.name}
        with self._lock:
            for member in self._ring.members() - {self.name}:
                self._last_contact.setdefault(member, self._started)
            for peer in in_contact:
                self._last_contact[peer] = now
            before = self._ring
            ring = before.observe(self.name, in_contact, now, self._last_contact)
            live = in_contact | {self.name}
            for dead in ring.reclaimable(self.name, now, live, self.grace):
                ring = ring.reclaim(dead, self.name, now, live, self.grace)
                self.reclaimed.append((dead, now))
                log.info("gossip %s: reclaimed the space of %s (gone, agreed by %s)", self.name, dead,
                         ", ".join(sorted(live)))
            self._ring = ring
            return ring != before

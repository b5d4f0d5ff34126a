"""When the node loop runs its repair pass (agent/node_service.py).

The pass dumps the kernel's links, routes, neighbours and FDB entries to bring back
what someone changed by hand, and releases the node's blocks that emptied. Run blindly
every few seconds it was most of an idle agent's CPU (docs/architecture.md, the lab).
So it runs at most every REPAIR_SECONDS, and then only when there is something to see:
the kernel announced a change that matters (kernel/rtnl_watch.py), an address in
one of the node's blocks was given back (the block may be empty now), `podnet doctor
--fix` asked for it, or FULL_REPAIR_SECONDS passed (the safety net: an announcement
lost, a block emptied by another node's reclaim).

The safety net's interval is drawn anew each time, FULL_REPAIR_SECONDS +- jitter.SHARE.
Why: every pass restarts the interval, so an event every node sees at once lines up
every agent's passes (likely a node joining, when each adds its routes: not traced),
and a fixed interval kept them in step for good: a 50-node lab's agents all dumped
their kernels in the same half second every 30 s (about 15 ms of CPU each), and the
pod ADDs of that second took 2-6 times as long (bench/README.md, convergence).
Kubernetes' JitterUntil and Felix's resync timers jitter for the same reason.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from podnet import keys
from podnet.agent.jitter import jittered
from podnet.store.base import DELETE, Event

REPAIR_SECONDS = 3.0
FULL_REPAIR_SECONDS = 30.0


class Changes(Protocol):
    def take(self) -> bool: ...


class RepairClock:
    """The repair pass's schedule; `changes`: the kernel's announcements (take() is
    True when they changed something since the last take, or nobody can tell)."""

    def __init__(
        self,
        changes: Changes,
        clock: Callable[[], float] = time.monotonic,
        spread: Callable[[], float] = random.random,
    ) -> None:
        self._changes = changes
        self._clock = clock
        self._spread = spread  # a number in [0, 1): where in the jitter window the next net falls
        self._next = 0.0  # the earliest next pass
        self._next_full = 0.0
        self._freed = True  # an address was given back since the last pass (at start: unknown)
        self._forced = False

    def force(self) -> None:
        """`podnet doctor --fix`: a pass now."""
        self._forced, self._next = True, 0.0

    def saw(self, events: Iterable[Event], mine: Callable[[str], bool] = lambda _key: True) -> None:
        """The store's events since the last look; `mine(key)`: whether a reservation
        key lies in one of this node's blocks (only those can empty one of them). Any
        address given back anywhere made every node of a 50-node lab dump its kernel:
        an ADD-and-DEL burst on one node kept the others' repair passes running back to
        back."""
        self._freed = self._freed or any(e.kind == DELETE and e.key.startswith(keys.IPAM) and mine(e.key)
                                         for e in events)

    def due(self) -> bool:
        """Should this turn of the loop run the repair pass? (It then counts as run.)"""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + REPAIR_SECONDS
        if not (self._forced or self._freed or now >= self._next_full or self._changes.take()):
            return False
        self._changes.take()  # what changed before the pass is what it sees
        self._forced = self._freed = False
        self._next_full = now + jittered(FULL_REPAIR_SECONDS, spread=self._spread)
        return True

    def wait(self) -> float:
        """How long until a pass could be due."""
        return max(0.0, self._next - self._clock())

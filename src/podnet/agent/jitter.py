"""Periodic passes whose interval is drawn anew each time, within +- a share of it.

Why: every agent sees some events at the same instant (a lab's agents starting
together, the first pod ADD after a quiet spell), and a pass that restarts its
interval then runs in step on every node; a fixed interval keeps them in step for
good. A 50-node lab's agents dumped their kernels in the same half second every 30 s
(the repair pass, agent/node_repair.py), and their mesh passes every 5 s: the pod ADDs
of those moments took two to three times their median (bench/README.md, convergence).
Kubernetes' JitterUntil and Felix's resync timers jitter for the same reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable

SHARE = 0.25  # every periodic pass of the agent: its interval +- this share


def jittered(seconds: float, share: float = SHARE, spread: Callable[[], float] = random.random) -> float:
    """`seconds` * (1 +- `share`); `spread()`: a number in [0, 1), where in that window."""
    return seconds * (1 + share * (2 * spread() - 1))

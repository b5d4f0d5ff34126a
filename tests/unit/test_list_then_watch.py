"""agent/service_thread.list_then_watch: the periodic pass of a store-driven loop."""

from __future__ import annotations

import itertools
import logging
import threading

import pytest

from podnet.agent.service_thread import list_then_watch
from podnet.store.base import Event


class QuietStore:
    """A store with no changes: each watch_hint waits its whole timeout on `clock`."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock

    def watch_hint(self, prefix: str, revision: int, timeout: float) -> list[Event]:
        self.clock[0] += timeout
        return []


def periodic_pass_times(spreads: list[float], passes: int) -> list[float]:
    """When the periodic passes of a quiet loop ran (resync 30 s, watch timeout 1 s)."""
    clock = [0.0]
    stopping = threading.Event()
    times: list[float] = []
    store = QuietStore(clock)
    spread = itertools.cycle(spreads)

    def converge(periodic: bool, events: list[Event] | None) -> int:
        if periodic:
            times.append(clock[0])
            if len(times) == passes:
                stopping.set()
        return 1

    list_then_watch(stopping, "", lambda: store, converge, 30.0, 1.0, logging.getLogger("t"),
                    spread=lambda: next(spread), clock=lambda: clock[0])
    return times


def test_each_periodic_pass_draws_its_own_interval_around_the_resync() -> None:
    times = periodic_pass_times([0.0, 1.0 - 1e-9, 0.5], passes=4)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 22.5 s, 37.5 s and 30 s, each rounded up to the watch timeout's 1 s ticks
    assert gaps == [pytest.approx(23.0), pytest.approx(38.0), pytest.approx(30.0)]


def test_loops_started_together_do_not_stay_in_step() -> None:
    early, late = periodic_pass_times([0.1], passes=5), periodic_pass_times([0.9], passes=5)
    assert early[0] == late[0] == 0.0  # the first pass lists at once, as before
    assert late[-1] - early[-1] >= 40.0  # four intervals of 24 s against 36 s apart

"""agent/jitter.py: a periodic pass's interval, drawn within +- a share of it."""

from __future__ import annotations

import pytest

from podnet.agent.jitter import jittered


@pytest.mark.parametrize(("spread", "expected"), [(0.0, 22.5), (0.5, 30.0), (0.75, 33.75)])
def test_the_spread_places_the_interval_in_its_window(spread: float, expected: float) -> None:
    assert jittered(30.0, 0.25, lambda: spread) == pytest.approx(expected)


def test_drawn_intervals_stay_in_the_window_and_differ() -> None:
    drawn = [jittered(5.0, 0.25) for _ in range(200)]
    assert all(3.75 <= d < 6.25 for d in drawn)
    assert len({round(d, 6) for d in drawn}) > 100  # drawn anew each time, not one phase for all

"""agent/node_repair.RepairClock: the node loop's repair pass runs only when there is
something to see, at most every REPAIR_SECONDS, and at least every FULL_REPAIR_SECONDS
(+- jitter.SHARE, drawn each time)."""

from __future__ import annotations

import pytest

from podnet import keys
from podnet.agent.jitter import SHARE
from podnet.agent.node_repair import FULL_REPAIR_SECONDS, REPAIR_SECONDS, RepairClock
from podnet.store.base import DELETE, PUT, Event


class Announcements:
    def __init__(self) -> None:
        self.changed = False

    def take(self) -> bool:
        changed, self.changed = self.changed, False
        return changed


def _clock():
    now = [1000.0]
    return now, (lambda: now[0])


def test_a_pass_at_start_then_only_after_the_kernel_changed_at_most_every_repair_seconds():
    now, clock = _clock()
    kernel = Announcements()
    repair = RepairClock(kernel, clock)
    assert repair.due()  # nothing is known at start
    now[0] += REPAIR_SECONDS
    assert not repair.due()  # an idle node: no pass
    kernel.changed = True
    now[0] += 1
    assert not repair.due() and repair.wait() > 0  # not before its time
    now[0] += REPAIR_SECONDS
    assert repair.due()  # a route deleted by hand
    now[0] += REPAIR_SECONDS
    assert not repair.due()


def test_an_address_given_back_a_forced_pass_and_the_safety_net_each_run_one():
    now, clock = _clock()
    repair = RepairClock(Announcements(), clock, spread=lambda: 0.5)  # no jitter: every 30 s
    assert repair.due()
    now[0] += REPAIR_SECONDS
    repair.saw([Event(PUT, keys.IPAM + "cluster/ip/10.244.0.5", "{}", 7)])
    assert not repair.due()  # an address taken empties no block
    now[0] += REPAIR_SECONDS
    repair.saw([Event(DELETE, keys.IPAM + "cluster/ip/10.244.0.5", "", 8)])
    assert repair.due()
    repair.force()  # podnet doctor --fix: now, whatever the time
    assert repair.due()
    now[0] += FULL_REPAIR_SECONDS
    assert repair.due()  # nothing announced for FULL_REPAIR_SECONDS: the safety net
    now[0] += REPAIR_SECONDS
    assert not repair.due()


def test_an_address_given_back_in_another_nodes_block_runs_no_pass():
    """Only a node's own blocks can empty: a 50-node lab's agents all dumped their
    kernels whenever any node's pod went."""
    from podnet.agent.node_blocks import in_blocks

    now, clock = _clock()
    repair = RepairClock(Announcements(), clock)
    assert repair.due()
    mine = ("10.244.0.0/24", "10.244.7.0/24")
    key = keys.ipam_address("cluster", "10.244.3.5")
    now[0] += REPAIR_SECONDS
    repair.saw([Event(DELETE, key, None, 8)], lambda k: in_blocks(k, mine))
    assert not repair.due()  # another node's block
    now[0] += REPAIR_SECONDS
    repair.saw([Event(DELETE, keys.ipam_address("cluster", "10.244.7.9"), None, 9)], lambda k: in_blocks(k, mine))
    assert repair.due()
    assert not in_blocks(keys.ipam_address("other", "10.244.7.9"), mine)  # the cluster network's only
    assert not in_blocks(keys.ipam_address("cluster", "not-an-address"), mine)


def test_the_safety_net_interval_is_jittered_so_agents_lined_up_drift_apart():
    """Agents whose passes an event lined up (a node joining) must not stay in step:
    each interval is drawn anew within FULL_REPAIR_SECONDS +- jitter.SHARE."""
    shortest, longest = FULL_REPAIR_SECONDS * (1 - SHARE), FULL_REPAIR_SECONDS * (1 + SHARE)
    nets = []
    for spread in (0.0, 0.999):
        now, clock = _clock()
        repair = RepairClock(Announcements(), clock, spread=lambda spread=spread: spread)
        assert repair.due()  # the pass at start, at the same moment for both
        start, passes = now[0], []
        while len(passes) < 3:
            now[0] += REPAIR_SECONDS / 4
            if repair.due():
                passes.append(now[0] - start)
        nets.append(passes)
    early, late = nets
    assert early[0] == pytest.approx(shortest, abs=REPAIR_SECONDS)
    assert late[0] == pytest.approx(longest, abs=REPAIR_SECONDS)
    assert late[2] - early[2] > 2 * (longest - shortest) * 0.9  # apart, and further apart each time

"""The lab's timing and load choices: its lease TTL for crowded labs, its commands' time
limit, the agents spread over the etcd members."""

from __future__ import annotations

import pytest

from podnet.lab.crowding import LEASE_TTL, WATCH_BATCH, lease_ttl_for, member_first, watch_batch_for
from podnet.lab.state import LabError, run


def test_a_lab_crowded_onto_few_cpus_gets_a_longer_lease_ttl():
    assert lease_ttl_for(2, 2) == LEASE_TTL == 10
    assert lease_ttl_for(5, 2) == 10  # the suite's labs keep the product's default
    assert lease_ttl_for(20, 2) == 12
    assert lease_ttl_for(50, 2) == 30
    assert lease_ttl_for(100, 2) == 60
    assert lease_ttl_for(100, 12) == 10  # the same lab on a bigger machine
    assert lease_ttl_for(100, None) == 120  # unknown CPUs: one


def test_a_lab_crowded_onto_few_cpus_batches_its_store_watch_longer():
    assert watch_batch_for(2, 2) == WATCH_BATCH == 0.05
    assert watch_batch_for(20, 2) == 0.05  # the suite's labs keep the store's default
    assert watch_batch_for(50, 2) == 0.125
    assert watch_batch_for(100, 2) == 0.25
    assert watch_batch_for(100, 16) == 0.05  # the same lab on a bigger machine
    assert watch_batch_for(100, None) == 0.5  # unknown CPUs: one


def test_a_command_that_outlives_its_time_limit_is_a_lab_error():
    """`lab up` tears down on a LabError; a bare TimeoutExpired (an `ip` stuck behind
    the kernel's namespace work on an overloaded machine) left a 100-node lab up."""
    with pytest.raises(LabError, match="did not finish in 0.2s"):
        run(["sleep", "5"], timeout=0.2)
    with pytest.raises(LabError, match="did not finish"):
        run(["sleep", "5"], check=False, timeout=0.2)


def test_the_agents_spread_over_the_etcd_members():
    """A client stays on the first member that answers: each node's agent gets the
    members in another order, so 50 agents do not all load one member."""
    url = "etcd://172.31.0.200:2379,172.31.0.201:2379,172.31.0.202:2379/podnet-lab-x"
    firsts = [member_first(url, i).removeprefix("etcd://").split(",")[0] for i in range(6)]
    assert firsts == ["172.31.0.200:2379", "172.31.0.201:2379", "172.31.0.202:2379"] * 2
    assert member_first(url, 1) == "etcd://172.31.0.201:2379,172.31.0.202:2379,172.31.0.200:2379/podnet-lab-x"
    assert member_first("etcd://a:1", 7) == "etcd://a:1"
    assert member_first("/run/podnet/lab-x/store.db", 1) == "/run/podnet/lab-x/store.db"

"""How a lab shares one machine: its many agents' choices that a real cluster, a
machine per node, would not need."""

from __future__ import annotations

from podnet.store.base import WATCH_BATCH

LEASE_TTL = 10
# A lab packs its nodes' agents onto this machine's CPUs: a hundred of them on two wait long
# for CPU and for the store's write lock, and a 10 s lease then expired while its node was
# alive (its block taken, its pods' addresses freed mid-ADD). Each agent per CPU adds this
# much to the TTL (100 nodes on 2 CPUs: 60 s; a real node has its own CPUs). At 0.6 (30 s)
# a 100 x 10 `lab up` took 45-50 s on a quiet machine but 350 s beside one busy process:
# 224 renewals overran their period (17 s median, 34 s at most), 132 gave up without the
# write lock, 136 leases expired on live nodes, and re-claiming their blocks fed the load
# that delayed the renewals. At 60 s the same run took 62-72 s, no lease lost; quiet,
# 45-47 s either way (bench/README.md, lab_scale).
LEASE_TTL_PER_AGENT_PER_CPU = 1.2


def lease_ttl_for(nodes: int, cpus: int | None) -> float:
    """The agents' lease TTL when `lab up` is not told one: LEASE_TTL, longer for a lab
    crowded onto few CPUs (LEASE_TTL_PER_AGENT_PER_CPU)."""
    return max(float(LEASE_TTL), round(LEASE_TTL_PER_AGENT_PER_CPU * _agents_per_cpu(nodes, cpus), 1))


# WATCH_BATCH is the SQLite store's own default (store/base.py). While a lab's pods attach,
# each change to the store makes every loop of every agent react (services, DNS, readiness,
# the node loop). Batched per 50 ms, a hundred agents on two CPUs
# could react up to 2,000 times a second and saturated the machine: the store's write lock waited
# behind preempted holders, leases ran out while their nodes were alive, and the churn of
# reclaimed blocks kept the lab saturated (`lab up` 100 x 10 took 358-479 s). Each agent per
# CPU adds this much to the batch (100 nodes on 2 CPUs: 0.25 s; a quiet SQLite store still
# wakes every agent at once). On etcd each bystander's loops woke once per commit of every
# pod ADD (two per ADD): with the batch a loop gathers them (store/etcd/watch.py).
WATCH_BATCH_PER_AGENT_PER_CPU = 0.005


def watch_batch_for(nodes: int, cpus: int | None) -> float:
    """The agents' --watch-batch when `lab up` is not told one: the store's default,
    longer for a lab crowded onto few CPUs (WATCH_BATCH_PER_AGENT_PER_CPU)."""
    return max(WATCH_BATCH, round(WATCH_BATCH_PER_AGENT_PER_CPU * _agents_per_cpu(nodes, cpus), 3))


def _agents_per_cpu(nodes: int, cpus: int | None) -> float:
    """How crowded a lab of `nodes` agents is on `cpus` (unknown: one)."""
    return nodes / max(1, cpus or 1)


def member_first(store: str, index: int) -> str:
    """The store URL node `index`'s agent gets: an etcd URL with its members rotated,
    so the agents spread over them (a client stays on the first member that answers:
    50 agents on one member overloaded it, and its slow answers cost ADDs their
    transactions). Other URLs unchanged."""
    if not store.startswith("etcd://"):
        return store
    hosts, slash, path = store.removeprefix("etcd://").partition("/")
    members = hosts.split(",")
    turn = index % len(members)
    return "etcd://" + ",".join(members[turn:] + members[:turn]) + slash + path

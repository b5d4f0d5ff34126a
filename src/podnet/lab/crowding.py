"""How a lab shares one machine: its many agents' choices that a real cluster, a
machine per node, would not need."""

from __future__ import annotations

LEASE_TTL = 10
# A lab packs its nodes' agents onto this machine's CPUs: a hundred of them on two wait long
# for CPU and for the store's write lock, and a 10 s lease then expired while its node was
# alive (its block taken, its pods' addresses freed mid-ADD). Each agent per CPU adds this
# much to the TTL (100 nodes on 2 CPUs: 30 s; a real node has its own CPUs)
LEASE_TTL_PER_AGENT_PER_CPU = 0.6


def lease_ttl_for(nodes: int, cpus: int | None) -> float:
    """The agents' lease TTL when `lab up` is not told one: LEASE_TTL, longer for a lab
    crowded onto few CPUs (LEASE_TTL_PER_AGENT_PER_CPU)."""
    return max(float(LEASE_TTL), round(LEASE_TTL_PER_AGENT_PER_CPU * nodes / max(1, cpus or 1), 1))


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

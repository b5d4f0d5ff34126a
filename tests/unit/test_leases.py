"""Block allocation and node leases over the real Store backends (no root)."""

from __future__ import annotations

import json
import threading
import time
import types

import pytest

from podnet.cluster import leases
from podnet.model.cluster import NodeLease
from podnet.store import open_store


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = open_store("memory://" if request.param == "memory" else str(tmp_path / "c.db"))
    yield s
    s.close()


def maker(name: str):
    return lambda block: NodeLease(name, block, "172.31.0.9", "eth0", "vxlan", {"vtep_mac": "02:00:00:00:00:01"}, 1.0)


def take(store, name: str, ttl: float = 10.0, preferred: str | None = None, cidr: str = "10.244.0.0/16"):
    return leases.acquire(store, name, cidr, 24, ttl, maker(name), preferred=preferred)


def run_all(fn, n: int) -> None:
    """Run fn(0..n-1) on n threads at once and wait for all."""
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_first_blocks_in_order_and_lease_written(store):
    a, b = take(store, "a"), take(store, "b")
    assert (a.lease.block, b.lease.block) == ("10.244.0.0/24", "10.244.1.0/24")
    assert store.get_json("nodes/a")["block"] == "10.244.0.0/24"
    assert store.get_json("nodes/b")["backend"]["vtep_mac"] == "02:00:00:00:00:01"


def test_concurrent_nodes_never_share_a_block(tmp_path):
    """Many threads, each with its own handle (as separate agents would be)."""
    path = str(tmp_path / "race.db")
    open_store(path).close()
    got: dict[str, str] = {}
    barrier = threading.Barrier(8)

    def node(i: int) -> None:
        s = open_store(path)
        try:
            barrier.wait()
            got[f"n{i}"] = take(s, f"n{i}", cidr="10.244.0.0/21").lease.block
        finally:
            s.close()

    run_all(node, 8)
    assert len(got) == 8 and len(set(got.values())) == 8


def test_concurrent_on_one_memory_store():
    s = open_store("memory://")
    got: list[str] = []
    lock = threading.Lock()

    def node(i: int) -> None:
        block = take(s, f"n{i}", cidr="10.244.0.0/20").lease.block
        with lock:
            got.append(block)

    run_all(node, 16)
    assert len(set(got)) == 16


def test_restart_reclaims_own_block_from_lease_or_hint(store):
    take(store, "a")
    b = take(store, "b")
    assert take(store, "b").lease.block == b.lease.block  # lease still there
    store.delete("nodes/b")
    leases.release_block(store, "b", b.lease.block)
    take(store, "c")  # takes 10.244.1.0/24? no: lowest free is b's old block
    assert store.get_json("nodes/c")["block"] == b.lease.block
    # b comes back with a hint of a block now owned by c: it gets another one
    assert take(store, "b", preferred=b.lease.block).lease.block == "10.244.2.0/24"
    # a hint of a free block is honoured
    assert take(store, "d", preferred="10.244.9.0/24").lease.block == "10.244.9.0/24"


def test_hint_outside_cluster_or_wrong_size_ignored(store):
    assert take(store, "a", preferred="10.99.0.0/24").lease.block == "10.244.0.0/24"
    assert take(store, "b", preferred="10.244.4.0/25").lease.block == "10.244.1.0/24"


def test_expired_lease_frees_the_block(store):
    a = take(store, "a", ttl=0.3)
    assert leases.renew(store, a)
    time.sleep(0.5)
    assert store.get("nodes/a") is None
    assert not leases.renew(store, a)
    assert take(store, "b").lease.block == "10.244.0.0/24"


def test_renew_keeps_the_lease_alive(store):
    a = take(store, "a", ttl=0.4)
    for _ in range(4):
        time.sleep(0.15)
        assert leases.renew(store, a)
    assert store.get_json("nodes/a")["block"] == a.lease.block


def test_release_block_only_for_its_owner(store):
    a = take(store, "a")
    assert not leases.release_block(store, "b", a.lease.block)
    assert leases.release_block(store, "a", a.lease.block)
    assert not leases.release_block(store, "a", a.lease.block)


def test_full_cidr_raises(store):
    take(store, "a", cidr="10.244.0.0/23")
    take(store, "b", cidr="10.244.0.0/23")
    with pytest.raises(leases.NoFreeBlock):
        take(store, "c", cidr="10.244.0.0/23")


def test_free_block_addresses_only_inside_the_block(store):
    for addr in ("10.244.1.2", "10.244.1.9", "10.244.2.2"):
        store.put(f"ipam/cluster/ip/{addr}", '{"id":"x","ifname":"eth0"}')
    store.put("ipam/other/ip/10.244.1.3", "{}")
    assert sorted(leases.free_block_addresses(store, "10.244.1.0/24")) == ["10.244.1.2", "10.244.1.9"]
    assert [e.key for e in store.list("ipam/")] == ["ipam/cluster/ip/10.244.2.2", "ipam/other/ip/10.244.1.3"]


def test_lease_round_trip_and_helpers():
    lease = maker("a")("10.244.3.0/24")
    assert NodeLease.from_json(lease.to_json()) == lease
    assert str(leases.gateway_of(lease.block)) == "10.244.3.1"
    assert str(leases.vtep_ip_of(lease.block)) == "10.244.3.0"
    assert leases.block_key("10.244.3.0/24") == "blocks/10.244.3.0-24"
    with pytest.raises(Exception, match="does not fit"):
        list(leases.split_blocks("10.244.0.0/16", 8))


def _pod(store, block_net: str, cid: str, host: int) -> None:
    """What a node's CNI ADD leaves in the cluster store: reservation + endpoint record."""
    from podnet.ipam.service import IpamService

    conf = {"type": "podnet-ipam", "ranges": [[{"subnet": block_net}]]}
    IpamService(store).allocate("cluster", cid, "eth0", conf, mark_ready=True)
    addr = IpamService(store).lookup("cluster", cid, "eth0")[0].address
    store.put(f"endpoints/cluster/{cid}/eth0",
              json.dumps({"state": "ready", "ips": [f"{addr}/24"], "host_netns": [1, host]}))


def test_reclaim_frees_a_dead_nodes_reservations_and_endpoints(store):
    """The known gap, closed: node b's pods are numbered in the shared store, so when
    b's lease expires, node a's reclaim frees b's reservations and endpoint records
    (and nothing of a's own)."""
    from podnet.agent.node_service import NodeService

    a, b = take(store, "a", ttl=10.0), take(store, "b", ttl=0.3)
    _pod(store, a.lease.block, "pod-a", 1)
    _pod(store, b.lease.block, "pod-b1", 2)
    _pod(store, b.lease.block, "pod-b2", 2)
    time.sleep(0.45)  # b's agent died: its lease and claim expire
    assert leases.block_owner(store, b.lease.block) is None
    svc = NodeService(types.SimpleNamespace(node_options=None))
    svc._reclaim(store, b.lease)
    assert [e.key for e in store.list("ipam/cluster/ip/")] == ["ipam/cluster/ip/10.244.0.2"]
    assert [e.key for e in store.list("endpoints/")] == ["endpoints/cluster/pod-a/eth0"]


def test_reclaim_leaves_a_reclaimed_block_to_its_new_owner(store):
    from podnet.agent.node_service import NodeService

    b = take(store, "b", ttl=0.3)
    _pod(store, b.lease.block, "pod-b", 2)
    time.sleep(0.45)
    c = take(store, "c")  # a new node got b's old block before anyone noticed b left
    assert c.lease.block == b.lease.block and leases.block_owner(store, b.lease.block) == "c"
    NodeService(types.SimpleNamespace(node_options=None))._reclaim(store, b.lease)
    assert len(store.list("ipam/cluster/ip/")) == 1  # left for c, which frees a block new to it
    assert leases.free_block_addresses(store, c.lease.block) == ["10.244.0.2"]
    assert store.list("endpoints/") == []


def test_the_lease_thread_keeps_a_node_alive_while_its_loop_is_stuck(store):
    """The lease is renewed on a thread of its own: with the node loop never running
    (a pass stuck for seconds on a busy machine, as in a 100-node lab), the lease and
    its block's claim outlive several TTLs; once the keeper stops, they expire."""
    from podnet.agent.node_service import NodeService
    from podnet.cluster.options import NodeOptions

    ttl = 0.6
    claim = take(store, "a", ttl=ttl)
    other = take(store, "a2", ttl=ttl)  # a neighbour nobody renews: the clock runs for real
    agent = types.SimpleNamespace(node_options=NodeOptions("a", fabric="host-gw", lease_ttl=ttl),
                                  store_path="x", service=types.SimpleNamespace(store=lambda _path: store))
    svc = NodeService(agent)  # type: ignore[arg-type]
    svc.claim = claim
    svc._lease_loop.start()  # the node loop itself is never started
    try:
        time.sleep(3 * ttl)
        assert leases.block_owner(store, other.lease.block) is None  # expired meanwhile
        assert store.get(claim.lease.key) is not None
        assert leases.block_owner(store, claim.lease.block) == "a"
    finally:
        svc._lease_loop.stop()
    time.sleep(1.5 * ttl)
    assert store.get(claim.lease.key) is None and leases.block_owner(store, claim.lease.block) is None


def test_a_lost_lease_is_reported_to_the_node_loop(store):
    from podnet.agent.node_service import NodeService
    from podnet.cluster.options import NodeOptions

    ttl = 0.6
    claim = take(store, "a", ttl=ttl)
    agent = types.SimpleNamespace(node_options=NodeOptions("a", fabric="host-gw", lease_ttl=ttl),
                                  store_path="x", service=types.SimpleNamespace(store=lambda _path: store))
    svc = NodeService(agent)  # type: ignore[arg-type]
    svc.claim = claim
    store.delete(claim.lease.key)  # gone (expired, or deleted by hand)
    svc._lease_loop.start()
    try:
        assert svc._lease_lost.wait(2 * ttl)
    finally:
        svc._lease_loop.stop()


def test_parsed_records_follow_every_change_and_skip_what_is_malformed(store):
    from podnet import keys

    parsed = leases.ParsedRecords()
    for name in ("a", "b", "c"):
        take(store, name)
    store.put("nodes/x", "{not json")
    store.put("nodes/y", json.dumps({**json.loads(store.get("nodes/a").value), "name": "b"}))  # posing as b
    store.put("blocks/10.244.99.0-24", "{}")

    def both() -> tuple[list[str], dict[str, str]]:
        found = parsed.leases(store.snapshot(keys.NODES)[0])
        assert found == leases.parse_leases(store.snapshot(keys.NODES)[0])
        claims = parsed.claims(store)
        assert claims == leases.list_claims(store)
        return sorted(lease.name for lease in found), claims

    names, claims = both()
    assert names == ["a", "b", "c"] and sorted(claims.values()) == ["a", "b", "c"]
    assert both() == (names, claims)  # the second pass from the cache: the same
    lease_b = json.loads(store.get("nodes/b").value)
    store.put("nodes/b", json.dumps({**lease_b, "underlay_ip": "172.31.0.99"}))  # changed text: parsed again
    store.delete("nodes/c")
    store.delete(next(key for key, owner in ((e.key, e.json().get("node")) for e in store.list("blocks/"))
                      if owner == "c"))
    names, claims = both()
    assert names == ["a", "b"] and sorted(claims.values()) == ["a", "b"]
    assert next(x for x in parsed.leases(store.snapshot(keys.NODES)[0]) if x.name == "b").underlay_ip == "172.31.0.99"

"""Block IPAM with node affinity (ipam/blocks.py, Calico's): a node's pods come from
the blocks it claims, it claims another when they fill, borrows from a peer's block
when the pool has no free block (unless strictAffinity), and releases emptied blocks."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet.cluster.leases import list_claims
from podnet.errors import AddressExhausted, InvalidConfig
from podnet.identity import NodeIdentity
from podnet.ipam import blocks
from podnet.ipam.config import parse_ipam_config
from podnet.ipam.service import IpamService
from podnet.model.cluster import BlockClaim
from podnet.store import Store
from podnet.store.memory import MemoryStore
from podnet.store.sqlite import SqliteStore

pytest_plugins = ["etcd_fixture"]  # etcd_server

POOL = "10.244.0.0/27"  # four /29 blocks, five addresses each (.1 is the block's gateway)
NET = "cluster"


def config(node: str, strict: bool = False, primary: str = "10.244.0.0/29") -> dict:
    return {"type": "podnet-ipam", "ranges": [[{"subnet": primary}]],
            "blockAffinity": {"node": node, "pool": POOL, "blockSize": 29, "strictAffinity": strict, "ttl": 30}}


@pytest.fixture(params=["memory", "sqlite", "etcd"])
def store(request, tmp_path: Path) -> Iterator[Store]:
    if request.param == "etcd":  # the cluster's shared store: ADDs read by key inside (ipam/survey.py)
        pytest.importorskip("aetcd", reason="the etcd client is not installed")
        from podnet.store.etcd import EtcdStore

        made: Store = EtcdStore(request.getfixturevalue("etcd_server").endpoints, f"/pn-t-{secrets.token_hex(4)}/")
    else:
        made = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "store.db")
    yield made
    if request.param == "etcd":
        made.delete_prefix("")
    made.close()


def claim(store: Store, node: str, block: str) -> None:
    record = BlockClaim(node, block)
    store.put(record.key, record.encode(), 30)


def ipam(store: Store, node: str) -> IpamService:
    return IpamService(store, identity=NodeIdentity("machine", "boot", node_name=node))


def add(store: Store, node: str, n: int, start: int = 0, **kw) -> list[str]:
    service = ipam(store, node)
    return [str(service.allocate(NET, f"{node}-c{i}", "eth0", config(node, **kw)).ips[0].address)
            for i in range(start, start + n)]


def in_block(addresses: list[str], block: str) -> bool:
    return all(ipaddress.ip_address(a) in ipaddress.ip_network(block) for a in addresses)


def test_a_node_grows_into_a_new_block_then_borrows_when_the_pool_is_out(store):
    claim(store, "n1", "10.244.0.0/29")
    claim(store, "n2", "10.244.0.16/29")
    first = add(store, "n1", 5)
    assert in_block(first, "10.244.0.0/29") and "10.244.0.1" not in first  # the gateway is never handed out
    grown = add(store, "n1", 1, start=5)
    assert in_block(grown, "10.244.0.8/29")  # the lowest block nobody claims
    assert list_claims(store)["10.244.0.8/29"] == "n1"
    add(store, "n1", 4, start=6)
    third = add(store, "n1", 5, start=10)
    assert in_block(third, "10.244.0.24/29") and list_claims(store)["10.244.0.24/29"] == "n1"
    lent = add(store, "n1", 1, start=15)
    assert in_block(lent, "10.244.0.16/29")  # n2's block: borrowed, n2 still owns it
    assert list_claims(store)["10.244.0.16/29"] == "n2"
    assert blocks.borrowed(store, "n1", NET, [ipaddress.ip_network(b) for b in
                                              ("10.244.0.0/29", "10.244.0.8/29", "10.244.0.24/29")]) == lent
    again = ipam(store, "n1").allocate(NET, "n1-c15", "eth0", config("n1"))
    assert [str(a.address) for a in again.ips] == lent  # a repeated ADD keeps its borrowed address


def test_strict_affinity_refuses_to_borrow(store):
    claim(store, "n1", "10.244.0.0/29")
    for block, node in (("10.244.0.8/29", "n2"), ("10.244.0.16/29", "n2"), ("10.244.0.24/29", "n3")):
        claim(store, node, block)
    add(store, "n1", 5, strict=True)
    with pytest.raises(AddressExhausted, match="strictAffinity forbids borrowing"):
        add(store, "n1", 1, start=5, strict=True)
    assert ipam(store, "n1").free_count(NET, config("n1", strict=True)) == 0
    assert ipam(store, "n1").free_count(NET, config("n1")) == 5  # not strict: a lender's block


def test_a_block_with_a_dead_owners_reservations_is_not_claimed(store):
    claim(store, "n1", "10.244.0.0/29")
    ipam(store, "gone").allocate(NET, "old", "eth0", {"type": "podnet-ipam", "subnet": "10.244.0.8/29"})
    add(store, "n1", 5)
    assert in_block(add(store, "n1", 1, start=5), "10.244.0.16/29")  # not .8/29: its leftovers are freed first


def test_emptied_blocks_are_released_but_never_the_leases(store):
    claim(store, "n1", "10.244.0.0/29")
    add(store, "n1", 6)
    assert list_claims(store)["10.244.0.8/29"] == "n1"
    assert blocks.release_empty(store, "n1", "10.244.0.0/29", NET, ipaddress.IPv4Network(POOL), 29) == []
    ipam(store, "n1").release(NET, "n1-c5", "eth0")  # the only address of the second block
    for i in range(5):
        ipam(store, "n1").release(NET, f"n1-c{i}", "eth0")
    released = blocks.release_empty(store, "n1", "10.244.0.0/29", NET, ipaddress.IPv4Network(POOL), 29)
    assert released == ["10.244.0.8/29"] and list_claims(store) == {"10.244.0.0/29": "n1"}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("blockSize", 31, "blockSize must be an integer from 27 to 30"),
    ("pool", "fd00::/64", "pool must be an IPv4 network"),
    ("strictAffinity", "yes", "strictAffinity must be true or false"),
    ("ring", "yes", "ring must be true or false"),
    ("node", "", "node must be the node's name"),
    ("ttl", 0, "ttl must be a number of seconds"),
    ("color", "red", "ipam.blockAffinity.color is not a field"),
])
def test_bad_block_affinity_is_refused_with_the_field(field, value, message):
    raw = config("n1")
    raw["blockAffinity"][field] = value
    with pytest.raises(InvalidConfig, match=message):
        parse_ipam_config(raw)


class CountingTransactions:
    """The store, counting the write transactions opened on it."""

    def __init__(self, inner: Store) -> None:
        self.inner, self.transactions = inner, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def transaction(self):
        self.transactions += 1
        return self.inner.transaction()


def test_nothing_to_release_takes_no_write_lock(store: Store) -> None:
    """Every node's repair pass asks; the usual answer (no block beyond the lease's)
    must not queue for the store's write lock (a hundred agents share it)."""
    claim(store, "n1", "10.244.0.0/29")
    add(store, "n1", 2)
    counting = CountingTransactions(store)
    assert blocks.release_empty(counting, "n1", "10.244.0.0/29", NET, ipaddress.IPv4Network(POOL), 29) == []
    assert counting.transactions == 0
    assert ipam(counting, "n1").rollback_dead_pending() == []  # every agent's start asks that
    assert counting.transactions == 0
    add(store, "n1", 6, start=2)  # a second block, then empty again: released, in a transaction
    for i in range(2, 8):
        ipam(store, "n1").release(NET, f"n1-c{i}", "eth0")
    assert blocks.release_empty(counting, "n1", "10.244.0.0/29", NET, ipaddress.IPv4Network(POOL), 29) == [
        "10.244.0.8/29"]
    assert counting.transactions == 1

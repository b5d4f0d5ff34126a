"""ADDs of several nodes on one etcd (the cluster network's shared store): an ADD's
transaction conflicts only with writes to what it decided on (its address, its
block's claim), never with another node's ADD in another block (ipam/survey.py). Two
stores on one etcd are two nodes, as far as etcd can tell."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("aetcd", reason="the etcd client is not installed (pip install aetcd)")
pytest_plugins = ["etcd_fixture"]

from podnet import keys  # noqa: E402
from podnet.cluster.leases import list_claims  # noqa: E402
from podnet.cni.skel import CniRequest  # noqa: E402
from podnet.endpoints.ipam import BuiltinIpam  # noqa: E402
from podnet.endpoints.service import _write_pending  # noqa: E402
from podnet.errors import StoreConflict  # noqa: E402
from podnet.identity import NodeIdentity  # noqa: E402
from podnet.ipam.result import IpamResult  # noqa: E402
from podnet.ipam.service import IpamService  # noqa: E402
from podnet.model.cluster import BlockClaim, block_key  # noqa: E402
from podnet.model.endpoint import PENDING, EndpointRecord  # noqa: E402
from podnet.store.etcd import EtcdStore  # noqa: E402

if TYPE_CHECKING:
    from etcd_fixture import EtcdCluster

NET = "cluster"
POOL = "10.244.0.0/16"


def ipam_conf(node: str, block_size: int = 24) -> dict:
    return {"type": "podnet-ipam", "ranges": [[{"subnet": "10.244.0.0/24"}]],
            "blockAffinity": {"node": node, "pool": POOL, "blockSize": block_size, "ttl": 30}}


@pytest.fixture
def stores(etcd_server: EtcdCluster) -> Iterator[Callable[[], EtcdStore]]:
    """Clients of one etcd under one fresh prefix: one per node."""
    prefix = f"/pn-t-{secrets.token_hex(4)}/"
    made: list[EtcdStore] = []

    def one() -> EtcdStore:
        made.append(EtcdStore(etcd_server.endpoints, prefix))
        return made[-1]

    yield one
    made[0].delete_prefix("")
    for store in made:
        store.close()


def claim(store: EtcdStore, node: str, block: str) -> None:
    record = BlockClaim(node, block)
    store.put(record.key, record.encode(), 30)


class Node:
    """One node's ADD path as endpoints/service.py runs it: the pending record and the
    reservation in one transaction (`_write_pending`), then the confirming one."""

    def __init__(self, store: EtcdStore, name: str) -> None:
        self.store, self.name = store, name
        self.identity = NodeIdentity("machine", "boot", node_name=name)

    def ipam(self, cid: str) -> BuiltinIpam:
        request = CniRequest("ADD", cid, "/proc/self/ns/net", "eth0", config={"name": NET})
        return BuiltinIpam(self.store, NET, ipam_conf(self.name), request, self.identity)

    def pending(self, cid: str, ipam: BuiltinIpam) -> str:
        """The first transaction of an ADD; the address it reserved."""
        record = EndpointRecord(state=PENDING, owner=self.identity.owner(), attach_id=cid, mode="bridge",
                                netns="/proc/self/ns/net", host_netns=(1, 1), config={}, env={}, ts=0.0,
                                node=self.name)
        with ExitStack() as undo:
            result = _write_pending(self.store, keys.endpoint(NET, cid, "eth0"), record, ipam, undo)
            undo.pop_all()
        return str(result.ips[0].address)

    def confirm(self, cid: str, ipam: BuiltinIpam, meanwhile: Callable[[], object] = lambda: None) -> None:
        """The second transaction (as CniService.add's commit), `meanwhile` run inside it."""
        with self.store.transaction():
            ipam.confirm()
            meanwhile()
            self.store.put(keys.endpoint(NET, cid, "eth0"), "{}")

    def add(self, cid: str) -> str:
        ipam = self.ipam(cid)
        address = self.pending(cid, ipam)
        self.confirm(cid, ipam)
        return address


class Interleaved(BuiltinIpam):
    """An IPAM whose first add() lets another node's whole ADD commit after its reads
    and before its own commit; counts its attempts (a conflict makes a second)."""

    def __init__(self, inner: BuiltinIpam, meanwhile: Callable[[], object]) -> None:
        super().__init__(inner.service.store, inner.network, inner.config, inner.request, inner.service.identity)
        self.meanwhile, self.attempts = meanwhile, 0

    def add(self, undo: ExitStack) -> IpamResult:
        result = super().add(undo)
        self.attempts += 1
        if self.attempts == 1:
            self.meanwhile()
        return result


def test_adds_of_two_nodes_interleaved_both_commit_at_once(stores) -> None:
    """Node 1's ADD is between its reads and its commit when node 2's whole ADD commits
    (another block): node 1 commits on its first attempt, in both transactions."""
    a, b = Node(stores(), "n1"), Node(stores(), "n2")
    claim(a.store, "n1", "10.244.0.0/24")
    claim(b.store, "n2", "10.244.1.0/24")
    a.add("warm-a")
    b.add("warm-b")  # both blocks hold something: the next ADDs are the common case
    got: dict[str, str] = {}
    first = Interleaved(a.ipam("pod-a"), lambda: got.setdefault("pod-b", b.add("pod-b")))
    got["pod-a"] = a.pending("pod-a", first)
    assert first.attempts == 1  # no conflict, no retry
    # The confirming transaction of node 1 with node 2's whole ADD inside it.
    a.confirm("pod-a", first, meanwhile=lambda: got.setdefault("pod-c", b.add("pod-c")))
    assert got == {"pod-a": "10.244.0.3", "pod-b": "10.244.1.3", "pod-c": "10.244.1.4"}
    states = {r.container_id: r.state for r in IpamService(a.store).reservations(NET)}
    assert states == {"warm-a": "ready", "warm-b": "ready", "pod-a": "ready", "pod-b": "ready",
                      "pod-c": "ready"}


def test_a_write_to_what_the_add_decided_on_still_conflicts(stores) -> None:
    """Serializable for what it read: node 2 takes the very address node 1 chose (a
    static IP), or takes over node 1's block, between node 1's reads and commit: node 1
    writes nothing on that attempt and takes another address (or fails) on the next."""
    a, b = Node(stores(), "n1"), Node(stores(), "n2")
    claim(a.store, "n1", "10.244.0.0/24")
    b_service = IpamService(b.store, identity=b.identity)
    steal = Interleaved(a.ipam("pod-a"), lambda: b_service.allocate(
        NET, "thief", "eth0", ipam_conf("n1"), requested_ips=["10.244.0.2"]))
    assert a.pending("pod-a", steal) == "10.244.0.3"
    assert steal.attempts == 2  # the first lost to the thief, wrote nothing
    owners = {r.address: r.container_id for r in IpamService(a.store).reservations(NET)}
    assert owners == {"10.244.0.2": "thief", "10.244.0.3": "pod-a"}

    def take_block() -> None:  # a peer freed node 1's block and node 2 claimed it
        b.store.delete(block_key("10.244.0.0/24"))
        claim(b.store, "n2", "10.244.0.0/24")

    moved = Interleaved(a.ipam("pod-b"), take_block)
    address = a.pending("pod-b", moved)
    assert moved.attempts == 2
    assert not address.startswith("10.244.0.")  # node 1 grew into a block of its own
    assert list_claims(a.store)[address.rsplit(".", 1)[0] + ".0/24"] == "n1"


def test_a_stale_conflict_names_what_changed(stores) -> None:
    """A transaction that lost names the keys and prefixes that moved (the
    diagnostic a 50-node lab's code 11 carries)."""
    a, b = stores(), stores()
    a.put("ipam/x/ip/10.0.0.2", "{}")
    with pytest.raises(StoreConflict, match=r"changed meanwhile: ipam/x/ip/\*: ipam/x/ip/10.0.0.3"), a.transaction():
        a.list("ipam/x/ip/")
        b.put("ipam/x/ip/10.0.0.3", "{}")
        a.put("mine", "1")
    with pytest.raises(StoreConflict, match="changed meanwhile: last"), a.transaction():
        a.get("last")
        b.put("last", "2")
        a.put("mine", "1")


def test_many_nodes_adding_at_once_never_share_an_address(stores) -> None:
    """Four nodes, eight pods each, all at once, on a tiny pool: nodes grow into new
    blocks and borrow from each other under contention; every pod has its own address
    and every block one owner."""
    pool_conf = {"type": "podnet-ipam", "ranges": [[{"subnet": "10.250.0.0/24"}]]}
    errors: list[BaseException] = []
    got: dict[str, str] = {}
    nodes = [Node(stores(), f"n{i}") for i in range(4)]
    barrier = threading.Barrier(len(nodes) * 8)

    def conf(node: str) -> dict:
        return {**pool_conf, "blockAffinity": {"node": node, "pool": "10.250.0.0/26", "blockSize": 29, "ttl": 30}}

    def run(node: Node, i: int) -> None:
        cid = f"{node.name}-p{i}"
        request = CniRequest("ADD", cid, "/proc/self/ns/net", "eth0", config={"name": NET})
        ipam = BuiltinIpam(node.store, NET, conf(node.name), request, node.identity)
        try:
            barrier.wait()
            got[cid] = node.pending(cid, ipam)
            node.confirm(cid, ipam)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, i)) for n in nodes for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(got) == 32 and len(set(got.values())) == 32
    reservations = IpamService(nodes[0].store).reservations(NET)
    assert sorted(r.address for r in reservations) == sorted(got.values())
    assert all(r.state == "ready" for r in reservations)


def test_an_adds_reservation_is_three_hand_offs_to_the_store(stores, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a crowded node each hand-off to the store's loop waits for a thread switch
    and etcd: the ADD's first transaction reads the address it takes and its block's
    claim together (ipam/service.py _read_ahead, Store.prefetch) and writes without a snapshot of its
    own, so the survey, those reads and the commit are all it costs."""
    node = Node(stores(), "n1")
    claim(node.store, "n1", "10.244.0.0/24")
    node.add("warm")
    runs: list[object] = []
    real = node.store._runner.run
    monkeypatch.setattr(node.store._runner, "run", lambda fn, *a, **k: runs.append(fn) or real(fn, *a, **k))
    assert node.pending("pod", node.ipam("pod")) == "10.244.0.3"
    assert len(runs) == 3, runs

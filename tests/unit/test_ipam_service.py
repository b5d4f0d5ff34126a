"""IpamService over every Store backend: allocation, idempotence, release, GC,
rollback of dead owners' pending reservations, and concurrency."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from podnet.errors import AddressExhausted, AddressInUse, InvalidConfig, UnknownContainer
from podnet.identity import NodeIdentity
from podnet.ipam.config import parse_ipam_config
from podnet.ipam.service import (
    PENDING,
    READY,
    IpamService,
    gc_scope,
)
from podnet.procs import ALIVE, DEAD, FOREIGN, owner_alive, owner_state, parse_owner, process_owner
from podnet.store import Store
from podnet.store.memory import MemoryStore
from podnet.store.sqlite import SqliteStore

V4 = {"type": "podnet-ipam", "subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]}
DUAL = {
    "type": "podnet-ipam",
    "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]],
}
TINY = {"subnet": "10.9.0.0/30"}
pytest_plugins = ["etcd_fixture"]  # etcd_server  # hosts .1 (gateway) and .2: room for one

STORES: dict[str, Callable[[Path], Store]] = {
    "memory": lambda tmp: MemoryStore(),
    "sqlite": lambda tmp: SqliteStore(tmp / "ipam.db"),
}


@pytest.fixture(params=[*sorted(STORES), "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "etcd":  # the cluster's shared store: ADDs read by key inside (ipam/survey.py)
        pytest.importorskip("aetcd", reason="the etcd client is not installed")
        from podnet.store.etcd import EtcdStore

        made: Store = EtcdStore(request.getfixturevalue("etcd_server").endpoints, f"/pn-t-{secrets.token_hex(4)}/")
    else:
        made = STORES[request.param](tmp_path)
    yield made
    if request.param == "etcd":
        made.delete_prefix("")
    made.close()


@pytest.fixture
def ipam(store: Store) -> IpamService:
    return IpamService(store)


def dead_owner() -> str:
    """The owner tag of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    owner = process_owner(proc.pid)
    proc.wait()
    return owner


# -- allocate -----------------------------------------------------------------------


def test_allocate_renders_cni_result(ipam: IpamService) -> None:
    result = ipam.allocate("net1", "c1", "eth0", V4)
    assert result.as_cni() == {
        "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    assert result.as_cni(interface=1)["ips"][0]["interface"] == 1
    assert result.addresses == ["10.1.0.2"]


def test_dual_stack_gets_one_address_per_set(ipam: IpamService) -> None:
    result = ipam.allocate("net1", "c1", "eth0", DUAL)
    assert [ip["address"] for ip in result.as_cni()["ips"]] == ["10.1.0.2/24", "fd00:1::2/64"]
    assert [ip.range_set for ip in result.ips] == [0, 1]


def test_store_layout(ipam: IpamService, store: Store) -> None:
    ipam.allocate("net1", "c1", "eth0", V4)
    value = store.get_json("ipam/net1/ip/10.1.0.2")
    assert value["id"] == "c1" and value["ifname"] == "eth0"
    assert value["state"] == PENDING
    assert value["owner"] == NodeIdentity.local().owner() == ipam.owner
    assert isinstance(value["ts"], float)
    assert store.get("ipam/net1/last/0").value == "10.1.0.2"  # type: ignore[union-attr]


def test_allocate_is_idempotent(ipam: IpamService, store: Store) -> None:
    first = ipam.allocate("net1", "c1", "eth0", DUAL)
    rev = store.revision()
    again = ipam.allocate("net1", "c1", "eth0", DUAL)
    assert again == first
    assert store.revision() == rev  # nothing written
    other_if = ipam.allocate("net1", "c1", "net1", DUAL)
    assert set(other_if.addresses).isdisjoint(first.addresses)
    assert len(ipam.reservations("net1")) == 4


def test_allocate_again_from_another_process_takes_ownership(store: Store) -> None:
    IpamService(store, owner=dead_owner()).allocate("net1", "c1", "eth0", V4)
    mine = IpamService(store)
    mine.allocate("net1", "c1", "eth0", V4)
    (res,) = mine.lookup("net1", "c1", "eth0")
    assert res.owner == mine.owner and res.state == PENDING
    assert mine.rollback_dead_pending() == []


def test_networks_are_separate(ipam: IpamService) -> None:
    a = ipam.allocate("net-a", "c1", "eth0", V4)
    b = ipam.allocate("net-b", "c1", "eth0", V4)
    assert a.addresses == b.addresses == ["10.1.0.2"]
    assert ipam.networks() == ["net-a", "net-b"]


def test_distinct_addresses_and_round_robin(ipam: IpamService) -> None:
    got = [ipam.allocate("net1", f"c{i}", "eth0", V4).addresses[0] for i in range(3)]
    assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    ipam.release("net1", "c0", "eth0")
    assert ipam.allocate("net1", "c9", "eth0", V4).addresses == ["10.1.0.5"]  # no quick reuse


def test_mark_ready(ipam: IpamService) -> None:
    ipam.allocate("net1", "c1", "eth0", DUAL)
    assert ipam.mark_ready("net1", "c1", "eth0") == ["10.1.0.2", "fd00:1::2"]
    assert {r.state for r in ipam.lookup("net1", "c1", "eth0")} == {READY}
    ipam.allocate("net1", "c2", "eth0", V4, mark_ready=True)
    assert ipam.lookup("net1", "c2", "eth0")[0].state == READY
    with pytest.raises(UnknownContainer):
        ipam.mark_ready("net1", "ghost", "eth0")


def test_requested_address(ipam: IpamService) -> None:
    result = ipam.allocate("net1", "c1", "eth0", DUAL, requested_ips=["10.1.0.50/24"])
    assert result.addresses == ["10.1.0.50", "fd00:1::2"]
    again = ipam.allocate("net1", "c1", "eth0", DUAL, requested_ips=["10.1.0.50"])
    assert again == result
    with pytest.raises(AddressInUse, match="already allocated"):
        ipam.allocate("net1", "c2", "eth0", DUAL, requested_ips=["10.1.0.50"])
    with pytest.raises(AddressInUse, match="already holds"):
        ipam.allocate("net1", "c1", "eth0", DUAL, requested_ips=["10.1.0.51"])
    with pytest.raises(InvalidConfig, match="not in any configured range"):
        ipam.allocate("net1", "c3", "eth0", DUAL, requested_ips=["10.2.0.5"])
    with pytest.raises(InvalidConfig, match="same range set"):
        ipam.allocate("net1", "c3", "eth0", DUAL, requested_ips=["10.1.0.7", "10.1.0.8"])
    with pytest.raises(AddressInUse, match="gateway"):
        ipam.allocate("net1", "c3", "eth0", DUAL, requested_ips=["10.1.0.1"])
    assert ipam.lookup("net1", "c2", "eth0") == ipam.lookup("net1", "c3", "eth0") == []


def test_reserved_never_handed_out(ipam: IpamService) -> None:
    conf = {"subnet": "10.1.0.0/29", "reserved": ["10.1.0.2", "10.1.0.4/31"]}
    got = [ipam.allocate("net1", f"c{i}", "eth0", conf).addresses[0] for i in range(2)]
    assert got == ["10.1.0.3", "10.1.0.6"]
    with pytest.raises(AddressExhausted):
        ipam.allocate("net1", "c9", "eth0", conf)


def test_exhaustion_leaves_no_partial_reservation(ipam: IpamService, store: Store) -> None:
    conf = {"ranges": [[{"subnet": "fd00:9::/64"}], [TINY]]}
    ipam.allocate("net1", "c1", "eth0", conf)
    rev = store.revision()
    with pytest.raises(AddressExhausted):
        ipam.allocate("net1", "c2", "eth0", conf)  # v6 would fit, v4 does not
    assert ipam.lookup("net1", "c2", "eth0") == []
    assert store.revision() == rev


def test_parsed_config_accepted(ipam: IpamService) -> None:
    assert ipam.allocate("net1", "c1", "eth0", parse_ipam_config(V4)).addresses == ["10.1.0.2"]


@pytest.mark.parametrize(
    ("network", "cid", "ifname"),
    [("bad/name", "c1", "eth0"), ("", "c1", "eth0"), ("net", "../x", "eth0"), ("net", "c1", "")],
)
def test_rejects_unsafe_names(ipam: IpamService, network: str, cid: str, ifname: str) -> None:
    with pytest.raises(InvalidConfig):
        ipam.allocate(network, cid, ifname, V4)


# -- release / gc / rollback ----------------------------------------------------------


def test_release_is_idempotent(ipam: IpamService) -> None:
    ipam.allocate("net1", "c1", "eth0", DUAL)
    assert ipam.release("net1", "c1", "eth0") == ["10.1.0.2", "fd00:1::2"]
    assert ipam.release("net1", "c1", "eth0") == []
    assert ipam.release("net1", "never", "eth0") == []
    assert ipam.release("no-such-net", "c1", "eth0") == []
    assert ipam.reservations("net1") == []
    assert ipam.networks() == []


def test_gc_releases_what_is_not_valid(ipam: IpamService, store: Store) -> None:
    for cid in ("keep", "drop"):
        ipam.allocate("net1", cid, "eth0", V4, mark_ready=True)
    ipam.allocate("net1", "inflight", "eth0", V4)  # pending, owner (us) alive
    IpamService(store, owner=dead_owner()).allocate("net1", "crashed", "eth0", V4)
    released = ipam.gc("net1", {("keep", "eth0")})
    assert sorted(r.container_id for r in released) == ["crashed", "drop"]
    left = sorted(r.container_id for r in ipam.reservations("net1"))
    assert left == ["inflight", "keep"]
    assert ipam.gc("net1", {("keep", "eth0"), ("inflight", "eth0")}) == []


def test_gc_within_judges_only_its_own_subnets(ipam: IpamService) -> None:
    """A store shared by nodes: one node's GC leaves the other nodes' blocks alone."""
    a = {"type": "podnet-ipam", "ranges": [[{"subnet": "10.244.0.0/24"}]]}
    b = {"type": "podnet-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]}
    ipam.allocate("cluster", "on-a", "eth0", a, mark_ready=True)
    ipam.allocate("cluster", "on-b", "eth0", b, mark_ready=True)
    scope = gc_scope(parse_ipam_config(a))
    assert [str(n) for n in scope] == ["10.244.0.0/24"]
    assert [r.container_id for r in ipam.gc("cluster", set(), scope)] == ["on-a"]
    assert [r.container_id for r in ipam.reservations("cluster")] == ["on-b"]


def test_gc_matches_ifname_too(ipam: IpamService) -> None:
    ipam.allocate("net1", "c1", "eth0", V4, mark_ready=True)
    ipam.allocate("net1", "c1", "eth1", V4, mark_ready=True)
    released = ipam.gc("net1", [("c1", "eth0")])
    assert [r.ifname for r in released] == ["eth1"]


def test_rollback_dead_pending(store: Store) -> None:
    live = IpamService(store)
    live.allocate("net1", "alive", "eth0", V4)
    IpamService(store, owner=dead_owner()).allocate("net1", "dead", "eth0", V4)
    IpamService(store, owner=dead_owner()).allocate("net2", "dead2", "eth0", V4)
    reused = f"{os.getpid()}:1"  # our pid, another start time: a recycled pid
    IpamService(store, owner=reused).allocate("net1", "recycled", "eth0", V4)
    finished = IpamService(store, owner=dead_owner())
    finished.allocate("net1", "done", "eth0", V4, mark_ready=True)

    released = live.rollback_dead_pending("net1")
    assert sorted(r.container_id for r in released) == ["dead", "recycled"]
    assert [r.container_id for r in live.rollback_dead_pending()] == ["dead2"]
    left = sorted(r.container_id for r in live.reservations("net1"))
    assert left == ["alive", "done"]


def test_owner_identity() -> None:
    me = process_owner()
    pid, start = me.split(":")
    assert int(pid) == os.getpid() and int(start) > 0
    assert owner_alive(me)
    assert not owner_alive(f"{pid}:{int(start) + 1}")
    assert not owner_alive(dead_owner())
    assert not owner_alive("garbage")
    assert not owner_alive("")


def test_owner_tags_name_their_node_and_boot() -> None:
    """A tag names the node and boot whose /proc its pid belongs to: another node's is
    never judged dead here, this node's of an earlier boot always is, and a tag of
    before (pid:starttime) is judged locally as it always was."""
    me = NodeIdentity("a" * 32, "11111111-2222-3333-4444-555555555555", "node-a")
    tag = me.owner()
    owner = parse_owner(tag)
    assert owner is not None and (owner.node, owner.boot_id, owner.pid) == ("node-a", me.boot_id, os.getpid())
    assert owner_state(tag, me.names, me.boot_id) == ALIVE and me.owner_alive(tag)
    pid_start = process_owner()
    dead = dead_owner()
    # another node: not ours to judge, whatever its pid means here
    assert owner_state(f"node-b:{me.boot_id}:{dead}", me.names, me.boot_id) == FOREIGN
    assert me.owner_alive(f"node-b:{me.boot_id}:{dead}")
    # this node (by name or by machine id, as the plugin's fallback writes it)
    assert owner_state(f"{'a' * 32}:{me.boot_id}:{pid_start}", me.names, me.boot_id) == ALIVE
    assert owner_state(f"node-a:{me.boot_id}:{dead}", me.names, me.boot_id) == DEAD
    assert owner_state(f"node-a:99999999-2222-3333-4444-555555555555:{pid_start}", me.names, me.boot_id) == DEAD
    # tags of before: this namespace's, judged in the local /proc
    assert owner_state(pid_start, me.names, me.boot_id) == ALIVE
    assert owner_state(dead, me.names, me.boot_id) == DEAD
    for garbage in ("", "x", "node:boot:x:1", ":boot:1:1", "node::1:1", "a:b:c:d:0:1"):
        assert owner_state(garbage, me.names, me.boot_id) == DEAD, garbage
    # no machine id and no boot id known: tags stay what they were
    assert NodeIdentity("", "").owner() == pid_start and NodeIdentity("", "").node == ""


def test_reservations_say_their_node() -> None:
    store = MemoryStore()
    b = NodeIdentity("b" * 32, "11111111-2222-3333-4444-555555555555", "node-b")
    IpamService(store, identity=b).allocate("net1", "c1", "eth0", V4)
    IpamService(store, owner=process_owner()).allocate("net1", "old", "eth0", V4)
    assert {r.container_id: r.node for r in IpamService(store).reservations("net1")} == {"c1": "node-b", "old": ""}


def test_corrupt_reservation_still_blocks_its_address(ipam: IpamService, store: Store) -> None:
    store.put("ipam/net1/ip/10.1.0.2", "not json")
    assert ipam.allocate("net1", "c1", "eth0", V4).addresses == ["10.1.0.3"]
    assert ipam.rollback_dead_pending() == []  # not provably pending: left to GC
    assert [r.address for r in ipam.gc("net1", {("c1", "eth0")})] == ["10.1.0.2"]


# -- status -----------------------------------------------------------------------


def test_free_count(ipam: IpamService) -> None:
    conf = {**V4, "reserved": ["10.1.0.200/29"]}
    assert ipam.free_count("net1", conf) == 253 - 8
    for i in range(3):
        ipam.allocate("net1", f"c{i}", "eth0", conf)
    assert ipam.free_count("net1", conf) == 250 - 8
    dual_tiny = {"ranges": [[{"subnet": "fd00::/64"}], [TINY]]}
    assert ipam.free_count("net2", dual_tiny) == 1  # the scarcer set decides
    ipam.allocate("net2", "c1", "eth0", dual_tiny)
    assert ipam.free_count("net2", dual_tiny) == 0


# -- concurrency ------------------------------------------------------------------


def test_hundred_threads_get_distinct_addresses(store: Store) -> None:
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(100)

    def add(i: int) -> None:
        try:
            svc = IpamService(store)
            barrier.wait()
            results[f"c{i}"] = svc.allocate("net1", f"c{i}", "eth0", DUAL).addresses
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    v4 = [addrs[0] for addrs in results.values()]
    v6 = [addrs[1] for addrs in results.values()]
    assert len(set(v4)) == len(set(v6)) == 100
    assert len(IpamService(store).reservations("net1")) == 200


_ALLOCATOR = """
import json, sys
from podnet.ipam.service import IpamService
from podnet.store import open_store
url, worker, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
conf = {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]}
store = open_store(url)
svc = IpamService(store)
got = [svc.allocate("net1", f"{worker}-{i}", "eth0", conf).addresses for i in range(count)]
print(json.dumps(got), flush=True)  # os._exit below skips the flush of buffered stdout
if mode == "crash":
    import os
    os._exit(0)  # die mid-ADD: reservations stay pending
store.close()
"""


def run_allocator(url: str, worker: str, count: int, mode: str = "ok") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _ALLOCATOR, url, worker, str(count), mode],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_processes_get_distinct_addresses(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'ipam.db'}"
    procs = [run_allocator(url, f"w{n}", 20) for n in range(5)]
    everything: list[list[str]] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        everything.extend(json.loads(out))
    assert len(everything) == 100
    assert len({a[0] for a in everything}) == len({a[1] for a in everything}) == 100
    store = SqliteStore(tmp_path / "ipam.db")
    assert len(IpamService(store).reservations("net1")) == 200
    store.close()


def test_dead_process_pending_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "ipam.db"
    store = SqliteStore(path)
    ipam = IpamService(store)
    ipam.allocate("net1", "mine", "eth0", V4)  # pending, owned by this live process
    proc = run_allocator(f"sqlite://{path}", "crashed", 2, mode="crash")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    child = json.loads(out)
    held = {r.container_id: r for r in ipam.reservations("net1")}
    assert held["crashed-0"].state == PENDING
    crashed = parse_owner(held["crashed-0"].owner)
    assert crashed is not None and crashed.pid == proc.pid and crashed.node == NodeIdentity.local().node
    released = ipam.rollback_dead_pending()
    assert sorted(r.address for r in released) == sorted(a for pair in child for a in pair)
    assert [r.container_id for r in ipam.reservations("net1")] == ["mine"]
    store.close()

"""The isolation table: golden rendering, and the agent service converging it from the
store (FakeNft, a SQLite store in tmp: no root)."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from podnet.agent.isolation_service import KEPT, IsolationService
from podnet.errors import KernelError
from podnet.kernel import isolation
from podnet.kernel.nft import FakeNft
from podnet.model.network import NetworkRecord
from podnet.networks.service import SYNC_OP, NetworkService
from podnet.state import StatePaths
from podnet.store import open_store

RESET = "add table inet podnet-iso\ndelete table inet podnet-iso\n"


def net(name: str, bridge: str | None, internal: bool = False, driver: str = "bridge") -> NetworkRecord:
    return NetworkRecord(name, name.ljust(64, "0"), driver, (), internal=internal, bridge=bridge)


def test_no_networks_removes_the_table():
    assert isolation.render([]) == RESET


def test_one_plain_network_needs_no_rules():
    assert isolation.render([net("a", "pnba")]) == RESET


def test_golden_three_networks_one_internal_one_macvlan():
    script = isolation.render(
        [net("c", "pnbc", internal=True), net("a", "pnba"), net("mv", None, driver="macvlan"), net("b", "pnbb")]
    )
    assert script == RESET + (
        "table inet podnet-iso {\n"
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        '\t\tiifname "pnba" oifname { "pnbb", "pnbc" } drop comment "net a: isolated from other networks"\n'
        '\t\tiifname "pnbb" oifname { "pnba", "pnbc" } drop comment "net b: isolated from other networks"\n'
        '\t\tiifname "pnbc" oifname { "pnba", "pnbb" } drop comment "net c: isolated from other networks"\n'
        '\t\tiifname "pnbc" oifname != "pnbc" drop comment "net c: internal, no traffic out"\n'
        '\t\toifname "pnbc" iifname != "pnbc" drop comment "net c: internal, no traffic in"\n'
        "\t}\n"
        "}\n"
    )


def test_single_internal_network():
    rules = isolation.rules([net("i", "pnbi", internal=True)])
    assert rules == [
        'iifname "pnbi" oifname != "pnbi" drop comment "net i: internal, no traffic out"',
        'oifname "pnbi" iifname != "pnbi" drop comment "net i: internal, no traffic in"',
    ]


def test_comments_fit_nft_limit():
    name = "n" * 64  # the longest network name
    for rule in isolation.rules([net(name, "pnb1"), net("x", "pnb2", internal=True), net(name[:-1] + "i", "pnb3", internal=True)]):
        comment = rule.split('comment "', 1)[1].rstrip('"')
        assert len(comment.encode()) <= 128


def test_apply_returns_rules_in_force():
    nft = FakeNft()
    assert isolation.apply(nft, [net("a", "pnba"), net("b", "pnbb")]) == isolation.rules(
        [net("a", "pnba"), net("b", "pnbb")]
    )
    assert nft.scripts == [isolation.render([net("a", "pnba"), net("b", "pnbb")])]


# -- the agent service


@pytest.fixture
def paths(tmp_path) -> StatePaths:
    return StatePaths(tmp_path / "state")


@pytest.fixture
def store(paths):
    """One handle per process and file, shared (as the agent shares its own)."""
    with open_store(str(paths.store)) as handle:
        yield handle


def wait_for(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_service_converges_at_start_on_change_and_on_demand(paths, store):
    nft = FakeNft()
    svc = IsolationService(lambda: store, nft, watch_timeout=0.1)
    networks = NetworkService(paths, "/run/podnet/t.sock", store=store)
    try:
        svc.start()
        time.sleep(0.3)  # converged at start: no networks, no marker: the kernel is left alone
        assert nft.scripts == []
        networks.create("a")
        networks.create("b", internal=True)
        wait_for(lambda: bool(nft.scripts) and '"net b: internal, no traffic in"' in nft.scripts[-1])
        assert nft.scripts[-1] == isolation.render(networks.list())
        result = svc.ops()[SYNC_OP]({"op": SYNC_OP}, [])
        assert result["table"] == "inet podnet-iso"
        assert result["networks"] == ["a", "b"]
        assert len(result["rules"]) == 4
        networks.remove("b")
        wait_for(lambda: nft.scripts[-1] == RESET)
    finally:
        svc.stop()
        networks.close()


def test_service_retries_after_a_failed_apply(paths, store):
    with NetworkService(paths, "/run/podnet/t.sock", store=store) as networks:
        networks.create("a")
    nft = FakeNft()
    nft.fail = "table busy"
    svc = IsolationService(lambda: store, nft, watch_timeout=0.1)
    try:
        svc.start()
        wait_for(lambda: nft.scripts == [RESET], timeout=5)  # second attempt, after 1 s
    finally:
        svc.stop()


def test_service_resyncs_periodically(paths, store):
    with NetworkService(paths, "/run/podnet/t.sock", store=store) as networks:
        networks.create("a")
    nft = FakeNft()
    svc = IsolationService(lambda: store, nft, resync_seconds=0.2, watch_timeout=0.05)
    try:
        svc.start()
        wait_for(lambda: len(nft.scripts) >= 3)
    finally:
        svc.stop()


def test_sync_op_error_is_a_podnet_error(paths, store):
    with NetworkService(paths, "/run/podnet/t.sock", store=store) as networks:
        networks.create("a")
    nft = FakeNft()
    nft.fail = "boom"
    svc = IsolationService(lambda: store, nft)
    with pytest.raises(KernelError):
        svc.converge()
    svc.stop()


def test_stop_without_start_is_harmless(store):
    IsolationService(lambda: store, FakeNft()).stop()


def test_for_agent_shares_the_agents_store_handle(paths, store):
    """A second SqliteStore on the same file in one process would go stale: reuse the
    CNI service's handle whenever --store is the state dir's store."""
    asked: list[str] = []

    def agent(store_path: str) -> SimpleNamespace:
        service = SimpleNamespace(store=lambda path: asked.append(path) or store)
        return SimpleNamespace(state=paths, store_path=store_path, service=service)

    IsolationService.for_agent(agent(str(paths.root) + "/./store.db")).converge()
    IsolationService.for_agent(agent("/elsewhere/agent.db")).converge()
    assert asked == [str(paths.root) + "/./store.db", str(paths.store)]


def test_store_that_does_not_exist_yet(paths):
    """An agent whose state dir has no store yet: the kernel left alone now (nothing
    says there are no networks), the networks as soon as the store appears, and no
    store created by the agent."""
    nft = FakeNft()
    opened: list[object] = []

    def existing():
        if not paths.store.exists():
            return None
        opened.append(open_store(str(paths.store)))
        return opened[-1]

    svc = IsolationService(existing, nft, watch_timeout=0.05)
    try:
        svc.start()
        time.sleep(0.3)
        assert not paths.store.exists() and nft.scripts == []
        with NetworkService(paths) as networks:
            networks.create("x", internal=True)
        wait_for(lambda: bool(nft.scripts) and "net x: internal" in nft.scripts[-1])
    finally:
        svc.stop()
        for store in opened:
            store.close()


# -- fail closed: the service removes the table only when the store says so (issue 10, item 4)


def test_a_store_without_networks_or_marker_leaves_the_table_alone(store):
    """A wrong state dir or a fresh store looks like "no networks": the table in force
    (internal networks' isolation) stays until the store records the last rm."""
    nft = FakeNft()
    svc = IsolationService(lambda: store, nft)
    result = svc.converge()
    assert nft.scripts == [] and result["kept"], result


@pytest.mark.parametrize("in_force", [True, False])
def test_the_table_left_alone_is_warned_about_only_when_there_is_one(store, caplog, in_force):
    tables = {(isolation.FAMILY, isolation.TABLE): {"nftables": []}} if in_force else {}
    svc = IsolationService(lambda: store, FakeNft(tables))
    with caplog.at_level(logging.DEBUG, logger="podnet.agent.isolation"):
        assert svc.converge()["kept"] and svc.converge()["kept"]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == ([f"isolation: {KEPT}"] if in_force else [])  # once, at start


def test_no_store_at_all_leaves_the_table_alone():
    nft = FakeNft()
    svc = IsolationService(lambda: None, nft)
    assert svc.converge()["kept"] and nft.scripts == []


def test_rm_of_the_last_network_writes_the_marker_and_the_table_goes(paths, store):
    from podnet import keys

    nft = FakeNft()
    svc = IsolationService(lambda: store, nft)
    with NetworkService(paths, "/run/podnet/t.sock", store=store) as networks:
        networks.create("a", internal=True)
        assert store.get(keys.none_left("networks")) is None
        svc.converge()
        assert "net a: internal" in nft.scripts[-1]
        networks.remove("a")
        assert store.get(keys.none_left("networks")) is not None
        assert not svc.converge()["kept"] and nft.scripts[-1] == RESET
        networks.create("b")
        assert store.get(keys.none_left("networks")) is None  # networks again: the marker goes

"""NetworkService against a state dir in tmp: records, conflists, attached containers,
and that a failed create or rm leaves nothing half-done (no root needed)."""

from __future__ import annotations

import contextlib
import json

import pytest

from podnet.errors import InvalidConfig, KernelError, StoreError
from podnet.ipam.service import IpamService
from podnet.model.network import NetworkRecord
from podnet.networks.errors import NetworkExists, NetworkInUse, NetworkNotFound
from podnet.networks.service import NetworkService
from podnet.rpc.client import AgentUnavailable
from podnet.state import StatePaths
from podnet.store import open_store

SOCK = "/run/podnet/t-none.sock"


@pytest.fixture
def paths(tmp_path) -> StatePaths:
    return StatePaths(tmp_path / "state")


@pytest.fixture
def svc(paths):
    with NetworkService(paths, SOCK) as service:
        yield service


def put_container(svc: NetworkService, name: str, network: str | None, state: str = "running") -> None:
    svc.store.put_json(
        f"containers/{name}",
        {"name": name, "id": name * 4, "network_mode": "bridge", "network": network,
         "ips": ["10.89.0.2"], "state": state},
    )


def test_create_writes_record_and_conflist(svc, paths):
    network = svc.create("web", subnets=["10.7.0.0/24"])
    record = open_store(str(paths.store)).get_json("networks/web")
    assert record == network.to_json()
    assert len(record["id"]) == 64 and record["bridge"] == "pnb" + record["id"][:10]
    doc = json.loads(svc.conflist_path("web").read_text())
    assert doc["name"] == "web" and doc["plugins"][0]["agentSocket"] == SOCK
    assert doc["plugins"][0]["ipam"]["dataDir"] == str(paths.root)
    assert svc.get("web") == network
    assert [n.name for n in svc.list()] == ["web"]


def test_second_default_network_gets_the_next_24(svc):
    assert str(svc.create("a").subnets[0].subnet) == "10.89.0.0/24"
    assert str(svc.create("b").subnets[0].subnet) == "10.89.1.0/24"


def test_socket_defaults_to_the_environment(paths, monkeypatch):
    monkeypatch.setenv("PODNET_AGENT_SOCKET", "/run/podnet/env.sock")
    with NetworkService(paths) as service:
        assert service.socket_path == "/run/podnet/env.sock"


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"name": "bad name"}, InvalidConfig, "invalid network name 'bad name'"),
        ({"name": "a", "subnets": ["10.1.0.0/24"]}, NetworkExists, "'a' is already in use"),
        ({"name": "z", "subnets": ["10.1.0.128/25"]}, InvalidConfig, "overlaps subnet 10.1.0.0/24 of network 'a'"),
        ({"name": "z", "driver": "macvlan", "parent": "pn-no-such0"}, InvalidConfig,
         "parent interface 'pn-no-such0' does not exist"),
    ],
)
def test_create_errors_write_nothing(svc, kw, error, message):
    svc.create("a", subnets=["10.1.0.0/24"])
    before = sorted(p.name for p in svc.paths.net_d.iterdir())
    revision = svc.store.revision()
    name = kw.pop("name")
    with pytest.raises(error) as err:
        svc.create(name, **kw)
    assert message in err.value.msg
    assert sorted(p.name for p in svc.paths.net_d.iterdir()) == before
    assert svc.store.revision() == revision


def test_foreign_conflist_is_never_overwritten(svc):
    svc.paths.net_d.mkdir(parents=True)
    foreign = svc.conflist_path("theirs")
    foreign.write_text("{}")
    with pytest.raises(NetworkExists, match="already in use by"):
        svc.create("theirs")
    assert foreign.read_text() == "{}"
    assert svc.list() == []


def test_failed_commit_removes_the_conflist(svc, monkeypatch):
    """The conflist is written inside the transaction; if the commit fails, it goes."""
    real = svc.store.transaction
    seen: list[bool] = []
    depth = [0]

    @contextlib.contextmanager
    def failing_commit():
        depth[0] += 1
        try:
            with real():
                yield svc.store
                if depth[0] == 1:  # the outermost transaction: create's own
                    seen.append(svc.conflist_path("web").exists())
                    raise StoreError("disk full")
        finally:
            depth[0] -= 1

    monkeypatch.setattr(svc.store, "transaction", failing_commit)
    with pytest.raises(StoreError):
        svc.create("web")
    assert seen == [True]
    assert not svc.conflist_path("web").exists()
    monkeypatch.undo()
    assert svc.list() == []


def test_get_unknown(svc):
    with pytest.raises(NetworkNotFound) as err:
        svc.get("nope")
    assert err.value.msg == "network 'nope' not found"
    with pytest.raises(NetworkNotFound):
        svc.get("../etc")


def test_remove(svc):
    svc.create("web")
    removal = svc.remove("web")
    assert removal.network.name == "web" and removal.detached == [] and not removal.bridge_deleted
    assert svc.list() == [] and not svc.conflist_path("web").exists()
    with pytest.raises(NetworkNotFound):
        svc.remove("web")


def test_containers_on_and_rm_refusal(svc):
    svc.create("web")
    svc.create("db")
    put_container(svc, "c1", "web")
    put_container(svc, "c2", "web", state="exited")  # any state counts
    put_container(svc, "c3", "db")
    put_container(svc, "c4", None)
    assert [c["name"] for c in svc.containers_on("web")] == ["c1", "c2"]
    with pytest.raises(NetworkInUse) as err:
        svc.remove("web")
    assert err.value.msg == "network 'web' has 2 attached container(s): c1, c2"
    assert "--force" in err.value.details
    assert svc.get("web") and svc.conflist_path("web").exists()
    removal = svc.remove("web", force=True)
    assert [c["name"] for c in removal.detached] == ["c1", "c2"]
    assert [n.name for n in svc.list()] == ["db"]
    assert svc.store.get_json("containers/c1")["network"] == "web"  # containers are not ours


def test_cni_attachments_of_other_runtimes_count(svc, paths):
    network = svc.create("web")
    doc = json.loads(svc.conflist_path("web").read_text())
    ipam_store = open_store(str(paths.root / "podnet.db"))
    try:
        IpamService(ipam_store).allocate("web", "podman-cid", "eth0", doc["plugins"][0]["ipam"])
    finally:
        ipam_store.close()
    attached = svc.containers_on("web")
    assert attached == [{"name": None, "id": "podman-cid", "state": "attached (CNI)", "ips": ["10.89.0.2"]}]
    with pytest.raises(NetworkInUse, match="podman-cid"):
        svc.remove(network.name)
    with open_store(str(paths.root / "podnet.db")) as shared:  # a handle the caller holds
        assert NetworkService(paths, SOCK, svc.store, shared).containers_on("web") == attached
        assert shared.revision() > 0  # still open: not ours to close


def test_sync_without_agent(svc):
    with pytest.raises(AgentUnavailable):
        svc.sync_isolation(timeout=1)


def test_record_roundtrip_keeps_unknown_fields_out():
    raw = {"name": "x", "id": "f" * 64, "driver": "bridge", "subnets": [], "parent": None,
           "mtu": None, "internal": True, "bridge": "pnbffffffffff", "created": 2.0, "labels": {"a": "b"}}
    assert NetworkRecord.from_json(raw).to_json() == raw


@pytest.mark.parametrize(
    ("error", "warning"),
    [
        (AgentUnavailable("no agent"), "isolation is applied when the agent runs"),
        (KernelError("nft transaction failed"), "could not apply network isolation: nft transaction failed"),
    ],
)
def test_cli_sync_only_warns(capsys, error, warning):
    """create/rm stand even when the agent cannot apply the table right now."""
    from podnet.cli.network import _sync

    class Stub:
        socket_path = SOCK

        def sync_isolation(self):
            raise error

    _sync(Stub())  # type: ignore[arg-type]
    assert warning in capsys.readouterr().err

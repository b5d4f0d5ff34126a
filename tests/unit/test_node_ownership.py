"""Records in a store that several machines share say which node they belong to, and
GC, dead-owner rollback and the agent's resync judge only their own node's (issue 10,
item 1).

Simulated at the service level: "node B" is what B's agent writes into the shared
store (its node name in the record, its node and boot in the owner tag), and both
machines have one network-namespace identity, as the root namespaces of real machines
do (dev 4, inode 4026531833 on every machine of this kernel). This process plays node
A: it has no node name, so its node is this machine's id.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import uuid
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest

from podnet import keys
from podnet.agent import resync as resync_module
from podnet.endpoints import service as service_module
from podnet.endpoints.service import CniService
from podnet.endpoints.stores import noted, registry_for
from podnet.identity import NodeIdentity
from podnet.ipam.service import PENDING, READY, IpamService
from podnet.kernel import links, netns
from podnet.naming import attach_id, host_veth_name
from podnet.procs import process_owner
from podnet.store import open_store

ROOT_NS = [4, 4026531833]
B = "node-b"
B_BOOT = str(uuid.uuid4())


@pytest.fixture(autouse=True)
def one_namespace_identity_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "identity", lambda fd: tuple(ROOT_NS))


def dead_pid_tag() -> str:
    """pid:starttime of a process that has exited: what another machine's pid looks
    like in this machine's /proc (nothing, or someone else)."""
    proc = subprocess.Popen(["true"])
    tag = process_owner(proc.pid)
    proc.wait()
    return tag


def b_owner() -> str:
    return f"{B}:{B_BOOT}:{dead_pid_tag()}"


def cluster_conf(subnet: str, store: Path, **extra: object) -> dict:
    """The cluster network of one node (its block), naming the shared store. macvlan:
    its teardown without a container namespace touches no kernel."""
    return {"cniVersion": "1.1.0", "name": "cluster", "type": "podnet", "master": "eth0", "store": str(store),
            "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": subnet}]]}, **extra}


def b_record(conf: dict, cid: str, address: str, state: str = READY) -> str:
    """An endpoint record as node B's agent writes it."""
    record: dict = {"state": state}
    if state == PENDING:
        record["owner"] = b_owner()
    record.update(attach_id=attach_id("cluster", cid, "eth0"), mode="macvlan", netns=f"/run/netns/{cid}",
                  host_netns=ROOT_NS, node=B, config=conf, env={"CNI_PATH": "/opt/cni/bin"}, ts=1.0)
    if state == READY:
        record.update(ips=[f"{address}/24"], host_links=[], nat=False, result={"cniVersion": "1.1.0"})
    return json.dumps(record)


def add_b_pod(store_path: Path, conf: dict, cid: str, state: str = READY) -> str:
    """B's pod: its reservation (owner B) and its endpoint record; returns the address."""
    with open_store(str(store_path)) as store:
        held = IpamService(store, owner=b_owner()).allocate("cluster", cid, "eth0", conf["ipam"],
                                                            mark_ready=state == READY)
        address = str(held.ips[0].address)
        store.put(keys.endpoint("cluster", cid, "eth0"), b_record(conf, cid, address, state))
    return address


def snapshot(store_path: Path) -> dict[str, str]:
    with open_store(str(store_path)) as store:
        return {e.key: e.value for e in store.list(keys.ENDPOINTS) + store.list(keys.IPAM)}


def cni_gc(service: CniService, conf: dict, valid: list[tuple[str, str]]) -> None:
    conf = {**conf, "cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in valid]}
    out = io.StringIO()
    code = service.run_invocation({"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}, json.dumps(conf).encode(),
                                  out, None, None)
    assert code == 0, out.getvalue()


def test_a_runtime_gc_on_node_a_leaves_node_b_endpoints(tmp_path: Path) -> None:
    shared = tmp_path / "cluster.db"
    conf_b = cluster_conf("10.244.2.0/24", shared)
    add_b_pod(shared, conf_b, "pod-b")
    before = snapshot(shared)
    service = CniService(default_store=str(tmp_path / "agent.db"))
    try:
        cni_gc(service, cluster_conf("10.244.1.0/24", shared), valid=[])
    finally:
        service.close()
    assert snapshot(shared) == before


def test_ipam_gc_leaves_another_nodes_reservations(tmp_path: Path) -> None:
    """Even where the ranges overlap (a store without per-node ranges): B's runtime
    knows B's attachments, A's does not."""
    shared = tmp_path / "cluster.db"
    conf = cluster_conf("10.244.1.0/24", shared)
    add_b_pod(shared, conf, "pod-b")
    with open_store(str(shared)) as store:
        IpamService(store, owner=dead_pid_tag()).allocate("cluster", "old-a", "eth0", conf["ipam"], mark_ready=True)
        released = IpamService(store).gc("cluster", [])
        assert [r.container_id for r in released] == ["old-a"]  # a record of before: judged as always
        assert [r.container_id for r in IpamService(store).reservations("cluster")] == ["pod-b"]


def test_dead_owner_rollback_on_node_a_leaves_node_b_pending(tmp_path: Path) -> None:
    shared = tmp_path / "cluster.db"
    conf = cluster_conf("10.244.2.0/24", shared)
    add_b_pod(shared, conf, "pod-b", state=PENDING)
    with open_store(str(shared)) as store:
        # an ADD of this machine killed mid-way, tagged the way records were before
        IpamService(store, owner=dead_pid_tag()).allocate("cluster", "crashed-a", "eth0", conf["ipam"])
        released = IpamService(store).rollback_dead_pending()
        assert [r.container_id for r in released] == ["crashed-a"]
        left = IpamService(store).reservations("cluster")
        assert [(r.container_id, r.state) for r in left] == [("pod-b", PENDING)]


class FakeNat:
    def __init__(self) -> None:
        self.claimed: set[tuple[str, str]] = set()

    def remove_unclaimed(self, claimed: set[tuple[str, str]]) -> set[str]:
        self.claimed = set(claimed)
        return set()


class NoNetlink:
    def __enter__(self) -> NoNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_resync_on_node_a_judges_only_its_own_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resync's decisions with the kernel faked: no repair, rollback or link deletion
    for B's ready and pending pods; B's links and rules still count as claimed; A's own
    crashed ADD (a record of before: no node) is still rolled back."""
    store_path = tmp_path / "agent.db"
    conf_b = {**cluster_conf("10.244.2.0/24", store_path), "mode": "bridge", "bridge": "pncl0"}
    del conf_b["master"]
    add_b_pod(store_path, conf_b, "pod-b")
    add_b_pod(store_path, conf_b, "pod-b2", state=PENDING)
    conf_a = {**conf_b, "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]}}
    with open_store(str(store_path)) as store:
        IpamService(store, owner=dead_pid_tag()).allocate("cluster", "crashed-a", "eth0", conf_a["ipam"])
        store.put(keys.endpoint("cluster", "crashed-a", "eth0"), json.dumps({
            "state": PENDING, "owner": dead_pid_tag(), "attach_id": attach_id("cluster", "crashed-a", "eth0"),
            "mode": "bridge", "netns": "", "host_netns": ROOT_NS, "config": conf_a, "env": {}, "ts": 1.0}))
    calls: dict[str, list] = {"repair": [], "roll_back": [], "delete_link": []}
    monkeypatch.setattr(resync_module, "_repair", lambda s, conf, rec, fd: calls["repair"].append(rec.attach_id) or [])
    monkeypatch.setattr(resync_module, "_roll_back",
                        lambda s, st, call, rec, fd: calls["roll_back"].append(call.request.container_id))
    claimed_links: set[str] = set()
    monkeypatch.setattr(resync_module, "_remove_orphan_links", lambda fd, claimed: claimed_links.update(claimed) or [])
    monkeypatch.setattr(resync_module, "IPRoute", NoNetlink)
    monkeypatch.setattr(links, "delete_link", lambda ipr, name: calls["delete_link"].append(name))
    monkeypatch.setattr(netns, "entered", lambda fd: nullcontext())
    nat = FakeNat()
    service = CniService(default_store=str(store_path), nat_factory=lambda: nat)  # type: ignore[arg-type,return-value]
    try:
        report = resync_module.resync(service)
    finally:
        service.close()
    assert calls == {"repair": [], "roll_back": ["crashed-a"], "delete_link": []}
    assert report.rolled_back == ["cluster/crashed-a/eth0"] and report.repaired == []
    assert [r.split("/")[1] for r in report.released] == ["10.244.1.2"]
    b_links = {host_veth_name(attach_id("cluster", cid, "eth0")) for cid in ("pod-b", "pod-b2")}
    assert b_links <= claimed_links
    assert host_veth_name(attach_id("cluster", "crashed-a", "eth0")) not in claimed_links  # swept as an orphan
    with open_store(str(store_path)) as store:
        left = {keys.parse_endpoint(e.key)[1] for e in store.list(keys.endpoints())}
        assert left == {"pod-b", "pod-b2"}
        assert {r.container_id for r in IpamService(store).reservations("cluster")} == {"pod-b", "pod-b2"}


def test_gc_on_a_node_still_removes_its_own_stale_records(tmp_path: Path) -> None:
    """Its own by node name, by machine id (what the plugin's fallback writes on this
    machine) or of before (no node, this namespace); B's stays."""
    shared = tmp_path / "cluster.db"
    conf = cluster_conf("10.244.1.0/24", shared)
    add_b_pod(shared, conf, "pod-b")
    me = NodeIdentity("a" * 32, B_BOOT, "node-a")
    with open_store(str(shared)) as store:
        for cid, writer in (("by-name", me), ("by-machine", replace(me, node_name="")), ("of-before", None)):
            owner = writer.owner() if writer else process_owner()
            IpamService(store, owner=owner).allocate("cluster", cid, "eth0", conf["ipam"], mark_ready=True)
            record = json.loads(b_record(conf, cid, "10.244.1.9"))
            if writer:
                record["node"] = writer.node
            else:
                del record["node"]
            store.put(keys.endpoint("cluster", cid, "eth0"), json.dumps(record))
    service = CniService(default_store=str(tmp_path / "agent.db"), identity=me)
    try:
        cni_gc(service, conf, valid=[])
    finally:
        service.close()
    with open_store(str(shared)) as store:
        assert [keys.parse_endpoint(e.key)[1] for e in store.list(keys.endpoints())] == ["pod-b"]
        assert [r.container_id for r in IpamService(store).reservations("cluster")] == ["pod-b"]


class StopAfterPending:
    """An IPAM that stops the ADD right after its pending record is written: what ADD
    did before it builds anything is all there is (no kernel needed)."""

    transactional = False

    def __init__(self, store_path: Path, seen: list[str]) -> None:
        self.store_path, self.seen = store_path, seen

    def prepare(self) -> None:
        """Nothing to read ahead."""

    def add(self, undo: object) -> None:
        with open_store(str(self.store_path)) as store:
            self.seen.extend(e.value for e in store.list(keys.endpoints()))
        raise RuntimeError("stop here")


def stopped_add(service: CniService, conf: dict, store_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run an ADD through `service` up to its pending record; the records it wrote."""
    seen: list[str] = []
    monkeypatch.setattr(service_module, "ipam_for", lambda call, store, identity=None: StopAfterPending(store_path, seen))
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin"}
    try:
        service.run_invocation(env, json.dumps(conf).encode(), io.StringIO(), None, None)
    finally:
        service.close()
    return seen


def test_the_fallback_notes_its_stores_where_the_agent_finds_them(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    socket = str(tmp_path / "agent.sock")
    registry = registry_for(socket)
    data = tmp_path / "data" / "podnet.db"
    data.parent.mkdir()
    fallback = CniService(default_store=str(tmp_path / "default.db"), agent_socket=socket)
    conf = {**cluster_conf("10.85.0.0/24", data), "dataDir": str(data.parent)}
    del conf["store"]
    assert stopped_add(fallback, conf, data, monkeypatch)
    assert noted(registry) == [str(data)]
    # a network without a store of its own: the fallback's default, which an agent
    # running with another --store would not know either
    default = tmp_path / "default.db"
    fallback = CniService(default_store=str(default), agent_socket=socket)
    conf = cluster_conf("10.85.0.0/24", data)
    del conf["store"]
    assert stopped_add(fallback, conf, default, monkeypatch)
    assert sorted(noted(registry)) == sorted([str(data), str(default)])
    Path(registry, "garbage").write_text('"relative/path"')
    Path(registry, "gone").write_text(json.dumps(str(tmp_path / "gone.db")))

    def agent_knows() -> list[str]:
        agent = CniService(default_store=str(tmp_path / "agent.db"), agent_socket=socket, track_stores=True)
        try:
            known = agent.known_stores()
        finally:
            agent.close()
        return [known[0], *sorted(known[1:])]

    assert agent_knows() == [str(tmp_path / "agent.db"), *sorted([str(data), str(default)])]
    shutil.rmtree(registry)  # /run is gone after a reboot: the agent remembered them
    assert agent_knows() == [str(tmp_path / "agent.db"), *sorted([str(data), str(default)])]


def test_add_records_name_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = NodeIdentity("a" * 32, B_BOOT, "node-a")
    store_path = tmp_path / "agent.db"
    service = CniService(default_store=str(store_path), identity=me, agent_socket=str(tmp_path / "agent.sock"),
                         track_stores=True)
    record = json.loads(stopped_add(service, cluster_conf("10.244.1.0/24", store_path), store_path, monkeypatch)[0])
    assert record["node"] == "node-a" and record["host_netns"] == ROOT_NS
    assert record["owner"].startswith(f"node-a:{B_BOOT}:")
    assert noted(registry_for(str(tmp_path / "agent.sock"))) == []  # the agent remembers in its own store

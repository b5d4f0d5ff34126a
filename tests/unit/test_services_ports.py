"""A node port and a published host port share one claim (services/ports.py, the node
port side in services/allocate.py, the CNI side in endpoints/hostports.py): whichever
comes first wins, in both orders and when they race; host ports are per node; a
claim goes with its endpoints. Against the in-memory and SQLite stores (no kernel: the resync test stubs it)."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from contextlib import ExitStack

import pytest

from podnet import keys
from podnet.agent import resync as resync_module
from podnet.cni.config import parse_call
from podnet.cni.skel import CniRequest
from podnet.endpoints import hostports
from podnet.endpoints.service import CniService
from podnet.errors import ObjectError
from podnet.kernel import netns
from podnet.model.base import CorruptRecord
from podnet.model.endpoint import PENDING, EndpointRecord
from podnet.model.records import decode
from podnet.model.service import PortClaim, PortHolder, ServiceSettings
from podnet.objects import store as repo
from podnet.objects.registry import parse_documents
from podnet.services import ports
from podnet.services.kinds import read_service
from podnet.store import open_store

NET = "cluster"


def svc(name: str = "web", node_port: int | None = None, protocol: str = "TCP") -> dict:
    port: dict = {"port": 80, "protocol": protocol}
    if node_port is not None:
        port["nodePort"] = node_port
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "NodePort", "ports": [port]}}


def apply(store, *docs: dict) -> list:
    repo.apply(store, parse_documents(docs))
    return [read_service(store.get(f"{keys.SERVICES}default/{d['metadata']['name']}").json()) for d in docs]


def endpoint(store, cid: str, node: str = "n1", ifname: str = "eth0") -> PortHolder:
    """An endpoint record (as ADD writes it before it claims) and its holder."""
    record = EndpointRecord(PENDING, "0123456789ab", "bridge", f"/run/netns/{cid}", (4, 1), node=node)
    store.put(keys.endpoint(NET, cid, ifname), record.encode())
    return PortHolder(node, NET, cid, ifname)


@pytest.fixture
def store():
    with open_store("memory://") as s:
        s.put(keys.SERVICE_SETTINGS, ServiceSettings(node_ports=(31000, 31002)).encode())
        yield s


def claim_of(store, port: int, proto: str = "tcp") -> PortClaim | None:
    return ports.read(store.get(keys.node_port(proto, port)))


# -- both orders ----------------------------------------------------------------------


def test_a_published_port_refuses_the_node_port_with_the_field_and_the_holder(store):
    holder = endpoint(store, "c1")
    assert ports.claim(store, [("tcp", 31001)], holder) == [("tcp", 31001)]
    with pytest.raises(ObjectError, match=r"Service default/web: spec\.ports\[0\]\.nodePort: node port 31001/TCP "
                                          r"is published as a host port by node n1 \(endpoint cluster/c1/eth0\)"):
        apply(store, svc(node_port=31001))
    assert store.get(keys.object_key(keys.SERVICES, "web", "default")) is None
    assert claim_of(store, 31001) == PortClaim(holders=(holder,))
    (udp,) = apply(store, svc(node_port=31001, protocol="UDP"))  # another protocol: another claim
    assert udp.ports[0].node_port == 31001


def test_a_node_port_refuses_the_published_port_naming_the_service(store):
    apply(store, svc(node_port=31001))
    holder = endpoint(store, "c1")
    with pytest.raises(ports.NodePortTaken, match="hostPort 31001/TCP is the node port of service default/web") as e:
        ports.claim(store, [("tcp", 31000), ("tcp", 31001)], holder)
    assert e.value.code == 999  # generic: retrying cannot help, unlike code 11
    assert store.get(keys.node_port("tcp", 31000)) is None  # the port claimed before it is released again
    assert claim_of(store, 31001) == PortClaim("default/web")


def test_random_node_ports_skip_published_ports(store):
    for port in (31000, 31002):
        ports.claim(store, [("tcp", port)], endpoint(store, f"c{port}"))
    (s,) = apply(store, svc())
    assert s.ports[0].node_port == 31001
    with pytest.raises(ObjectError, match="every node port of 31000-31002 is taken"):
        apply(store, svc("other"))


# -- per node, and released with the endpoint -------------------------------------------


def test_two_nodes_publish_one_host_port_and_the_claim_lasts_until_both_are_gone(store):
    a, b = endpoint(store, "a", node="n1"), endpoint(store, "b", node="n2")
    ports.claim(store, [("udp", 31000)], a)
    assert ports.claim(store, [("udp", 31000)], b) == [("udp", 31000)]
    assert ports.claim(store, [("udp", 31000)], b) == []  # held already: its undo must not release it
    assert claim_of(store, 31000, "udp") == PortClaim(holders=(a, b))
    with pytest.raises(ObjectError, match=r"by node n1 \(endpoint cluster/a/eth0\), node n2 \(endpoint cluster/b/eth0\)"):
        apply(store, svc(node_port=31000, protocol="UDP"))
    ports.release(store, [("udp", 31000)], PortHolder("", NET, "a", "eth0"))  # by endpoint, whoever wrote it
    assert claim_of(store, 31000, "udp") == PortClaim(holders=(b,))
    ports.release(store, [("udp", 31000)], b)
    ports.release(store, [("udp", 31000)], b)  # idempotent
    assert store.list(keys.NODE_PORTS) == []
    apply(store, svc(node_port=31000, protocol="UDP"))


def test_holders_whose_endpoint_is_gone_are_garbage(store):
    """A crash between the claim and the record's removal, or a dead node's records
    freed by a peer: the claim must not keep the port."""
    a, b, c = endpoint(store, "a"), endpoint(store, "b", node="n2"), endpoint(store, "c")
    for holder in (a, b, c):
        ports.claim(store, [("tcp", 31000), ("tcp", 31001)], holder)
    store.delete(keys.endpoint(NET, "a", "eth0"))
    assert ports.prune(store) == [keys.node_port("tcp", 31000), keys.node_port("tcp", 31001)]
    assert claim_of(store, 31000) == PortClaim(holders=(b, c))
    assert ports.prune(store) == []  # nothing left to do: no write
    store.delete(keys.endpoint(NET, "b", "eth0"))
    d = endpoint(store, "d")
    ports.claim(store, [("tcp", 31000)], d)  # every write drops the dead
    assert claim_of(store, 31000) == PortClaim(holders=(c, d))
    store.delete(keys.endpoint(NET, "c", "eth0"))
    store.delete(keys.endpoint(NET, "d", "eth0"))
    (s,) = apply(store, svc(node_port=31000))  # only dead holders: the service takes it over
    assert claim_of(store, 31000) == PortClaim(s.ref)
    ports.prune(store)
    assert claim_of(store, 31000) == PortClaim(s.ref)  # a service's claim is never pruned
    assert store.list(keys.NODE_PORTS) == [store.get(keys.node_port("tcp", 31000))]  # 31001: no holder left


def test_deleting_a_service_frees_its_port_for_a_host_port(store):
    apply(store, svc(node_port=31002))
    repo.delete(store, parse_documents([svc()]))
    holder = endpoint(store, "c1")
    assert ports.claim(store, [("tcp", 31002)], holder) == [("tcp", 31002)]


# -- the record -------------------------------------------------------------------------


def test_the_claim_record_round_trips_and_is_checked(store):
    holder = endpoint(store, "c1")
    ports.claim(store, [("tcp", 31000)], holder)
    entry = store.get(keys.node_port("tcp", 31000))
    assert entry.json() == {"hostPorts": [{"node": "n1", "network": NET, "containerID": "c1", "ifname": "eth0"}]}
    assert decode(entry) == PortClaim(holders=(holder,))
    assert PortClaim("default/web").encode() == '{"service":"default/web"}'  # what ServiceClaim wrote
    for bad in ({}, {"service": "web"}, {"service": "a/b", "hostPorts": []}, {"hostPorts": []},
                {"hostPorts": [{"network": "../x", "containerID": "c", "ifname": "eth0"}]},
                {"hostPorts": [{"network": "n", "containerID": "c", "ifname": "a b"}]},
                {"hostPorts": [holder.to_json(), holder.to_json()]}):
        with pytest.raises(CorruptRecord):
            PortClaim.from_json(bad)


def test_a_damaged_claim_refuses_the_add_and_is_left_alone_by_del_and_prune(store):
    store.put(keys.node_port("tcp", 31000), '{"hostPorts": "broken"}')
    holder = endpoint(store, "c1")
    with pytest.raises(CorruptRecord):
        ports.claim(store, [("tcp", 31000)], holder)
    ports.release(store, [("tcp", 31000)], holder)
    assert ports.prune(store) == []
    assert store.get(keys.node_port("tcp", 31000)).value == '{"hostPorts": "broken"}'


# -- the CNI side -------------------------------------------------------------------------


def call(command: str, cid: str = "c1", host_port: int = 31000, store_name: str | None = "cluster.db",
         mappings: list | None = None):
    config: dict = {"cniVersion": "1.1.0", "name": NET, "type": "podnet", "bridge": "pncl0",
                    "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": "10.244.0.0/24"}]]},
                    "runtimeConfig": {"portMappings": mappings if mappings is not None else [
                        {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"},
                        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},  # outside the range
                        {"hostPort": host_port, "containerPort": 80, "protocol": "sctp"}]}}  # no node port
    if store_name:
        config["ipam"]["store"] = f"/var/lib/podnet/{store_name}"
    return parse_call(CniRequest(command, cid, f"/run/netns/{cid}", "eth0", config=config))


def test_add_claims_only_node_port_range_host_ports_and_undoes_on_failure(store):
    endpoint(store, "c1")
    with ExitStack() as undo:
        hostports.claim(call("ADD"), store, "n1", undo)
        assert [e.key for e in store.list(keys.NODE_PORTS)] == [keys.node_port("tcp", 31000)]
    assert store.list(keys.NODE_PORTS) == []  # the ExitStack ran: the failed ADD's claim is gone
    with ExitStack() as undo:
        hostports.claim(call("ADD"), store, "n1", undo)
        undo.pop_all()  # the ADD succeeded
    assert claim_of(store, 31000) == PortClaim(holders=(PortHolder("n1", NET, "c1", "eth0"),))


def test_docker_style_networks_claim_nothing_and_a_store_without_settings_uses_the_default_range(store):
    endpoint(store, "c1")
    with ExitStack() as undo:
        hostports.claim(call("ADD", store_name=None), store, "n1", undo)  # dataDir: no cluster store
        undo.pop_all()
    assert store.list(keys.NODE_PORTS) == []
    with open_store("memory://") as bare, ExitStack() as undo:
        endpoint(bare, "c1")
        hostports.claim(call("ADD"), bare, "n1", undo)  # 31000: inside the default 30000-32767
        undo.pop_all()
        assert [e.key for e in bare.list(keys.NODE_PORTS)] == [keys.node_port("tcp", 31000)]


def test_add_on_a_node_port_leaves_nothing_claimed(store):
    apply(store, svc(node_port=31002))
    endpoint(store, "c1")
    mappings = [{"hostPort": 31000, "containerPort": 80}, {"hostPort": 31002, "containerPort": 80}]
    with pytest.raises(ports.NodePortTaken, match="31002/TCP is the node port of service default/web"), \
            ExitStack() as undo:
        hostports.claim(call("ADD", mappings=mappings), store, "n1", undo)
    assert [e.key for e in store.list(keys.NODE_PORTS)] == [keys.node_port("tcp", 31002)]


def test_del_releases_the_ports_of_the_recorded_add(store):
    add = call("ADD", host_port=31001)
    record = EndpointRecord(PENDING, "0123456789ab", "bridge", "/run/netns/c1", (4, 1), config=add.request.config)
    store.put(keys.endpoint(NET, "c1", "eth0"), record.encode())
    with ExitStack() as undo:
        hostports.claim(add, store, "n1", undo)
        undo.pop_all()
    hostports.release(call("DEL", mappings=[]), store, record)  # a DEL without runtimeConfig
    assert store.list(keys.NODE_PORTS) == []


def test_gc_prunes_the_claims_of_endpoints_it_removed(store):
    for cid in ("gone", "kept"):
        endpoint(store, cid)
        with ExitStack() as undo:
            hostports.claim(call("ADD", cid), store, "n1", undo)
            undo.pop_all()
    store.delete(keys.endpoint(NET, "gone", "eth0"))  # what GC did to the endpoint
    assert hostports.prune(call("GC"), store) == [keys.node_port("tcp", 31000)]
    assert claim_of(store, 31000) == PortClaim(holders=(PortHolder("n1", NET, "kept", "eth0"),))


# -- races ----------------------------------------------------------------------------------


def test_an_apply_and_an_add_racing_for_one_port_never_both_win(tmp_path):
    """Many rounds of one apply and one ADD racing for the same port on one SQLite
    file, each through its own handle: exactly one wins every round."""
    path = str(tmp_path / "store.db")
    rounds = 40
    with open_store(path, create=True) as s:
        s.put(keys.SERVICE_SETTINGS, ServiceSettings(node_ports=(31000, 31000 + rounds)).encode())
    wins: dict[str, list[int]] = {"apply": [], "add": []}
    start = threading.Barrier(2, timeout=30)  # both sides start each round together,
    late = [random.choice(("apply", "add")) for _ in range(rounds)]  # one a little later

    def pause(side: str, i: int) -> None:
        if late[i] == side:
            time.sleep(random.uniform(0, 0.0005))

    def applier() -> None:
        with open_store(path) as s:
            for i in range(rounds):
                start.wait()
                pause("apply", i)
                try:
                    apply(s, svc(f"s{i}", node_port=31000 + i))
                    wins["apply"].append(i)
                except ObjectError:
                    pass

    def adder() -> None:
        with open_store(path) as s:
            for i in range(rounds):
                holder = endpoint(s, f"c{i}")
                start.wait()
                pause("add", i)
                try:
                    ports.claim(s, [("tcp", 31000 + i)], holder)
                    wins["add"].append(i)
                except ports.NodePortTaken:
                    pass

    threads = [threading.Thread(target=applier), threading.Thread(target=adder)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins["apply"] + wins["add"]) == list(range(rounds))
    with open_store(path) as s:
        for i in range(rounds):
            claim = claim_of(s, 31000 + i)
            assert (claim.service == f"default/s{i}") == (i in wins["apply"])


# -- the agent's start-up resync ---------------------------------------------------------


def test_resync_releases_the_host_ports_of_an_add_that_died(store, monkeypatch: pytest.MonkeyPatch):
    """kill -9 of the agent between the claim and the end of ADD: its restart rolls the
    endpoint back, and the claim goes with it (no leaked claim keeps a node port)."""
    monkeypatch.setattr(netns, "identity", lambda fd: (4, 1))
    monkeypatch.setattr(resync_module, "_roll_back", lambda *args: None)  # no links or rules here
    service = CniService(default_store="memory://")
    dead = subprocess.Popen(["true"])
    owner = service.identity.owner(dead.pid)
    dead.wait()
    add = call("ADD", "crashed")
    record = EndpointRecord(PENDING, "0123456789ab", "bridge", "", (4, 1), config=add.request.config, owner=owner,
                            node=service.identity.node)
    store.put(keys.endpoint(NET, "crashed", "eth0"), record.encode())
    hostports.claim(add, store, service.identity.node, ExitStack())  # the ExitStack dies with the agent
    assert claim_of(store, 31000) is not None
    report = resync_module.ResyncReport()
    resync_module._resync_store(service, store, -1, report, set(), set())
    assert report.rolled_back == [f"{NET}/crashed/eth0"]
    assert report.released == [keys.node_port("tcp", 31000)]
    assert store.list(keys.NODE_PORTS) == []

"""A published port and a NodePort share one claim, through the real CNI path: the
`podnet` executable with `portMappings`, a cluster-style config (its `ipam.store`
names a shared SQLite store that holds the cluster's service settings), run by an
agent and by the plugin's fallback. An ADD whose hostPort is a service's node port is
refused with a message naming the service and leaves no endpoint record, reservation,
veth or NAT rule; a published port refuses the service's apply; DEL and GC release.
"""

from __future__ import annotations

import pytest

from cniharness import Agent, Cni, bridge_config, links, nft_rules
from podnet import keys
from podnet.errors import ObjectError
from podnet.ipam.service import IpamService
from podnet.model.service import ServiceSettings
from podnet.objects import store as repo
from podnet.objects.registry import parse_documents
from podnet.services import ports
from podnet.store import open_store

pytestmark = pytest.mark.root

NET = "pn-hp"


def service(name: str, node_port: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": node_port}]}}


def published(host_port: int) -> dict:
    return {"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]}


@pytest.fixture(params=["agent", "in-process"])
def cluster_cni(request, sandbox, host_ns, cni_bin, socket_path, tmp_path):
    """A bridge network whose config names the shared store (as the cluster conflist
    does), that store holding the service settings and service default/web on 30080."""
    store_path = str(tmp_path / "cluster.db")
    with open_store(store_path, create=True) as store:
        store.put(keys.SERVICE_SETTINGS, ServiceSettings().encode())
        repo.apply(store, parse_documents([service("web", 30080)]))
    config = bridge_config(NET, str(tmp_path), agentSocket=socket_path, ipMasq=True)
    config["ipam"] = {"type": "podnet-ipam", "ranges": [[{"subnet": "10.80.0.0/24"}]], "store": store_path}
    if request.param == "agent":
        Agent(sandbox, host_ns, socket_path, str(tmp_path / "agent.db")).start()
    return Cni(cni_bin, host_ns, config, sandbox), store_path


def state(store_path: str) -> tuple[list, list, list]:
    with open_store(store_path) as store:
        return ([e.key for e in store.list(keys.endpoints())], IpamService(store).reservations(NET),
                [e.key for e in store.list(keys.NODE_PORTS)])


def test_add_on_a_node_port_is_refused_and_leaves_nothing(cluster_cni, sandbox, host_ns):
    cni, store_path = cluster_cni
    c1 = sandbox.netns("c1")
    result = cni.call("ADD", c1, "c1", config={**cni.config, "runtimeConfig": published(30080)})
    assert not result.ok
    assert result.output["code"] == 999, result.output  # not 11: retrying cannot help
    assert result.output["msg"] == "hostPort 30080/TCP is the node port of service default/web"
    assert state(store_path) == ([], [], [keys.node_port("tcp", 30080)])
    assert links(sandbox, host_ns) == []
    assert "30080" not in nft_rules(sandbox, host_ns) and "dnat" not in nft_rules(sandbox, host_ns)
    assert cni.call("DEL", c1, "c1", config={**cni.config, "runtimeConfig": published(30080)}).ok  # as libcni does
    assert state(store_path) == ([], [], [keys.node_port("tcp", 30080)])  # the service keeps its port


def test_a_published_port_refuses_the_service_until_del_and_gc_release_it(cluster_cni, sandbox, host_ns):
    cni, store_path = cluster_cni
    pods = {cid: sandbox.netns(cid) for cid in ("c2", "c3")}
    for cid, port in (("c2", 30081), ("c3", 30082)):
        cni.add(pods[cid], cid, config={**cni.config, "runtimeConfig": published(port)})
    assert "dport 30081" in nft_rules(sandbox, host_ns)
    with open_store(store_path) as store:
        with pytest.raises(ObjectError, match=r"spec\.ports\[0\]\.nodePort: node port 30081/TCP is published as a "
                                              rf"host port by node \S+ \(endpoint {NET}/c2/eth0\)"):
            repo.apply(store, parse_documents([service("api", 30081)]))
        assert ports.read(store.get(keys.node_port("tcp", 30082))).holders[0].container_id == "c3"
    cni.delete(pods["c2"], "c2")  # a DEL without runtimeConfig: the record says what was claimed
    assert state(store_path)[2] == [keys.node_port("tcp", 30080), keys.node_port("tcp", 30082)]
    gc = cni.call("GC", config={**cni.config, "cni.dev/valid-attachments": []})
    assert gc.ok, gc.output
    assert state(store_path) == ([], [], [keys.node_port("tcp", 30080)])
    assert links(sandbox, host_ns) == [] and "dport 3008" not in nft_rules(sandbox, host_ns)
    with open_store(store_path) as store:
        repo.apply(store, parse_documents([service("api", 30081), service("db", 30082)]))

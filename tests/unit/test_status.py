"""`podnet status`'s judgement (observe/status.py `summarize`): a healthy cluster, each
degraded reason on its own, and the store reader on a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podnet import keys
from podnet.cli import main
from podnet.cluster.leases import CLUSTER_NETWORK
from podnet.model.cluster import BlockClaim, NodeLease
from podnet.observe.status import NOT_REACHABLE, backend_of, read_store, summarize
from podnet.store import open_store

NOW = 1_000_000.0
POOL = "10.244.0.0/16"


def lease(name: str, block: str, ip: str) -> dict:
    return {"name": name, "block": block, "underlay_ip": ip, "underlay_if": "eth0", "fabric": "vxlan",
            "backend": {}, "started": NOW - 30, "expires_at": NOW + 8}


def store(**over) -> dict:
    base = {"url": "sqlite:///x.db", "backend": "sqlite", "members": [], "latency_ms": 0.2,
            "leases": [lease("node0", "10.244.0.0/24", "172.31.0.10"), lease("node1", "10.244.1.0/24", "172.31.0.11")],
            "claims": {"10.244.0.0/24": "node0", "10.244.1.0/24": "node1", "10.244.2.0/24": "node1"},
            "reservations": ["10.244.0.2", "10.244.0.3", "10.244.1.2"],
            "counts": {"pods": 3, "policies": 1, "cluster policies": 0, "services": 2}}
    return {**base, **over}


def agent(name: str, *, fabric: str = "vxlan", peers: list | None = None, refused: list | None = None,
          bgp: dict | None = None) -> dict:
    other = "node1" if name == "node0" else "node0"
    answer = {"node": name, "block": "10.244.0.0/24", "blocks": ["10.244.0.0/24"], "fabric": fabric, "mtu": 1450,
              "peers": peers if peers is not None else [{"name": other, "block": "x", "state": "ok"}],
              "refused": refused or []}
    row = {"socket": f"/run/{name}.sock", "node.status": answer}
    if bgp is not None:
        row["bgp.status"] = bgp
    return row


def healthy_agents() -> dict:
    return {"node0": agent("node0"), "node1": agent("node1")}


def test_healthy_cluster_has_every_node_block_and_count() -> None:
    result = summarize(store(), healthy_agents(), pool=POOL, expect_all=True, now=NOW)
    assert result.degraded == []
    assert [n["name"] for n in result.nodes] == ["node0", "node1"]
    node1 = result.nodes[1]
    assert node1["blocks"] == ["10.244.1.0/24", "10.244.2.0/24"]  # one node, two blocks (block IPAM)
    assert (node1["agent"], node1["lease_age_s"], node1["lease_expires_s"], node1["mtu"]) == ("answers", 30, 8, 1450)
    assert (node1["peers_ok"], node1["peers"]) == (1, 1)
    used = {b["block"]: (b["node"], b["used"], b["size"]) for b in result.blocks}
    assert used == {"10.244.0.0/24": ("node0", 2, 253), "10.244.1.0/24": ("node1", 1, 253),
                    "10.244.2.0/24": ("node1", 0, 253)}
    assert result.pool == {"cidr": POOL, "block_prefix": 24, "claimed": 3, "free": 253}
    assert result.counts == {"pods": 3, "policies": 1, "cluster policies": 0, "services": 2}
    assert "leases" not in result.store and "counts" not in result.store and result.store["backend"] == "sqlite"
    json.dumps(result.to_json())  # what -o json prints


def test_agent_that_does_not_answer() -> None:
    agents = {**healthy_agents(), "node1": {"socket": "/run/node1.sock", "error": "no podnet agent answers"}}
    result = summarize(store(), agents, pool=POOL, expect_all=True, now=NOW)
    assert result.degraded == ["node node1: agent does not answer (no podnet agent answers) (its lease is still live)"]


def test_lease_without_an_agent_in_the_lab() -> None:
    result = summarize(store(), {"node0": agent("node0")}, pool=POOL, expect_all=True, now=NOW)
    assert result.degraded == ["node node1: has a lease but no agent in this lab"]


def test_other_nodes_on_a_real_cluster_are_only_not_reachable() -> None:
    result = summarize(store(), {"node0": agent("node0")}, pool=POOL, expect_all=False, now=NOW)
    assert result.degraded == []
    assert result.nodes[1]["agent"] == NOT_REACHABLE


def test_agent_without_a_lease() -> None:
    agents = {**healthy_agents(), "node2": agent("node2")}
    result = summarize(store(), agents, pool=POOL, expect_all=True, now=NOW)
    assert result.degraded == ["node node2: agent answers but has no lease in the store"]


def test_refused_peer() -> None:
    refused = [{"name": "node1", "block": "10.9.0.0/24", "reason": "block outside the cluster CIDR"}]
    agents = {**healthy_agents(), "node0": agent("node0", peers=[{"name": "node1", "state": "refused: x"}],
                                                 refused=refused)}
    result = summarize(store(), agents, pool=POOL, expect_all=True, now=NOW)
    assert result.degraded == ["node node0: peer node1 (10.9.0.0/24) refused: block outside the cluster CIDR"]
    assert result.nodes[0]["peers_ok"] == 0


def test_bgp_session_not_established() -> None:
    sessions = [{"name": "mesh_node1", "neighbor": "172.31.0.11", "state": "Established"},
                {"name": "tor", "neighbor": "172.31.0.1", "state": "Active"}]
    agents = {**healthy_agents(), "node0": agent("node0", fabric="bgp", bgp={"node": "node0", "sessions": sessions})}
    result = summarize(store(), agents, pool=POOL, expect_all=True, now=NOW)
    assert result.degraded == ["node node0: BGP session tor (172.31.0.1) is Active"]
    assert result.nodes[0]["bgp"] == "1/2 established"


def test_full_block_is_degraded_only_when_the_pool_has_no_free_block() -> None:
    pool = "10.244.0.0/23"  # two /24 blocks, both claimed
    full = [f"10.244.0.{i}" for i in range(2, 240)]  # 238 of 253
    result = summarize(store(reservations=full, claims={"10.244.0.0/24": "node0", "10.244.1.0/24": "node1"}),
                       healthy_agents(), pool=pool, expect_all=True, now=NOW)
    assert result.pool["free"] == 0
    assert result.degraded == [f"block 10.244.0.0/24 of node node0: 238/253 addresses used and pool {pool} "
                               "has no free block left"]
    roomy = summarize(store(reservations=full), healthy_agents(), pool=POOL, expect_all=True, now=NOW)
    assert roomy.degraded == []  # node0 just grows into another block


def test_store_that_does_not_answer() -> None:
    broken = {"url": "etcd://10.0.0.1:2379", "backend": "etcd", "members": ["10.0.0.1:2379"], "error": "timed out"}
    result = summarize(broken, healthy_agents(), pool=POOL, expect_all=True, now=NOW)
    # the agents are not blamed for leases that could not be read
    assert result.degraded == ["store etcd://10.0.0.1:2379: does not answer (timed out)"]


def test_backend_from_the_url() -> None:
    assert backend_of("etcd://a:2379,b:2379/podnet") == {"backend": "etcd", "members": ["a:2379", "b:2379"]}
    assert backend_of("sqlite:///var/lib/podnet/cluster.db")["backend"] == "sqlite"


@pytest.fixture
def cluster_db(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path / 'cluster.db'}"
    with open_store(url) as s:
        node = NodeLease("node0", "10.244.0.0/24", "172.31.0.10", "eth0", "vxlan", {}, 1.0)
        s.put(node.key, node.encode(), ttl=30)
        for block in ("10.244.0.0/24", "10.244.7.0/24"):
            claim = BlockClaim("node0", block)
            s.put(claim.key, claim.encode(), ttl=30)
        for address in ("10.244.0.2", "10.244.7.9"):
            s.put(keys.ipam_address(CLUSTER_NETWORK, address), json.dumps({"id": "c", "ifname": "eth0"}))
    return url


def test_read_store_from_sqlite(cluster_db: str) -> None:
    view = read_store(cluster_db)
    assert "error" not in view and view["backend"] == "sqlite" and view["latency_ms"] >= 0
    assert [lease["name"] for lease in view["leases"]] == ["node0"] and view["leases"][0]["expires_at"]
    assert view["claims"] == {"10.244.0.0/24": "node0", "10.244.7.0/24": "node0"}
    assert sorted(view["reservations"]) == ["10.244.0.2", "10.244.7.9"]
    assert view["counts"] == {"pods": 0, "policies": 0, "cluster policies": 0, "services": 0}


def test_read_store_names_a_missing_store(tmp_path: Path) -> None:
    view = read_store(str(tmp_path / "nope.db"))
    assert "nope.db" in view["error"]
    assert not (tmp_path / "nope.db").exists()


def test_cli_on_a_store_without_a_local_agent(cluster_db: str, tmp_path: Path, capsys) -> None:
    code = main(["status", "--store", cluster_db, "--socket", str(tmp_path / "none.sock"), "-o", "json"])
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert code == 1  # this machine's agent does not answer
    assert [b["block"] for b in data["blocks"]] == ["10.244.0.0/24", "10.244.7.0/24"]
    assert any("agent does not answer" in reason for reason in data["degraded"])
    assert "degraded: " in out.err


def test_cli_refuses_a_bad_cluster_cidr(cluster_db: str, capsys) -> None:
    assert main(["status", "--store", cluster_db, "--cluster-cidr", "nonsense"]) == 1
    assert "--cluster-cidr" in capsys.readouterr().err


def test_a_nodes_many_empty_blocks_show_as_one_row_and_used_blocks_each():
    from podnet.cli.status import _shown_blocks

    rows = [{"block": "10.244.0.0/24", "node": "a", "used": 2, "size": 253}]
    rows += [{"block": f"10.244.{i}.0/24", "node": "a", "used": 0, "size": 253} for i in range(1, 9)]
    rows += [{"block": "10.244.9.0/24", "node": "b", "used": 0, "size": 253}]  # few: shown as they are
    shown = _shown_blocks(rows)
    assert [r["block"] for r in shown] == ["10.244.0.0/24", "8 empty: 10.244.1.0/24, 10.244.2.0/23, 10.244.4.0/22, ...",
                                           "10.244.9.0/24"]
    assert shown[1]["size"] == 8 * 253 and shown[1]["node"] == "a"

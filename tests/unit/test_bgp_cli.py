"""`podnet apply|get|describe|delete` of BGPConfiguration and BGPPeer, in process,
against a SQLite cluster store in tmp_path (no root, no lab): what a user types and
reads, and that a refused file leaves the store as it was."""

from __future__ import annotations

import json

import pytest

from podnet.cli import main
from podnet.model.cluster import NodeLease
from podnet.store import open_store

GOOD = """\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  asNumber: 65000
  serviceClusterIPs: [{cidr: 10.96.0.0/12}]
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: node.node0}
spec: {routeReflectorClusterID: 244.0.0.1}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: rack0-tor}
spec: {nodeSelector: "rack == 'r0'", peerIP: "172.31.255.1:1790", asNumber: 65100}
"""

# a good peer, then one whose AS number is out of range: the whole file is refused
BAD = """\
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: fine}
spec: {peerIP: 172.31.255.2, asNumber: 65101}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: broken}
spec: {peerIP: 172.31.255.3, asNumber: 4294967296}
"""


@pytest.fixture
def cluster(tmp_path):
    db = tmp_path / "cluster.db"
    with open_store(str(db)) as store:
        lease = NodeLease("node0", "10.244.0.0/24", "172.31.0.10", "eth0", "bgp", {}, 1.0, {"rack": "r0"})
        store.put(lease.key, lease.encode())
    return tmp_path, str(db)


def run(capsys, db: str, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--store", db])
    out, err = capsys.readouterr()
    return code, out, err


def table(out: str) -> list[list[str]]:
    """The cells of a rich table, row by row (header first)."""
    return [[cell.strip() for cell in line.replace("┃", "│").split("│")[1:-1]]
            for line in out.splitlines() if "│" in line or "┃" in line]


def stored(capsys, db: str, kind: str) -> list[dict]:
    code, out, _ = run(capsys, db, "get", kind, "-o", "json")
    assert code == 0
    return json.loads(out)


def manifest(tmp_path, text: str) -> str:
    path = tmp_path / "bgp.yaml"
    path.write_text(text)
    return str(path)


def test_apply_get_describe_delete(cluster, capsys):
    tmp_path, db = cluster
    path = manifest(tmp_path, GOOD)
    assert run(capsys, db, "apply", "-f", path) == (0, "bgpconfiguration/default created\n"
                                                       "bgpconfiguration/node.node0 created\n"
                                                       "bgppeer/rack0-tor created\n", "")
    assert run(capsys, db, "apply", "-f", path)[1].count("unchanged") == 3

    code, out, _ = run(capsys, db, "get", "bgpconfigs")
    assert code == 0 and table(out) == [["NAME", "LABELS", "ASN", "MESH", "LISTEN-PORT", "RR-CLUSTER-ID"],
                                        ["default", "", "65000", "-", "-", "-"],
                                        ["node.node0", "", "-", "-", "-", "244.0.0.1"]]
    code, out, _ = run(capsys, db, "get", "bgppeers")
    assert code == 0 and table(out)[1] == ["rack0-tor", "", "rack == 'r0'", "172.31.255.1:1790", "65100"]
    assert stored(capsys, db, "bgpp")[0]["spec"] == {
        "peerIP": "172.31.255.1:1790", "asNumber": 65100, "nodeSelector": "rack == 'r0'"}

    code, out, _ = run(capsys, db, "describe", "bgppeer", "rack0-tor")
    assert code == 0 and "Kind:       BGPPeer (projectcalico.org/v3)" in out
    assert "Sessions:\n  node0 -> 172.31.255.1:1790 AS 65100" in out
    code, out, _ = run(capsys, db, "describe", "bgpconfiguration", "node.node0")
    assert code == 0 and "  asNumber: 65000" in out and "  routeReflectorClusterID: 244.0.0.1" in out

    assert run(capsys, db, "delete", "-f", path)[1].count("deleted") == 3
    assert stored(capsys, db, "bgppeers") == []
    code, _, err = run(capsys, db, "describe", "bgpp", "rack0-tor")
    assert code == 1 and "bgppeer 'rack0-tor' not found" in err


@pytest.mark.parametrize(("text", "message"), [
    (BAD, "BGPPeer broken: spec.asNumber: 4294967296 is not an AS number (1-4294967295)"),
    (BAD.replace("4294967296", "65102").replace("172.31.255.3", "172.31.255.300"),
     "BGPPeer broken: spec.peerIP: '172.31.255.300' is not an IP address"),
    (BAD.replace("asNumber: 4294967296", "nodeSelector: \"rack = 'r0'\", asNumber: 1"),
     "BGPPeer broken: spec.nodeSelector: cannot read \"rack = 'r0'\""),
    (GOOD.replace("routeReflectorClusterID: 244.0.0.1", "routeReflectorClusterID: rr-one"),
     "BGPConfiguration node.node0: spec.routeReflectorClusterID: 'rr-one' is not a cluster ID"),
    (GOOD.replace("asNumber: 65000", "asNumber: 65000\n  password: secret"),
     "BGPConfiguration default: spec.password: unknown field"),
])
def test_a_refused_file_changes_nothing(cluster, capsys, text, message):
    tmp_path, db = cluster
    code, out, err = run(capsys, db, "apply", "-f", manifest(tmp_path, text))
    assert code == 1 and out == "" and message in err
    assert stored(capsys, db, "bgppeers") == stored(capsys, db, "bgpconfigurations") == []

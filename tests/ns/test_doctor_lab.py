"""`podnet doctor` on a real lab (2 host-gw nodes): healthy says so (exit 0); a deleted
fabric route is found and named, and `--fix` has the node repair it; a pod veth with
the wrong MTU is found and explained (nothing repairs a pod's MTU that no underlay
change asked for); an underlay MTU changed under an agent is followed there and named
across nodes, a pod bridge off the pod MTU on its node; a node whose agent does not
answer is named."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from cniharness import podnet_cli, topology_lab, wait_until

pytestmark = pytest.mark.root

TOPOLOGY = {"nodes": [{"name": "node0"}, {"name": "node1"}],
            "pods": [{"name": "a", "node": "node0"}, {"name": "b", "node": "node1"}]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    with topology_lab("d", TOPOLOGY, tmp_path_factory.mktemp("doctor"), "--fabric", "host-gw",
                      "--no-cluster-dns") as built:
        yield built


def doctor(lab: dict, *flags: str) -> tuple[int, list[dict]]:
    out = podnet_cli("doctor", "--lab", lab["name"], "-o", "json", *flags, check=False, timeout=90)
    return out.returncode, json.loads(out.stdout)


def ip(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", netns, *argv], capture_output=True, text=True, check=True, timeout=10).stdout


def test_a_healthy_lab_has_no_fault(lab):
    code, nodes = doctor(lab)
    assert code == 0 and sorted(n["node"] for n in nodes) == sorted(lab["nodes"])
    assert all(not n["findings"] and not n.get("error") for n in nodes), nodes


def test_a_deleted_route_is_found_and_fix_repairs_it(lab):
    netns = lab["nodes"]["node0"]["netns"]
    route = json.loads(ip(netns, "-j", "route", "show", "proto", "77"))[0]["dst"]
    found = []
    for _ in range(3):  # the node's own repair pass (every 3 s) may put it back first: delete and look again
        ip(netns, "route", "del", route)
        code, nodes = doctor(lab)
        node0 = next(n for n in nodes if n["node"] == "node0")
        found = [f for f in node0["findings"] if f["check"] == "fabric" and route in f["problem"]]
        if found:
            break
    assert found and found[0]["problem"].startswith("missing route") and found[0]["fixable"] and code == 1
    code, nodes = doctor(lab, "--fix")
    node0 = next(n for n in nodes if n["node"] == "node0")
    assert not [f for f in node0["findings"] if f["check"] == "fabric"], node0
    assert route in ip(netns, "route", "show", "proto", "77")


def test_a_pod_veth_with_the_wrong_mtu_is_explained_not_fixed(lab):
    netns = lab["nodes"]["node1"]["netns"]
    veth = next(line.split(":")[1].strip().split("@")[0] for line in ip(netns, "-o", "link").splitlines()
                if line.split(":")[1].strip().startswith("pn") and "@" in line)
    ip(netns, "link", "set", veth, "mtu", "1400")
    try:
        code, nodes = doctor(lab, "--fix")
        node1 = next(n for n in nodes if n["node"] == "node1")
        mtu = [f for f in node1["findings"] if f["check"] == "mtu"]
        assert code == 1 and len(mtu) == 1 and veth in mtu[0]["problem"] and "1400" in mtu[0]["problem"]
        assert not mtu[0]["fixable"] and "re-create the pod" in mtu[0]["fix"]
    finally:
        ip(netns, "link", "set", veth, "mtu", "1500")
    assert doctor(lab)[0] == 0


def test_an_underlay_mtu_changed_on_one_node_is_followed_there_and_named_across_nodes(lab):
    """node1's underlay shrinks under the agent: node1's agent follows it (issue 18:
    its pods and bridge go to 1400, so node1 names nothing), and the CLI names what
    still crosses nodes (node0's pods send 1500-byte packets that node1's underlay no
    longer carries). node0's pod bridge set off the pod MTU is named on node0 (its
    repair pass may put it back first: set and look again)."""
    node0, node1 = (lab["nodes"][n]["netns"] for n in ("node0", "node1"))
    ip(node1, "link", "set", "eth0", "mtu", "1400")
    try:
        def followed() -> dict | None:
            code, nodes = doctor(lab)
            by_node = {n["node"]: [f for f in n["findings"] if f["check"] == "mtu"] for n in nodes}
            return by_node if code == 1 and not by_node["node1"] and by_node.get("cluster") else None

        by_node = wait_until(followed, "node1 following its underlay", timeout=15)
        assert [f["problem"] for f in by_node["cluster"]] == [
            "pods on node0 send packets up to 1500 bytes, but what reaches their pods is limited to node1 1400: "
            "bigger packets are dropped"]
        found = []
        for _ in range(3):
            ip(node0, "link", "set", "pncl0", "mtu", "1400")
            found = [f["problem"].split(":")[0] for n in doctor(lab)[1] if n["node"] == "node0"
                     for f in n["findings"] if f["check"] == "mtu"]
            if found:
                break
        assert found == ["pncl0 has MTU 1400, the pod network's is 1500"]
    finally:
        ip(node1, "link", "set", "eth0", "mtu", "1500")
        ip(node0, "link", "set", "pncl0", "mtu", "1500")
    wait_until(lambda: doctor(lab)[0] == 0, "healthy again once node1 followed back", timeout=15)


def test_a_node_whose_agent_does_not_answer_is_named(lab, tmp_path):
    broken = json.loads(json.dumps(lab))
    from podnet.lab.state import state_file

    path = state_file(lab["name"])
    saved = path.read_text()
    broken["nodes"]["node1"]["socket"] = str(tmp_path / "nobody.sock")
    path.write_text(json.dumps(broken))
    try:
        code, nodes = doctor(lab)
    finally:
        path.write_text(saved)
    node1 = next(n for n in nodes if n["node"] == "node1")
    assert code == 1 and "no podnet agent answers" in node1["error"]


def test_an_orphan_veth_and_a_leaked_address_are_found_and_fixed(lab):
    from podnet.identity import NodeIdentity
    from podnet.ipam.service import IpamService
    from podnet.store import open_store

    netns = lab["nodes"]["node0"]["netns"]
    ip(netns, "link", "add", "pn0badc0ffee1", "type", "veth", "peer", "name", "pntorphan1")  # no record claims it
    block = lab["nodes"]["node0"]["block"]
    with open_store(lab["store_url"]) as store:  # an address reserved for node0 that no pod holds
        ghost = IpamService(store, identity=NodeIdentity("m", "b", node_name="node0")).allocate(
            "cluster", "ghost", "eth0", {"type": "podnet-ipam", "subnet": block}, mark_ready=True)
    address = str(ghost.ips[0].address)
    code, nodes = doctor(lab)
    node0 = next(n for n in nodes if n["node"] == "node0")
    checks = {(f["check"], tuple(f["target"])) for f in node0["findings"]}
    assert code == 1 and ("orphans", ("pn0badc0ffee1",)) in checks and ("leaks", ("ghost", "eth0")) in checks
    code, nodes = doctor(lab, "--fix")
    node0 = next(n for n in nodes if n["node"] == "node0")
    assert code == 0 and not node0["findings"], node0
    assert {f["check"] for f in node0["fixed"]} >= {"orphans", "leaks"}
    assert "pn0badc0ffee1" not in ip(netns, "-o", "link")
    with open_store(lab["store_url"]) as store:
        assert address not in {r.address for r in IpamService(store).reservations("cluster")}

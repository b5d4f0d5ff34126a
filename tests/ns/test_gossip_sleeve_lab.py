"""The gossip fabric with a cluster secret (issue 14): `podnet lab up --fabric gossip
--encrypt`, three nodes. Pod traffic goes through the encrypted sleeve (UDP 6784,
agent/gossip_sleeve.py), never the kernel's VXLAN fast path: the connectivity test
passes, `podnet peers` says so, a marker a pod sends is never readable on the underlay
(an AF_PACKET capture on the receiving node's NIC sees the sleeve's datagrams but not
the marker), a cut link is relayed through the middle peer's sleeve, and a peer that
does not know the secret is refused.

One lab for the module (namespaces pn-lab-e<hex>-*), torn down by name also on failure.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cniharness import podnet_cli, wait_until
from underlay_capture import capture_while_sending

pytestmark = pytest.mark.root

INTRUDER = r"""
import json, sys, time
from podnet.gossip.connection import GossipTiming
from podnet.gossip.peers import GossipPeer
password = sys.argv[2] or None
peer = GossipPeer("intruder", ("0.0.0.0", 6783), [(sys.argv[1], 6783)], password,
                  timing=GossipTiming(reconnect_min=0.2, reconnect_max=0.5))
peer.start()
time.sleep(3)
print(json.dumps(peer.status()))
peer.stop()
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[dict]:
    from podnet.lab.state import state_file

    name = f"e{secrets.token_hex(2)}"
    try:
        podnet_cli("lab", "up", "--name", name, "--fabric", "gossip", "--encrypt", "--nodes", "3",
                   "--pods-per-node", "1")
        yield json.loads(state_file(name).read_text())
    finally:
        if state_file(name).exists():
            podnet_cli("lab", "down", "--name", name)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"pn-lab-{name}-" not in listed


def paths(lab: dict, node: str) -> dict[str, tuple[str | None, str, bool]]:
    out = podnet_cli("peers", "--lab", lab["name"], "-o", "json", check=False, timeout=30)
    answer = next((n for n in json.loads(out.stdout) if n.get("node") == node), {})
    return {p["name"]: (p["via"], p["path"], p["encrypted"]) for p in answer.get("peers", [])}


def test_every_peer_is_carried_by_the_encrypted_sleeve(lab: dict) -> None:
    for node in lab["nodes"]:
        wait_until(lambda n=node: (p := paths(lab, n)) and all(v == (name, "sleeve", True)
                                                               for name, v in p.items()),
                   f"{node}'s peers on the encrypted sleeve")
        routes = subprocess.run(["ip", "-n", lab["nodes"][node]["netns"], "route", "show", "proto", "77"],
                                capture_output=True, text=True, check=True).stdout
        assert routes and all(" dev pnsl0" in line for line in routes.splitlines()), routes  # no fast path
    out = podnet_cli("connectivity", "test", "--lab", lab["name"], check=False, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]


def test_what_a_pod_sends_is_not_readable_on_the_underlay(lab: dict) -> None:
    seen = capture_while_sending(lab, "node1", "default/p0-0", "default/p1-0")
    assert seen["sleeve"] >= 10  # the capture works: it saw the sleeve's datagrams
    assert seen["marker"] == 0


def test_a_cut_link_is_relayed_through_the_middle_peers_sleeve(lab: dict) -> None:
    podnet_cli("lab", "link", "cut", "node0", "node2", "--lab", lab["name"])
    try:
        wait_until(lambda: paths(lab, "node0").get("node2") == ("node1", "sleeve", True), "node0 -> node2 via node1")
        wait_until(lambda: paths(lab, "node2").get("node0") == ("node1", "sleeve", True), "node2 -> node0 via node1")
        seen = capture_while_sending(lab, "node1", "default/p0-0", "default/p2-0")  # the middle peer's NIC
        assert seen["sleeve"] >= 10 and seen["marker"] == 0  # relayed, and sealed on both legs
    finally:
        podnet_cli("lab", "link", "heal", "node0", "node2", "--lab", lab["name"])
    wait_until(lambda: paths(lab, "node0").get("node2") == ("node2", "sleeve", True), "node0 -> node2 direct again")


@pytest.mark.parametrize("password", ["not-the-secret", ""])
def test_a_peer_without_the_secret_is_refused(lab: dict, password: str) -> None:
    host = f"x{secrets.token_hex(2)}"
    added = json.loads(podnet_cli("lab", "host", "add", host, "--lab", lab["name"], "-o", "json").stdout)
    netns = added.get("netns") or json.loads(Path(f"/run/podnet/lab-{lab['name']}.json").read_text())["hosts"][host][
        "netns"]
    seed = lab["nodes"]["node0"]["underlay"].split("/")[0]
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", INTRUDER, seed, password],
                         capture_output=True, text=True, check=True, timeout=30)
    status = json.loads(out.stdout)
    assert status["connections"] == [] and status["peers"] == []
    assert "intruder" not in paths(lab, "node0")
    log = Path(lab["labdir"], "logs", "agent_node0.log").read_text()
    assert "refused connection" in log

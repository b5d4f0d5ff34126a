"""Cut underlay links on a real lab (lab/cuts.py): three vxlan nodes on one rack, the
node0-node2 link cut from the start by the topology's `cuts:`, healed and cut again
with `podnet lab link`; the cut is an nft drop in the rack's fabric namespace, the
nodes are never touched. node0 keeps reaching node1 throughout; the drops are counted.

One lab for the module (namespaces pn-lab-k<hex>-*), torn down by name, also on failure.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from cniharness import podnet_cli, topology_lab

pytestmark = pytest.mark.root

TOPOLOGY = {"nodes": [{"name": "node0"}, {"name": "node1"}, {"name": "node2"}], "cuts": [["node2", "node0"]]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    with topology_lab("k", TOPOLOGY, tmp_path_factory.mktemp("cuts"), "--no-cluster-dns") as built:
        yield built
    assert f"pn-lab-{built['name']}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                             text=True, check=True).stdout


def reaches(lab: dict, src: str, dst: str) -> bool:
    """One ping over the underlay, from inside the source node's namespace."""
    target = lab["nodes"][dst]["underlay"].split("/")[0]
    out = subprocess.run(["ip", "netns", "exec", lab["nodes"][src]["netns"], "busybox", "ping", "-c", "1", "-W", "2",
                          target], capture_output=True, text=True, timeout=15, check=False)
    return out.returncode == 0


def link(lab: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return podnet_cli("lab", "link", *args, "--lab", lab["name"], check=check, timeout=30)


def listed(lab: dict) -> list[dict]:
    return json.loads(link(lab, "list", "-o", "json").stdout)


def recorded(lab: dict) -> list[list[str]]:
    return json.loads(podnet_cli("lab", "status", "--lab", lab["name"], "-o", "json", check=False).stdout)["cuts"]


def test_the_topologys_cut_holds_from_the_start_and_heals(lab: dict) -> None:
    assert recorded(lab) == [["node0", "node2"]]
    assert not reaches(lab, "node0", "node2") and not reaches(lab, "node2", "node0")
    assert reaches(lab, "node0", "node1") and reaches(lab, "node1", "node2")
    [row] = listed(lab)
    assert (row["link"], row["in_kernel"]) == ("node0-node2", True)
    assert row["dropped_packets"] >= 2  # both directions' pings died in the fabric
    assert "node0-node2 healed" in link(lab, "heal", "node2", "node0").stdout
    assert reaches(lab, "node0", "node2") and reaches(lab, "node2", "node0")
    assert listed(lab) == [] and recorded(lab) == []
    link(lab, "heal", "node0", "node2")  # healing a healed link changes nothing
    assert reaches(lab, "node0", "node2")


def test_cut_and_heal_from_the_cli(lab: dict) -> None:
    assert reaches(lab, "node0", "node2")
    link(lab, "cut", "node0", "node2")
    link(lab, "cut", "node2", "node0")  # the same link, once
    assert recorded(lab) == [["node0", "node2"]]
    assert [row["link"] for row in listed(lab)] == ["node0-node2"]
    assert not reaches(lab, "node0", "node2")
    assert reaches(lab, "node0", "node1")
    link(lab, "cut", "node1", "node2")  # a second cut in the same table
    assert not reaches(lab, "node1", "node2") and not reaches(lab, "node0", "node2")
    assert reaches(lab, "node0", "node1")
    link(lab, "heal", "node0", "node2")
    assert reaches(lab, "node0", "node2") and not reaches(lab, "node1", "node2")
    link(lab, "heal", "node1", "node2")
    assert reaches(lab, "node1", "node2") and listed(lab) == []


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [("node0", "node9", "B: unknown machine 'node9'"), ("node1", "node1", "B: node1 cannot be cut from itself")],
)
def test_bad_links_are_refused_naming_the_argument(lab: dict, a: str, b: str, message: str) -> None:
    out = link(lab, "cut", a, b, check=False)
    assert out.returncode != 0 and message in out.stderr
    assert recorded(lab) == []

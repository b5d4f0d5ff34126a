"""Cut underlay links: the topology's `cuts:` list, the checks on a running lab's
machines, and the nft table rendered from the recorded cuts (lab/cuts.py)."""

from __future__ import annotations

import pytest

from podnet.lab import cuts
from podnet.lab import topology as topo
from podnet.lab.state import LabError
from podnet.lab.topology import TopologyError

NODES = [{"name": "node0", "rack": 0}, {"name": "node1", "rack": 1}, {"name": "node2", "rack": 0}]


def test_topology_cuts_are_sorted_pairs_of_nodes() -> None:
    t = topo.parse({"nodes": NODES, "cuts": [["node2", "node0"]]})
    assert t.cuts == (("node0", "node2"),)
    assert topo.parse({"nodes": NODES}).cuts == ()


@pytest.mark.parametrize(
    ("cut_list", "message"),
    [
        ([["node0", "node9"]], r"cuts\[0\]\[1\]: unknown node 'node9'"),
        ([["node0"]], r"cuts\[0\] must be a list of two node names"),
        (["node0-node2"], r"cuts\[0\] must be a list of two node names"),
        ([["node0", "node2"], [3, "node0"]], r"cuts\[1\]\[0\]: unknown node 3"),
        ([["node2", "node2"]], r"cuts\[0\]\[1\]: node2 cannot be cut from itself"),
        ([["node0", "node1"]], r"cuts\[0\]\[1\]: node0 \(rack 0\) and node1 \(rack 1\) are in different racks"),
        ([["node0", "node2"], ["node2", "node0"]], r"cuts\[1\]: the link node0-node2 is listed twice"),
    ],
)
def test_topology_refuses_bad_cuts_naming_the_field(cut_list: list, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        topo.parse({"nodes": NODES, "cuts": cut_list})


def test_cross_rack_cuts_say_the_router_carries_them() -> None:
    with pytest.raises(TopologyError) as info:
        topo.parse({"nodes": NODES, "cuts": [["node1", "node2"]]})
    assert "through the router" in info.value.details


LAB = {
    "nodes": {"node0": {"rack": 0, "underlay": "172.31.0.10"}, "node1": {"rack": 1, "underlay": "172.31.1.10"},
              "node2": {"rack": 0, "underlay": "172.31.0.11"}},
    "hosts": {"db": {"rack": 0, "underlay": "172.31.0.190"}},
    "cuts": [["db", "node2"]],
}


def test_a_running_labs_machines_are_nodes_and_hosts() -> None:
    assert cuts.check_cut(LAB, "node2", "db") == ("db", "node2")
    for a, b, field in (("node0", "nope", "B"), ("nope", "node0", "A"), ("node0", "node0", "B"), ("db", "node1", "B")):
        with pytest.raises(LabError, match=f"^{field}: "):
            cuts.check_cut(LAB, a, b)
    with pytest.raises(LabError, match="unknown machine 'nope'"):
        cuts.check_cut(LAB, "nope", "node0")


def test_links_carry_addresses_and_racks() -> None:
    assert cuts.links(LAB) == [cuts.Link("db", "node2", "172.31.0.190", "172.31.0.11", 0)]
    assert cuts.links(LAB, rack=1) == []


def test_render_drops_both_directions_of_each_link_in_one_transaction() -> None:
    text = cuts.render([cuts.Link("node0", "node2", "172.31.0.10", "172.31.0.11", 0),
                        cuts.Link("db", "node0", "172.31.0.190", "172.31.0.10", 0)])
    lines = [line.strip() for line in text.splitlines()]
    # created if missing, then deleted and made again: the same text works on any kernel state
    assert lines[:3] == ["table bridge podnet-cuts {}", "delete table bridge podnet-cuts", "table bridge podnet-cuts {"]
    assert "type filter hook forward priority 0; policy accept;" in lines
    drops = [line for line in lines if line.endswith("drop comment \"node0-node2\"")]
    assert drops == ['ip saddr 172.31.0.10 ip daddr 172.31.0.11 counter drop comment "node0-node2"',
                     'ip saddr 172.31.0.11 ip daddr 172.31.0.10 counter drop comment "node0-node2"']
    assert sum("counter drop" in line for line in lines) == 4


def test_render_without_links_removes_the_table() -> None:
    assert cuts.render([]) == "table bridge podnet-cuts {}\ndelete table bridge podnet-cuts\n"

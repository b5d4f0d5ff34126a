"""gossip/topology.py: per-peer merge, links both ends report, shortest-path next hops."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.gossip.topology import (
    PeerEntry,
    TopologyError,
    check_address,
    dial_addresses,
    keeps_first,
    merge,
    next_hops,
    next_version,
    prune,
    to_dial,
)


def mesh(*edges: str, version: int = 1) -> dict[str, PeerEntry]:
    """'ab' = a and b both report the link; 'a>b' = only a reports it."""
    links: dict[str, dict[str, str]] = {}
    for edge in edges:
        one_way = ">" in edge
        a, b = edge.split(">") if one_way else edge
        links.setdefault(a, {})[b] = f"10.0.0.{ord(b) % 250}:6783"
        links.setdefault(b, {})
        if not one_way:
            links[b][a] = f"10.0.0.{ord(a) % 250}:6783"
    return {name: PeerEntry(name, version, conns) for name, conns in links.items()}


def test_direct_peers_are_their_own_first_hop():
    assert next_hops(mesh("ab", "ac"), "a") == {"b": "b", "c": "c"}


def test_a_partial_mesh_routes_through_the_middle_peer():
    assert next_hops(mesh("ab", "bc"), "a") == {"b": "b", "c": "b"}
    assert next_hops(mesh("ab", "bc"), "c") == {"b": "b", "a": "b"}


def test_a_link_only_one_end_reports_does_not_count():
    assert next_hops(mesh("ab", "bc", "a>c"), "a") == {"b": "b", "c": "b"}
    assert next_hops(mesh("ab", "c>a"), "a") == {"b": "b"}


def test_equal_paths_resolve_to_the_smallest_first_hop_by_name():
    ring = mesh("ac", "cd", "ab", "bd")
    assert next_hops(ring, "a")["d"] == "b"
    assert next_hops(dict(reversed(list(ring.items()))), "a")["d"] == "b"


def test_the_shortest_path_wins_over_smaller_names():
    topology = mesh("ab", "bc", "cz", "ay", "yz")  # z: via b is 3 hops, via y is 2
    assert next_hops(topology, "a")["z"] == "y"


def test_unreachable_peers_are_absent_and_pruned():
    topology = mesh("ab", "cd")
    assert next_hops(topology, "a") == {"b": "b"}
    assert set(prune(topology, "a")) == {"a", "b"}


def test_merge_keeps_the_higher_version_per_peer():
    old, new = PeerEntry("a", 1, {}), PeerEntry("a", 2, {"b": "10.0.0.2:6783"})
    merged, changed = merge({"a": old}, [new])
    assert merged["a"] == new and changed == {"a"}
    merged, changed = merge(merged, [old])
    assert merged["a"] == new and changed == set()


entries = st.builds(
    PeerEntry,
    st.sampled_from("abcd"),
    st.integers(0, 5),
    st.dictionaries(st.sampled_from("abcd"), st.just("10.0.0.1:6783"), max_size=3),
)


def _fold(start: dict, batch: list) -> dict:
    return merge(start, batch)[0]


def _canon(topology: dict) -> dict:
    return {name: (e.version, sorted(e.connections)) for name, e in topology.items()}


@given(st.lists(entries, max_size=8), st.lists(entries, max_size=8))
def test_merge_converges_whatever_the_order(xs, ys):
    """Replicas that saw the same entries in any order agree on every version."""
    one = _fold(_fold({}, xs), ys)
    two = _fold(_fold({}, ys), xs)
    assert {n: e.version for n, e in one.items()} == {n: e.version for n, e in two.items()}
    assert _canon(_fold(one, xs + ys)) == _canon(one)  # idempotent


def test_dial_addresses_come_from_what_others_report():
    topology = {"a": PeerEntry("a", 1, {"c": "10.0.0.3:6783"}), "b": PeerEntry("b", 1, {"c": "10.0.0.3:6783"}),
                "d": PeerEntry("d", 1, {"c": "10.1.0.3:6783"}), "c": PeerEntry("c", 1, {"a": "10.0.0.1:1"})}
    assert dial_addresses(topology, "c") == ["10.0.0.3:6783", "10.1.0.3:6783"]
    assert dial_addresses(topology, "x") == []
    assert to_dial(topology, "a", connected=["b"]) == {"c": ["10.0.0.3:6783", "10.1.0.3:6783"], "d": []}


@pytest.mark.parametrize("raw", [
    None, [], {"name": "a/b", "version": 1, "connections": {}},
    {"name": "a", "version": -1, "connections": {}}, {"name": "a", "version": True, "connections": {}},
    {"name": "a", "version": 1, "connections": []},
    {"name": "a", "version": 1, "connections": {"b": "example.com:1"}},
    {"name": "a", "version": 1, "connections": {"b": "10.0.0.1:0"}},
    {"name": "a", "version": 1, "connections": {"..": "10.0.0.1:1"}},
])
def test_entries_from_the_wire_are_checked(raw):
    with pytest.raises(TopologyError):
        PeerEntry.from_json(raw)


def test_an_entry_round_trips_and_addresses_parse():
    entry = PeerEntry("n1", 7, {"n2": "[fd00::2]:6783"})
    assert PeerEntry.from_json(entry.to_json()) == entry
    assert check_address("[fd00::2]:6783") == ("fd00::2", 6783)


def test_versions_never_go_back_and_follow_the_clock():
    assert next_version(10, 5) == 11
    assert next_version(10, 50) == 50


def test_two_connections_to_one_peer_resolve_alike_at_both_ends():
    # a dialed b (a's outbound, b's inbound) and b dialed a: both keep the one a dialed
    assert keeps_first("a", "b", first_outbound=True, second_outbound=False)
    assert not keeps_first("b", "a", first_outbound=True, second_outbound=False)
    assert keeps_first("b", "a", first_outbound=False, second_outbound=True)
    assert not keeps_first("a", "b", first_outbound=True, second_outbound=True)  # redialed: the newer stays

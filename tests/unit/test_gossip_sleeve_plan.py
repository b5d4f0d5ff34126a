"""Which peers the gossip node's sleeve carries and where each prefix goes (pure:
agent/gossip_sleeve.py `plan`): keys per direct session, relayed peers through their
first hop, a peer without a session or lease left out."""

from __future__ import annotations

from podnet.agent.gossip_sleeve import plan
from podnet.fabric.sleeve.crypto import derive_sleeve_keys
from podnet.model.cluster import NodeLease

SECRET_B, SECRET_D = bytes(range(32)), bytes(range(1, 33))


def lease(name: str, index: int) -> NodeLease:
    return NodeLease(name, f"10.244.{index}.0/24", f"172.31.0.{index + 10}", "eth0", "gossip", {}, 0.0)


LEASES = {n: lease(n, i) for i, n in enumerate(("a", "b", "c", "d"))}
CLAIMS = {"10.244.1.0/24": "b", "10.244.2.0/24": "c", "10.244.3.0/24": "d", "10.244.4.0/24": "c",
          "10.244.5.0/24": "c"}


def test_direct_peers_are_keyed_from_their_session_and_relayed_ones_go_through_their_first_hop():
    hops = {"b": "b", "c": "b", "d": "d"}
    peers, routes, carried = plan("a", 6784, hops, {"b": SECRET_B, "d": SECRET_D}, LEASES, CLAIMS)
    assert set(peers) == {"b", "d"} and carried == {"b", "c", "d"}
    assert (peers["b"].underlay_ip, peers["b"].port) == ("172.31.0.11", 6784)
    assert (peers["b"].tx_key, peers["b"].rx_key) == derive_sleeve_keys(SECRET_B, "a", "b")
    tx_b, rx_b = derive_sleeve_keys(SECRET_B, "b", "a")  # b derives the same keys the other way round
    assert (peers["b"].tx_key, peers["b"].rx_key) == (rx_b, tx_b)
    assert routes == {"10.244.1.0/24": "b", "10.244.2.0/24": "b", "10.244.4.0/23": "b", "10.244.3.0/24": "d"}


def test_a_peer_without_a_session_secret_or_a_lease_is_not_carried():
    hops = {"b": "b", "c": "b", "d": "d"}
    peers, routes, carried = plan("a", 6784, hops, {"d": SECRET_D}, LEASES, CLAIMS)  # no session with b
    assert set(peers) == {"d"} and carried == {"d"} and routes == {"10.244.3.0/24": "d"}
    no_lease = {k: v for k, v in LEASES.items() if k != "d"}
    assert plan("a", 6784, {"d": "d"}, {"d": SECRET_D}, no_lease, CLAIMS) == ({}, {}, frozenset())
    # a secret for a peer that is reached through another is no sleeve peer of this node
    assert plan("a", 6784, {"d": "b"}, {"d": SECRET_D}, LEASES, CLAIMS) == ({}, {}, frozenset())


def test_without_a_secret_only_peers_whose_fast_path_is_down_take_the_plain_sleeve():
    hops = {"b": "b", "c": "b", "d": "d"}
    peers, routes, carried = plan("a", 6784, hops, None, LEASES, CLAIMS, frozenset({"b"}))
    assert set(peers) == {"b"} and peers["b"].tx_key is None and peers["b"].rx_key is None
    assert carried == {"b", "c"}  # c is reached through b
    assert routes == {"10.244.1.0/24": "b", "10.244.2.0/24": "b", "10.244.4.0/23": "b"}
    assert plan("a", 6784, hops, None, LEASES, CLAIMS) == ({}, {}, frozenset())  # all fast: nothing

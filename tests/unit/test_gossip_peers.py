"""gossip/peers.py: real GossipPeers on 127.0.0.1 in one process (ports chosen by the kernel).

Timings are shrunk so the suite runs in seconds; waits poll with a generous deadline
(convergence, never speed, is what is asserted)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from podnet.gossip.auth import Handshake
from podnet.gossip.peers import Change, GossipPeer, GossipTiming
from podnet.gossip.wire import decode, frame, parse_hello, payload_length

FAST = GossipTiming(gossip_interval=0.1, heartbeat_interval=0.1, dead_after=0.8, handshake_timeout=1.0,
                    reconnect_min=0.05, reconnect_max=0.3, push_delay=0.005)
DEADLINE = 10.0


def eventually(check, what: str, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"not reached within {deadline} s: {what}")
        time.sleep(0.02)


@pytest.fixture
def make_peer():
    """Starts GossipPeers; stops them all at the end and checks no thread or socket is left."""
    before = set(threading.enumerate())
    started: list[GossipPeer] = []

    def make(name: str, seeds=(), **kwargs) -> GossipPeer:
        peer = GossipPeer(name, listen=("127.0.0.1", 0), seeds=[p.address for p in seeds], timing=FAST, **kwargs)
        peer.start()
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.stop()
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not left, f"threads left running: {left}"
    for peer in started:
        with socket.socket() as probe:
            assert probe.connect_ex(peer.address) != 0, f"{peer.name} still listens"


def direct(peer: GossipPeer) -> set[str]:
    return {p for p, via in peer.next_hops().items() if via == p}


def test_five_peers_joined_from_one_seed_learn_each_other_and_agree(make_peer):
    seed = make_peer("p0")
    peers = [seed] + [make_peer(f"p{i}", seeds=[seed]) for i in range(1, 5)]
    names = {p.name for p in peers}
    eventually(lambda: all(direct(p) == names - {p.name} for p in peers), "a full mesh")
    versions = lambda p: {n: e.version for n, e in p.topology().items()}  # noqa: E731
    eventually(lambda: all(versions(p) == versions(seed) for p in peers), "one topology everywhere")
    status = peers[3].status()
    assert {c["peer"] for c in status["connections"]} == names - {"p3"}
    assert all(p["direct"] and p["via"] == p["name"] for p in status["peers"])
    assert peers[3].session_secret("p0") is None  # no password, no secret


def test_the_right_password_is_accepted_with_one_secret_per_connection(make_peer, tmp_path):
    key = tmp_path / "key"
    key.write_bytes(b"shared secret")
    a = make_peer("a", password="shared secret")
    b = make_peer("b", seeds=[a], key_file=str(key))
    eventually(lambda: direct(a) == {"b"} and direct(b) == {"a"}, "connected")
    secret = eventually(lambda: a.session_secret("b"), "a secret")
    assert len(secret) == 32 and b.session_secret("a") == secret
    assert a.status()["connections"][0]["authenticated"]


@pytest.mark.parametrize(("pw_a", "pw_b", "reason"), [
    ("one", "two", "wrong password"),
    ("one", None, "it has no password"),
    (None, "two", "it has a password"),
])
def test_a_peer_without_the_right_password_is_refused_and_logged(make_peer, caplog, pw_a, pw_b, reason):
    caplog.set_level(logging.INFO, logger="podnet.gossip")
    a = make_peer("a", password=pw_a)
    b = make_peer("b", seeds=[a], password=pw_b)
    eventually(lambda: any(reason in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records),
               f"refusal logged ({reason})")
    assert direct(a) == set() and direct(b) == set()
    assert a.status()["connections"] == [] and b.status()["connections"] == []


def test_a_document_and_its_deletion_reach_every_peer(make_peer):
    changes: list[Change] = []
    seed = make_peer("d0")
    peers = [seed] + [make_peer(f"d{i}", seeds=[seed], on_change=changes.append) for i in range(1, 4)]
    eventually(lambda: all(len(direct(p)) == 3 for p in peers), "a full mesh")
    peers[2].put("dns/web/10.32.0.5", {"ttl": 30})
    eventually(lambda: all(p.get("dns/web/10.32.0.5") == {"ttl": 30} for p in peers), "the document everywhere")
    assert any("dns/web/10.32.0.5" in c.keys for c in changes)
    peers[0].delete("dns/web/10.32.0.5")
    eventually(lambda: all(p.documents("dns/") == {} for p in peers), "the deletion everywhere")


def test_the_ring_blob_travels_through_the_callers_callbacks(make_peer):
    received: list[object] = []
    a = make_peer("a", get_ring=lambda: {"tokens": [["10.32.0.0", "a", 1]]})
    make_peer("b", seeds=[a], merge_ring=received.append)
    eventually(lambda: {"tokens": [["10.32.0.0", "a", 1]]} in received, "the ring merged at b")


def test_a_stopped_peer_leaves_the_others_topology(make_peer):
    seed = make_peer("s0")
    peers = [seed, make_peer("s1", seeds=[seed]), make_peer("s2", seeds=[seed])]
    eventually(lambda: all(len(direct(p)) == 2 for p in peers), "a full mesh")
    peers[2].stop()
    for peer in peers[:2]:
        eventually(lambda p=peer: "s2" not in p.next_hops(), f"{peer.name} forgets s2")
        eventually(lambda p=peer: "s2" not in {x["name"] for x in p.status()["peers"]}, "s2 out of status")


def _read_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data
    return exactly(payload_length(exactly(4)))


def test_a_connection_that_goes_silent_is_dropped_after_the_heartbeat_timeout(make_peer):
    a = make_peer("a")
    with socket.create_connection(a.address, timeout=DEADLINE) as sock:
        hs = Handshake("silent", 1, None, initiator=True)
        sock.sendall(frame(hs.hello().encode()))
        assert parse_hello(decode(_read_frame(sock))).name == "a"
        eventually(lambda: "silent" in {c["peer"] for c in a.status()["connections"]}, "the connection stands")
        with pytest.raises(EOFError):  # a keeps sending (gossip, heartbeats), then gives up on us
            while True:
                _read_frame(sock)
    assert "silent" not in {c["peer"] for c in a.status()["connections"]}


def test_a_bad_frame_drops_the_connection_with_a_logged_reason(make_peer, caplog):
    caplog.set_level(logging.INFO, logger="podnet.gossip")
    a = make_peer("a")
    with socket.create_connection(a.address, timeout=DEADLINE) as sock:
        sock.sendall(frame(Handshake("bad", 1, None, initiator=True).hello().encode()))
        _read_frame(sock)
        sock.sendall(frame(b'{"type": "gossip", "topology": [{"name": "../x"}], "docs": []}'))
        with pytest.raises(EOFError):
            while True:
                _read_frame(sock)
    assert any("bad frame" in r.getMessage() and "not a peer name" in r.getMessage() for r in caplog.records)


def test_a_cut_link_routes_through_the_middle_peer_and_heals(make_peer):
    cut = {frozenset({"a", "c"})}
    allowed = lambda me: lambda peer: frozenset({me, peer}) not in cut  # noqa: E731
    b = make_peer("b", may_connect=allowed("b"))
    a = make_peer("a", seeds=[b], may_connect=allowed("a"))
    c = make_peer("c", seeds=[b], may_connect=allowed("c"))
    eventually(lambda: a.next_hops() == {"b": "b", "c": "b"} and c.next_hops() == {"b": "b", "a": "b"},
               "a and c reach each other through b")
    relayed = {p["name"]: p for p in a.status()["peers"]}["c"]
    assert relayed["via"] == "b" and not relayed["direct"]
    cut.clear()
    eventually(lambda: a.next_hops() == {"b": "b", "c": "c"} and c.next_hops() == {"b": "b", "a": "a"},
               "a and c direct again")


def test_a_taken_port_fails_start_and_a_seed_naming_this_peer_is_skipped(make_peer, caplog):
    caplog.set_level(logging.INFO, logger="podnet.gossip")
    a = make_peer("a")
    with pytest.raises(OSError):
        GossipPeer("b", listen=a.address, timing=FAST).start()
    b = make_peer("b", seeds=[a])
    b.seeds.append(f"{b.address[0]}:{b.address[1]}")  # the same seed list on every node names b too
    eventually(lambda: direct(a) == {"b"}, "connected")
    eventually(lambda: f"{b.address[0]}:{b.address[1]}" in b._own_addresses, "b found itself")
    assert not any("own name" in r.getMessage() for r in caplog.records)


def test_a_stopped_peer_s_space_is_reclaimed_once_the_survivors_agree(make_peer):
    """gossip/ring_sync.py over real peers: c stops; a and b vote it gone through the
    ring they gossip, and after the grace period the agreed taker (a, the lowest live
    peer) holds c's space, in both copies."""
    from podnet.gossip.ring import Ring
    from podnet.gossip.ring_sync import RingSync

    ring = Ring.empty("10.32.0.0/24").claim_initial(["a", "b", "c"])
    syncs = {n: RingSync(n, ring, grace=0.5) for n in "abc"}
    peers: dict[str, GossipPeer] = {}
    for n in "abc":
        peers[n] = make_peer(n, seeds=[peers["a"]] if peers else (), get_ring=syncs[n].get_ring,
                             merge_ring=syncs[n].merge_ring)
    eventually(lambda: all(len(p.next_hops()) == 2 for p in peers.values()), "one mesh")
    c_space = ring.owned_by("c")
    live = dict(peers)
    stop = threading.Event()
    c_last_seen = [0.0]  # the latest round in which a survivor still reached c (the grace runs from it)

    def rounds() -> None:
        while not stop.is_set():
            for n, peer in list(live.items()):
                hops, now = peer.next_hops(), time.time()
                if n != "c" and "c" in hops:
                    c_last_seen[0] = max(c_last_seen[0], now)
                if syncs[n].tick(hops, now):
                    peer.push()
            time.sleep(0.05)

    ticker = threading.Thread(target=rounds, name="ring-rounds")
    ticker.start()
    try:
        time.sleep(0.3)
        assert all(s.ring().owned_by("c") == c_space for s in syncs.values())  # nobody is gone yet
        del live["c"]
        peers["c"].stop()
        eventually(lambda: all(syncs[n].ring().tombstoned("c") for n in "ab"), "c reclaimed in both copies")
    finally:
        stop.set()
        ticker.join()
    a, b = syncs["a"].ring(), syncs["b"].ring()
    assert a.owned_by("c") == [] and a.to_json() == b.to_json()
    assert [peer for peer, _ in syncs["a"].reclaimed] == ["c"] and not syncs["b"].reclaimed
    assert syncs["a"].reclaimed[0][1] - c_last_seen[0] >= 0.5  # not before the grace period
    assert all(a.owner_of(lo) == "a" for lo, _hi in c_space)

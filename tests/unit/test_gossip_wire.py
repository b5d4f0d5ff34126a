"""gossip/wire.py: frames and messages, every field from a peer checked."""

from __future__ import annotations

import pytest

from podnet.gossip.lww import Document
from podnet.gossip.topology import PeerEntry
from podnet.gossip.wire import (
    HEADER,
    NO_RING,
    Hello,
    WireError,
    decode,
    encode,
    encode_gossip,
    encode_proof,
    frame,
    gossip_frames,
    parse_gossip,
    parse_hello,
    parse_proof,
    payload_length,
)


def test_a_frame_carries_its_length_and_refuses_oversize():
    data = frame(b"abc", max_frame=8)
    assert payload_length(data[:4], max_frame=8) == 3 and data[4:] == b"abc"
    with pytest.raises(WireError):
        frame(b"x" * 9, max_frame=8)
    with pytest.raises(WireError):
        payload_length(HEADER.pack(9), max_frame=8)
    with pytest.raises(WireError):
        payload_length(b"\0\0")


def test_messages_round_trip():
    hello = Hello("n1", bytes(range(32)), 6783, True)
    assert parse_hello(decode(hello.encode())) == hello
    assert parse_proof(decode(encode_proof(b"\x01" * 32))) == b"\x01" * 32
    entries, docs = [PeerEntry("n1", 3, {"n2": "10.0.0.2:6783"})], [Document("dns/a/10.0.0.9", {"ttl": 1}, 9, "n1")]
    gossip = parse_gossip(decode(encode_gossip(entries, docs, {"tokens": []})))
    assert (gossip.topology, gossip.docs, gossip.ring) == (entries, docs, {"tokens": []})
    assert parse_gossip(decode(encode_gossip(entries, []))).ring is NO_RING
    assert decode(encode("heartbeat")) == {"type": "heartbeat"}


@pytest.mark.parametrize("payload", [b"\xff", b"[1]", b'{"type": "nope"}', b"{}", b"1" * 3 + b"{"])
def test_payloads_that_are_not_messages_are_refused(payload):
    with pytest.raises(WireError):
        decode(payload)


GOOD_HELLO = {"type": "hello", "protocol": 1, "name": "n1", "nonce": "00" * 32, "port": 6783, "password": False}


@pytest.mark.parametrize("change", [
    {"protocol": "1"}, {"name": "../x"}, {"name": 5}, {"nonce": "00" * 31}, {"nonce": "zz" * 32},
    {"port": 0}, {"port": 70000}, {"port": True}, {"password": "no"}, {"type": "proof"},
])
def test_a_hello_with_a_bad_field_is_refused_naming_it(change):
    with pytest.raises(WireError):
        parse_hello(GOOD_HELLO | change)


@pytest.mark.parametrize("msg", [
    {"type": "gossip", "topology": {}, "docs": []},
    {"type": "gossip", "topology": [], "docs": [{"key": "k"}]},
    {"type": "gossip", "topology": [{"name": "a", "version": "1", "connections": {}}], "docs": []},
    {"type": "gossip", "topology": [], "docs": None},
    {"type": "proof", "mac": "00"},
])
def test_a_gossip_or_proof_with_a_bad_field_is_refused(msg):
    with pytest.raises(WireError):
        parse_proof(msg) if msg["type"] == "proof" else parse_gossip(msg)


def test_a_heavy_delta_is_split_so_no_frame_nears_the_limit():
    entries = [PeerEntry("n1", 1, {})]
    docs = [Document(f"objects/x/-/{i}", "v" * 1000, i, "n1") for i in range(10)]
    frames = [parse_gossip(decode(f)) for f in gossip_frames(entries, docs, {"r": 1}, budget=3000)]
    assert len(frames) > 3 and all(len(f.docs) <= 3 for f in frames)
    assert [d for f in frames for d in f.docs] == docs
    assert frames[0].topology == entries and frames[0].ring == {"r": 1}
    assert all(f.topology == [] and f.ring is NO_RING for f in frames[1:])
    assert len(gossip_frames(entries, [])) == 1

"""The sleeve's datagram header, chunking and route table (frame, chunks, routes)."""

from __future__ import annotations

import ipaddress
import os
import random

import pytest

from podnet.fabric.sleeve import chunks, frame
from podnet.fabric.sleeve.routes import RouteError, RouteTable, inner_destination

SENDER = frame.sender_id("node0")


def test_a_header_round_trips_with_every_field() -> None:
    flags = frame.ENCRYPTED | frame.VNET
    raw = frame.pack_header(flags, SENDER, 2**64 - 1, 3, 9) + b"x"
    header = frame.parse_header(raw)
    assert (header.flags, header.index, header.count) == (flags, 3, 9)
    assert (header.sender, header.counter) == (SENDER, 2**64 - 1)
    assert header.encrypted and header.vnet
    assert len(raw) == frame.HEADER_BYTES + 1


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: b[:10], "no payload"),
        (lambda b: bytes([2]) + b[1:], "version 2"),
        (lambda b: b[:1] + bytes([0x80]) + b[2:], "unknown bits"),
        (lambda b: b[:2] + bytes([5, 5]) + b[4:], "not below its count"),
    ],
)
def test_a_datagram_that_is_not_a_frame_is_refused_with_the_reason(mutate, why) -> None:
    good = frame.pack_header(frame.ENCRYPTED, SENDER, 1) + b"payload"
    frame.parse_header(good)
    with pytest.raises(frame.FrameError, match=why):
        frame.parse_header(mutate(good))


def test_packing_refuses_what_the_wire_cannot_carry() -> None:
    for args in ((0x40, SENDER, 1), (0, b"short", 1), (0, SENDER, 2**64), (0, SENDER, 1, 2, 2)):
        with pytest.raises(frame.FrameError):
            frame.pack_header(*args)


def test_an_encrypted_message_must_hold_its_tag() -> None:
    frame.check_message(frame.ENCRYPTED, frame.TAG_BYTES + 1)
    with pytest.raises(frame.FrameError):
        frame.check_message(frame.ENCRYPTED | frame.VNET, frame.TAG_BYTES + frame.VNET_HDR_BYTES)


def test_sender_ids_differ_per_name() -> None:
    assert frame.sender_id("node0") != frame.sender_id("node1")
    assert len(frame.sender_id("x")) == frame.SENDER_ID_BYTES


def datagrams(batches: list[list]) -> list[bytes]:
    """What the kernel's UDP GSO makes of the batches: one datagram per segment."""
    out = []
    for batch in batches:
        for i in range(0, len(batch), 2):
            out.append(bytes(batch[i]) + bytes(batch[i + 1]))
    return out


@pytest.mark.parametrize("size", [1, 1451, 1452, 1453, 63000, 64 * 1024])
def test_chunks_fit_the_segment_and_rebuild_the_message(size: int) -> None:
    message = os.urandom(size)
    batches = chunks.split(message, frame.VNET, SENDER, 42, 1472)
    pieces = datagrams(batches)
    assert all(len(p) <= 1472 for p in pieces)
    assert all(sum(len(b) for b in batch) <= chunks.MAX_GSO_BYTES for batch in batches)
    headers = [frame.parse_header(p) for p in pieces]
    assert [h.index for h in headers] == list(range(len(pieces)))
    assert {(h.count, h.counter) for h in headers} == {(len(pieces), 42)}
    # coalesced in one read (GRO) ...
    done = chunks.Reassembler().feed(memoryview(b"".join(pieces)), 1472)
    assert [bytes(m) for _, _, m in done] == [message]
    assert done[0][1] == frame.associated_data(pieces[0])
    assert done[0][0] == frame.parse_header(pieces[0])
    # ... or one datagram at a time, shuffled
    reassembler = chunks.Reassembler()
    random.Random(size).shuffle(pieces)
    done = [bytes(m) for p in pieces for _, _, m in reassembler.feed(memoryview(p), len(p))]
    assert done == [message]


def test_a_read_holding_two_messages_yields_both() -> None:
    # GRO coalesces segments of one size (the last may be short): message one fills
    # its two chunks exactly
    first, second = os.urandom(2 * (1472 - frame.HEADER_BYTES)), os.urandom(2000)
    pieces = datagrams(chunks.split(first, 0, SENDER, 1, 1472))
    pieces += datagrams(chunks.split(second, 0, SENDER, 2, 1472))
    done = chunks.Reassembler().feed(memoryview(b"".join(pieces)), 1472)
    assert [m for _, _, m in done] == [first, second]


def test_incomplete_messages_are_bounded_and_garbage_is_counted() -> None:
    reassembler = chunks.Reassembler(limit=4)
    for counter in range(10):  # only chunk 0 of 2 arrives, ten times
        piece = datagrams(chunks.split(os.urandom(2000), 0, SENDER, counter, 1472))[0]
        assert reassembler.feed(memoryview(piece), len(piece)) == []
    assert reassembler.evicted == 6
    assert reassembler.feed(memoryview(b"\x09" * 40), 40) == []
    assert reassembler.malformed == 1


def test_a_message_too_big_for_255_chunks_is_refused() -> None:
    with pytest.raises(chunks.ChunkError):
        chunks.split(bytes(300 * 1300), 0, SENDER, 1, 1300)
    with pytest.raises(chunks.ChunkError):
        chunks.chunk_count(100, frame.HEADER_BYTES + 10)


def packet(dst: str) -> bytes:
    address = ipaddress.ip_address(dst)
    if address.version == 4:
        return bytes([0x45]) + bytes(15) + address.packed + bytes(8)
    return bytes([0x60]) + bytes(23) + address.packed + bytes(8)


def test_the_longest_prefix_picks_the_peer() -> None:
    table = RouteTable({"10.1.0.0/16": "b", "10.1.2.0/24": "c", "fd00::/64": "d"})
    assert table.lookup(inner_destination(packet("10.1.2.9"))) == "c"
    assert table.lookup(inner_destination(packet("10.1.3.9"))) == "b"
    assert table.lookup(inner_destination(packet("fd00::5"))) == "d"
    assert table.lookup(inner_destination(packet("10.2.0.1"))) is None
    table.replace({"10.1.2.0/24": "e"})  # a new table drops the cached answers
    assert table.lookup(inner_destination(packet("10.1.2.9"))) == "e"
    assert table.lookup(inner_destination(packet("10.1.3.9"))) is None


def test_the_destination_is_read_past_the_vnet_header() -> None:
    raw = bytes(frame.VNET_HDR_BYTES) + packet("192.0.2.7")
    assert inner_destination(raw, frame.VNET_HDR_BYTES) == bytes([192, 0, 2, 7])
    assert inner_destination(b"\x45" + bytes(5)) is None
    assert inner_destination(b"\x20" + bytes(40)) is None


@pytest.mark.parametrize("routes", [{"10.1.2.3/16": "b"}, {"nonsense": "b"}, {"10.0.0.0/8": ""}])
def test_a_bad_route_is_refused_by_its_prefix(routes) -> None:
    with pytest.raises(RouteError, match="route"):
        RouteTable(routes)

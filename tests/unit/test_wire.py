"""The agent socket's request framing (rpc/wire.py) under arbitrary input: any byte
stream, cut anywhere and delivered in any chunks, gives the request, a FrameError or a
ConnectionError, never more than one checked frame in memory, and never a leaked fd."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.rpc import wire

LIMIT = 64  # a small limit, so generated streams reach it
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def _netns_fds() -> set[str]:
    """This process's fds that hold a network namespace: what these tests send, so what
    a leak would leave. Not every fd: other threads of the test process (a leftover
    watcher, the collector closing an earlier test's socket) open and close theirs at
    any moment, and the whole set then differed by chance."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd, or one closed since
            if os.readlink(f"/proc/self/fd/{fd}").startswith("net:["):
                held.add(fd)
    return held


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=LIMIT), st.binary(max_size=LIMIT), st.lists(st.integers(0, 1000), max_size=8))
def test_any_request_round_trips_in_any_chunks(meta, body, cuts):
    reader = wire.RequestReader(LIMIT)
    frame = wire.pack_request(meta, body)
    chunks = _chunks(frame, cuts)
    for chunk in chunks[:-1]:
        assert not reader.feed(chunk)
    assert reader.feed(chunks[-1]) and reader.wanted() == 0
    assert reader.request() == (meta, body)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3 * LIMIT), st.lists(st.integers(0, 1000), max_size=8))
def test_any_byte_stream_is_a_request_or_a_frame_error(data, cuts):
    reader = wire.RequestReader(LIMIT)
    done = False
    try:
        for chunk in _chunks(data, cuts):
            done = reader.feed(chunk)
            assert reader.buffered() <= 2 * 4 + 2 * LIMIT
    except wire.FrameError:
        return
    if done:
        meta, body = reader.request()
        assert len(meta) <= LIMIT and len(body) <= LIMIT
        assert wire.pack_request(meta, body) == data
    else:
        assert reader.wanted() > 0 and reader.buffered() == len(data)
        with pytest.raises(wire.FrameError):
            reader.request()


@given(st.integers(LIMIT + 1, 2**32 - 1), st.booleans())
def test_a_length_over_the_limit_is_refused_as_soon_as_it_is_whole(size, in_body):
    head = struct.pack(">I", 0) if in_body else b""
    reader = wire.RequestReader(LIMIT)
    with pytest.raises(wire.FrameError, match="too large"):
        reader.feed(head + struct.pack(">I", size) + b"x" * 10)
    assert reader.buffered() == len(head) + 4  # nothing after the length was taken


def test_a_reader_never_asks_past_an_unchecked_length():
    reader = wire.RequestReader()
    assert reader.wanted() == 4
    reader.feed(struct.pack(">I", 3))
    assert reader.wanted() == 3 + 4  # the meta and the body's length, not beyond
    reader.feed(b"abc" + struct.pack(">I", 2))
    assert reader.wanted() == 2
    assert reader.feed(b"hi") and reader.request() == (b"abc", b"hi")
    with pytest.raises(wire.FrameError, match="after the end"):
        reader.feed(b"!")


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=40), st.binary(max_size=40), st.integers(0, 200), st.integers(0, 3),
    st.binary(max_size=12),
)
def test_recv_request_on_a_socket_closes_every_fd_it_does_not_return(meta, body, cut, nfds, garbage):
    frame = (wire.pack_request(meta, body) + garbage)[:cut] if cut < 100 else garbage + wire.pack_request(meta, body)
    before = _netns_fds()
    ours, theirs = socket.socketpair()
    sent = [os.open("/proc/self/ns/net", os.O_RDONLY) for _ in range(nfds)]
    try:
        with ours, theirs:
            if frame:
                wire.send(theirs, frame, sent)
            theirs.shutdown(socket.SHUT_WR)
            ours.settimeout(5)
            try:
                got_meta, got_body, fds = wire.recv_request(ours)
            except (ConnectionError, wire.FrameError):
                pass
            else:
                assert len(fds) <= wire.MAX_FDS
                assert wire.pack_request(got_meta, got_body) == frame[: 8 + len(got_meta) + len(got_body)]
                wire.close_fds(fds)
    finally:
        wire.close_fds(sent)
    assert _netns_fds() == before


def test_recv_request_refuses_too_many_fds_and_closes_them():
    before = _netns_fds()
    ours, theirs = socket.socketpair()
    sent = [os.open("/proc/self/ns/net", os.O_RDONLY) for _ in range(5)]
    with ours, theirs:
        wire.send(theirs, wire.pack_request(b"{}", b""), sent)
        wire.close_fds(sent)
        with pytest.raises(wire.FrameError, match="at most 2 fds"):
            wire.recv_request(ours)
    assert _netns_fds() == before


def test_recv_request_stops_reading_at_an_oversized_length():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(struct.pack(">I", wire.MAX_FRAME + 1) + b"rest")
        with pytest.raises(wire.FrameError, match="too large"):
            wire.recv_request(ours)
        assert ours.recv(100) == b"rest"  # left unread


def test_the_plugin_imports_nothing_but_c_modules_with_wire():
    code = ("import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); import podnet.rpc.wire; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, SRC], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["_struct", "podnet", "podnet.rpc", "podnet.rpc.wire"]

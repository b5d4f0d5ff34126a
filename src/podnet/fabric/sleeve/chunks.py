"""Cutting a sealed message into underlay-sized chunks and putting it back together.

Why: one UDP datagram of 64 KB is fragmented by IP into ~45 fragments and reassembled
by the far kernel, which capped a raw UDP stream between two namespaces here at
~6.4 Gbit/s; the same bytes sent as UDP GSO (one sendmsg with UDP_SEGMENT, the
segments cut by the kernel or the NIC, and read back coalesced with UDP_GRO) ran at
~18-22 Gbit/s. So a message is laid out as chunks of exactly one segment each
(header + a slice of the message, see frame.py), sent in one sendmsg per batch of at
most MAX_SEGMENTS segments and 64 KB, and a receive that returns many chunks at once is
split at the segment size the kernel reports. A read that holds one whole message in
order (the common case: veth and GRO keep a batch together) is joined directly; any
other arrival goes through a bounded table of pending messages.
Pure: buffers in, buffers out.
"""

from __future__ import annotations

from collections import OrderedDict

from podnet.fabric.sleeve import frame

MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS is 64 on older kernels, 128 on newer ones
MAX_GSO_BYTES = frame.MAX_DATAGRAM
PENDING_LIMIT = 128  # incomplete messages kept per receive worker


class ChunkError(ValueError):
    """A message that cannot be cut into chunks of this size."""


def chunk_count(size: int, segment: int) -> int:
    room = segment - frame.HEADER_BYTES
    if room < 64:
        raise ChunkError(f"segment of {segment} bytes leaves no room after the header")
    count = -(-size // room)
    if not 1 <= count <= frame.MAX_CHUNKS:
        raise ChunkError(f"message of {size} bytes needs {count} chunks of {segment} bytes")
    return count


def split(message, flags: int, sender: bytes, counter: int, segment: int) -> list[list]:
    """Batches of iovecs: each batch is one sendmsg of whole segments (the last one of
    the message may be short), chunk i = header(index i) + message slice i."""
    count = chunk_count(len(message), segment)
    if count == 1:  # most messages of a TCP flow's return path (its ACKs)
        return [[frame.pack_header(flags, sender, counter), message]]
    room = segment - frame.HEADER_BYTES
    headers = bytearray(frame.pack_header(flags, sender, counter, 0, count) * count)
    headers[frame.INDEX_OFFSET :: frame.HEADER_BYTES] = bytes(range(count))
    hview, mview = memoryview(headers), memoryview(message)
    size = frame.HEADER_BYTES
    iov: list = [None] * (2 * count)
    iov[0::2] = [hview[i * size : (i + 1) * size] for i in range(count)]
    iov[1::2] = [mview[i * room : (i + 1) * room] for i in range(count)]
    per_batch = min(MAX_SEGMENTS, MAX_GSO_BYTES // segment)
    return [iov[i : i + 2 * per_batch] for i in range(0, len(iov), 2 * per_batch)]


Message = tuple[frame.FrameHeader, bytes, bytes | memoryview]


class Reassembler:
    """Messages from received chunks. `feed` takes one read (one or many chunks of
    `segment` bytes) and returns the (header, associated data, message) triples it
    completed; a message may be a view into the read's buffer, valid until the next
    read. Malformed chunks are counted in `malformed`."""

    def __init__(self, limit: int = PENDING_LIMIT) -> None:
        self.limit = limit
        self.malformed = 0
        self.evicted = 0
        self._pending: OrderedDict[tuple[bytes, int], dict[int, bytes]] = OrderedDict()

    def feed(self, data: memoryview, segment: int) -> list[Message]:
        size = len(data)
        if segment <= frame.HEADER_BYTES or segment >= size:
            segment = size
        if segment == size:  # one datagram
            try:
                header = frame.parse_header(data)
            except frame.FrameError:
                self.malformed += 1
                return []
            if header.count == 1:
                return [(header, bytes(data[: frame.HEADER_BYTES]), data[frame.HEADER_BYTES :])]
            message = self._add(header, data)
            return [] if message is None else [message]
        offsets = range(0, size, segment)
        whole = self._whole(data, segment, offsets)
        if whole is not None:
            return [whole]
        done = []
        for offset in offsets:
            chunk = data[offset : offset + segment]
            try:
                header = frame.parse_header(chunk)
            except frame.FrameError:
                self.malformed += 1
                continue
            message = self._add(header, chunk)
            if message is not None:
                done.append(message)
        return done

    @staticmethod
    def _whole(data: memoryview, segment: int, offsets: range):
        """The message if this read is exactly its chunks 0..n-1 in order, else None."""
        n, size = len(offsets), frame.HEADER_BYTES
        first = bytes(data[:size])
        if len(first) < size or first[0] != frame.VERSION or first[frame.INDEX_OFFSET] != 0:
            return None
        if first[frame.INDEX_OFFSET + 1] != n or len(data) - (n - 1) * segment <= size:
            return None
        expected = bytearray(first * n)
        expected[frame.INDEX_OFFSET :: size] = bytes(range(n))
        if n > 1 and b"".join([data[o : o + size] for o in offsets]) != expected:
            return None
        try:
            header = frame.parse_header(first + b"\0")
        except frame.FrameError:
            return None
        return header, first, b"".join([data[o + size : o + segment] for o in offsets])

    def _add(self, header: frame.FrameHeader, chunk: memoryview):
        body = bytes(chunk[frame.HEADER_BYTES :])
        if header.count == 1:
            return header, frame.associated_data(chunk), body
        key = (header.sender, header.counter)
        parts = self._pending.get(key)
        if parts is None:
            if len(self._pending) >= self.limit:
                self._pending.popitem(last=False)
                self.evicted += 1
            parts = self._pending[key] = {}
        parts[header.index] = body
        if len(parts) < header.count:
            return None
        del self._pending[key]
        if sorted(parts) != list(range(header.count)):
            self.malformed += 1  # chunks disagree on the count
            return None
        whole = b"".join(parts[i] for i in range(header.count))
        return header, frame.associated_data(chunk), whole

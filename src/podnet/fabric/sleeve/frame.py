"""The sleeve's datagram: a fixed 20-byte header, then a chunk of the message.

    0      1      2      3      4               12              20
    | ver  | flags| index| count| sender id (8) | counter (u64) | chunk ...

- A message (one super-packet, sealed once) is cut into `count` chunks that each fit
  one underlay datagram (chunks.py); every chunk carries the header, `index` says
  where it goes. The AEAD's associated data is the header with index 0, so the
  whole message is authenticated once, whatever order its chunks came in.

- version 1 (nothing else is spoken); flags: ENCRYPTED (payload is AES-256-GCM ciphertext + 16-byte tag, the
  header its associated data), VNET (the payload starts with the 10-byte virtio-net
  header the sending TUN gave: a GSO super-packet travels whole and the receiving
  kernel segments it, if at all); unknown flags are refused, so a later version can
  use them.
- sender id: 8 bytes of SHA-256 of the sender's peer name; the receiver finds the
  peer (and its key and replay window) by it, not by the source address, so a
  datagram relayed by another peer is still attributed to its origin.
- counter: per sender and direction, the AEAD nonce when encrypted.
Pure: bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

VERSION = 1
ENCRYPTED = 0x01
VNET = 0x02
KNOWN_FLAGS = ENCRYPTED | VNET
HEADER = struct.Struct("!BBBB8sQ")
INDEX_OFFSET = 2
MAX_CHUNKS = 255
HEADER_BYTES = HEADER.size
SENDER_ID_BYTES = 8
TAG_BYTES = 16
VNET_HDR_BYTES = 10
MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4


class FrameError(ValueError):
    """A datagram that is not a sleeve frame of this version."""


def sender_id(peer_name: str) -> bytes:
    if not peer_name:
        raise FrameError("sender name is empty")
    return hashlib.sha256(peer_name.encode()).digest()[:SENDER_ID_BYTES]


@dataclass(frozen=True)
class FrameHeader:
    flags: int
    index: int
    count: int
    sender: bytes
    counter: int

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & ENCRYPTED)

    @property
    def vnet(self) -> bool:
        return bool(self.flags & VNET)


def pack_header(flags: int, sender: bytes, counter: int, index: int = 0, count: int = 1) -> bytes:
    if not 0 <= index < count <= MAX_CHUNKS:
        raise FrameError(f"chunk {index} of {count}: need 0 <= index < count <= {MAX_CHUNKS}")
    if flags & ~KNOWN_FLAGS:
        raise FrameError(f"flags {flags:#x}: unknown bits {flags & ~KNOWN_FLAGS:#x}")
    if len(sender) != SENDER_ID_BYTES:
        raise FrameError(f"sender id: {len(sender)} bytes, need {SENDER_ID_BYTES}")
    if not 0 <= counter < 2**64:
        raise FrameError(f"counter {counter} is outside 0..2**64-1")
    return HEADER.pack(VERSION, flags, index, count, sender, counter)


def parse_header(datagram) -> FrameHeader:
    """The header of a received datagram (one chunk); FrameError says why it is not
    one. The length of a whole message is checked by `check_message`."""
    if len(datagram) <= HEADER_BYTES:
        raise FrameError(f"datagram of {len(datagram)} bytes: no payload after the header")
    version, flags, index, count, sender, counter = HEADER.unpack_from(datagram)
    if version != VERSION:
        raise FrameError(f"version {version}, this sleeve speaks {VERSION}")
    if flags & ~KNOWN_FLAGS:
        raise FrameError(f"flags {flags:#x}: unknown bits {flags & ~KNOWN_FLAGS:#x}")
    if not index < count:
        raise FrameError(f"chunk index {index} is not below its count {count}")
    return FrameHeader(flags, index, count, bytes(sender), counter)


def check_message(flags: int, size: int) -> None:
    """A reassembled message must hold at least the tag and the vnet header."""
    least = (TAG_BYTES if flags & ENCRYPTED else 0) + (VNET_HDR_BYTES if flags & VNET else 0)
    if size <= least:
        raise FrameError(f"message of {size} bytes is too short for flags {flags:#x}")


def associated_data(header) -> bytes:
    """What the AEAD authenticates besides the message: its header with index 0."""
    data = bytearray(header[:HEADER_BYTES])
    data[INDEX_OFFSET] = 0
    return bytes(data)

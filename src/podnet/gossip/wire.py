"""The gossip connection's frames and messages (TCP 6783).

frame:   u32 big-endian payload length, payload. A length above `MAX_FRAME` ends the
         connection before a byte of the payload is read or allocated.
payload: a JSON object with a "type" (plain text during the handshake; once a password
         is set, sealed by the session's channel cipher, auth.py `Channel`).

messages:
  hello     {"protocol": 1, "name", "nonce": 64 hex, "port": listen port, "password": bool}
  proof     {"mac": 64 hex}                       (only when both sides have a password)
  gossip    {"topology": [PeerEntry], "docs": [Document], "ring"?: JSON}
  heartbeat {}

Every field read from a peer passes a parse function here (or `PeerEntry.from_json`,
`Document.from_json`) before anything uses it; each refusal is a `WireError` naming
the field. The ring is opaque here: its owner's `merge_ring` validates it.
Sans-io: bytes and dicts in and out.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

from podnet.gossip.lww import Document
from podnet.gossip.topology import PeerEntry, check_peer_name

PROTOCOL = 1
MAX_FRAME = 8 * 1024 * 1024
HEADER = struct.Struct(">I")
NONCE_BYTES = 32
MAC_BYTES = 32
TYPES = frozenset({"hello", "proof", "gossip", "heartbeat"})
MAX_ENTRIES = 4096
NO_RING = object()  # a gossip message without a ring


class WireError(ValueError):
    """A frame or message that does not hold; the connection is dropped."""


def frame(payload: bytes, max_frame: int = MAX_FRAME) -> bytes:
    if len(payload) > max_frame:
        raise WireError(f"frame of {len(payload)} bytes, more than {max_frame}")
    return HEADER.pack(len(payload)) + payload


def payload_length(header: bytes, max_frame: int = MAX_FRAME) -> int:
    """The length a frame header announces, refused above `max_frame`."""
    if len(header) != HEADER.size:
        raise WireError("truncated frame header")
    (length,) = HEADER.unpack(header)
    if length > max_frame:
        raise WireError(f"frame of {length} bytes announced, more than {max_frame}")
    return length


async def read_frame(reader: asyncio.StreamReader, timeout: float,
                     open_sealed: Callable[[bytes], bytes] | None = None) -> dict:
    """The next message from a stream; `open_sealed` unseals a password session's frames."""
    async with asyncio.timeout(timeout):
        header = await reader.readexactly(HEADER.size)
        payload = await reader.readexactly(payload_length(header))
    return decode(open_sealed(payload) if open_sealed is not None else payload)


def encode(kind: str, **fields: object) -> bytes:
    assert kind in TYPES
    return json.dumps({"type": kind, **fields}, separators=(",", ":"), allow_nan=False).encode()


def decode(payload: bytes) -> dict:
    """A message: a JSON object whose "type" is known."""
    try:
        msg = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise WireError("payload: not JSON") from None
    if not isinstance(msg, dict) or msg.get("type") not in TYPES:
        raise WireError(f"payload: not a message of a known type: {str(msg)[:80]!r}")
    return msg


def expect(msg: dict, kind: str) -> dict:
    if msg["type"] != kind:
        raise WireError(f"expected a {kind} message, got {msg['type']!r}")
    return msg


def _hex(msg: dict, name: str, size: int) -> bytes:
    text = msg.get(name)
    try:
        if not isinstance(text, str) or len(text) != 2 * size:
            raise ValueError
        return bytes.fromhex(text)
    except ValueError:
        raise WireError(f"{msg['type']}.{name}: not {size} bytes of hex") from None


@dataclass(frozen=True)
class Hello:
    name: str
    nonce: bytes
    port: int
    password: bool
    protocol: int = PROTOCOL

    def encode(self) -> bytes:
        return encode("hello", protocol=self.protocol, name=self.name, nonce=self.nonce.hex(),
                      port=self.port, password=self.password)


def parse_hello(msg: dict) -> Hello:
    expect(msg, "hello")
    protocol = msg.get("protocol")
    if type(protocol) is not int:
        raise WireError("hello.protocol: not an integer")
    try:
        name = check_peer_name(msg.get("name"), "hello.name")
    except ValueError as exc:
        raise WireError(str(exc)) from None
    port = msg.get("port")
    if type(port) is not int or not 0 < port < 65536:
        raise WireError("hello.port: not a port number")
    password = msg.get("password")
    if not isinstance(password, bool):
        raise WireError("hello.password: not true or false")
    return Hello(name, _hex(msg, "nonce", NONCE_BYTES), port, password, protocol)


def encode_proof(mac: bytes) -> bytes:
    return encode("proof", mac=mac.hex())


def parse_proof(msg: dict) -> bytes:
    return _hex(expect(msg, "proof"), "mac", MAC_BYTES)


@dataclass(frozen=True)
class Gossip:
    topology: list[PeerEntry]
    docs: list[Document]
    ring: object = NO_RING


def encode_gossip(topology: list[PeerEntry], docs: list[Document], ring: object = NO_RING) -> bytes:
    extra = {} if ring is NO_RING else {"ring": ring}
    return encode("gossip", topology=[e.to_json() for e in topology], docs=[d.to_json() for d in docs], **extra)


def gossip_frames(topology: list[PeerEntry], docs: list[Document], ring: object = NO_RING,
                  budget: int = MAX_FRAME // 4) -> list[bytes]:
    """One gossip message, or several when the documents weigh more than `budget` bytes
    (each is at most 64 KiB): no frame nears MAX_FRAME. Entries and ring ride the first."""
    parts: list[list[Document]] = [[]]
    size = 0
    for doc in docs:
        weight = len(json.dumps(doc.to_json(), separators=(",", ":")))
        if parts[-1] and size + weight > budget:
            parts.append([])
            size = 0
        parts[-1].append(doc)
        size += weight
    return [encode_gossip(topology, part, ring) if i == 0 else encode_gossip([], part)
            for i, part in enumerate(parts)]


def _list(msg: dict, name: str) -> list:
    items = msg.get(name)
    if not isinstance(items, list) or len(items) > MAX_ENTRIES * (64 if name == "docs" else 1):
        raise WireError(f"gossip.{name}: not a list of bounded length")
    return items


def parse_gossip(msg: dict) -> Gossip:
    expect(msg, "gossip")
    try:
        topology = [PeerEntry.from_json(raw) for raw in _list(msg, "topology")]
        docs = [Document.from_json(raw) for raw in _list(msg, "docs")]
    except ValueError as exc:
        raise WireError(f"gossip: {exc}") from None
    return Gossip(topology, docs, msg.get("ring", NO_RING))

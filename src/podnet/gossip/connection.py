"""One gossip connection's state, and the knobs and change reports of gossip/peers.py.

Apart from peers.py so that the peer's loop (dialing, handshakes, rounds) reads on its
own: a connection here is what was sent on it (its delta marks) and how to send one
frame (sealed when the handshake gave a secret; a peer that stops reading is dropped).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from podnet.gossip.auth import Channel
from podnet.gossip.wire import MAX_FRAME, frame


@dataclass(frozen=True)
class GossipTiming:
    """Seconds. The tests shrink them; the defaults suit a LAN."""

    gossip_interval: float = 1.0
    heartbeat_interval: float = 1.0
    dead_after: float = 5.0
    handshake_timeout: float = 5.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    push_delay: float = 0.02
    full_sync_rounds: int = 10  # every Nth round sends the whole topology (anti-entropy)
    tombstone_ttl: float = 3600.0  # keep above the longest partition (lww.py)


@dataclass(frozen=True)
class Change:
    """What a merge changed: the topology (recompute `next_hops`), these document keys."""

    topology: bool
    keys: tuple[str, ...] = ()


@dataclass(eq=False)
class Connection:
    peer: str
    address: str  # where the peer listens, "ip:port"
    outbound: bool
    writer: asyncio.StreamWriter
    channel: Channel | None
    secret: bytes | None
    since: float = field(default_factory=time.time)
    last_received: float = field(default_factory=time.time)
    last_sent: float = 0.0
    sent_seq: int = 0  # documents: what `delta` gave up to
    sent_ring: str | None = None
    sent_versions: dict[str, int] = field(default_factory=dict)  # topology: peer -> version sent

    def send(self, payload: bytes) -> None:
        if self.writer.transport.is_closing():
            raise ConnectionError(f"connection to {self.peer} is closing")
        if self.channel is not None:
            payload = self.channel.seal(payload)
        self.writer.write(frame(payload))
        self.last_sent = time.time()
        if self.writer.transport.get_write_buffer_size() > 4 * MAX_FRAME:
            raise ConnectionError(f"peer {self.peer} does not read")

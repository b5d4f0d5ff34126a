"""A gossip peer: TCP 6783, handshakes, gossip, dialing, dead connections.

Design notes:
- One asyncio loop in one thread per peer, not a thread per connection (60 threads on a
  20-node mesh, and locks around every socket): one place closes everything at `stop()`,
  and frames never interleave (each is written whole, synchronously). What callers read
  from other threads sits behind one lock; callbacks run on the loop, outside the lock.
- A connection: handshake (auth.py; frames sealed afterwards when a password is set),
  then gossip frames carrying what that connection was not sent yet: topology entries
  of other versions, documents past its `LwwMap.delta` mark, the ring when it changed.
  A change pushes at once (after `push_delay`); every `full_sync_rounds` rounds the
  whole topology goes again (anti-entropy: an entry a receiver pruned too early returns).
- Any frame is a heartbeat; a connection that brings none for `dead_after` is dropped,
  our entry loses the peer, and peers nobody reaches are pruned (topology.prune).
- Two peers dialing each other at once keep one connection (topology.keeps_first).
- Dial targets: the seeds, and every peer the topology names that we are not connected
  to, at the addresses others report; each backs off from `reconnect_min` to
  `reconnect_max` and starts over once a connection stood.
- `may_connect(peer)` refuses peers after the handshake (then the name is known): the
  ring refuses peers declared dead, the tests cut links with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from podnet.gossip import topology as topo
from podnet.gossip.auth import AuthRefused, Channel, Handshake, load_credential
from podnet.gossip.connection import Change, Connection, GossipTiming
from podnet.gossip.lww import Document, LwwMap, canonical
from podnet.gossip.wire import (
    NO_RING,
    Gossip,
    WireError,
    encode,
    encode_proof,
    frame,
    gossip_frames,
    parse_gossip,
    parse_hello,
    parse_proof,
    read_frame,
)

log = logging.getLogger("podnet.gossip")
PORT = 6783
DEFAULT_TIMING = GossipTiming()


class GossipPeer:
    """One node's gossip peer. `start()` binds and returns (OSError when the port is
    taken); `stop()` closes every socket and joins the thread. Callbacks run on the
    peer's thread: `on_change(Change)`, `get_ring() -> JSON`, `merge_ring(JSON)` (raise
    to refuse), `may_connect(peer name) -> bool`."""

    def __init__(self, name: str, listen: tuple[str, int] = ("0.0.0.0", PORT),
                 seeds: list[tuple[str, int]] | tuple = (), password: str | bytes | None = None,
                 key_file: str | None = None, on_change: Callable[[Change], None] | None = None,
                 get_ring: Callable[[], object] | None = None, merge_ring: Callable[[object], None] | None = None,
                 may_connect: Callable[[str], bool] | None = None, timing: GossipTiming = DEFAULT_TIMING) -> None:
        self.name = topo.check_peer_name(name)
        self.listen = listen
        self.seeds = [topo.format_address(*topo.check_address(topo.format_address(h, p), "seed")) for h, p in seeds]
        self.timing = timing
        self._credential = load_credential(password, key_file)
        self._on_change, self._get_ring, self._merge_ring = on_change, get_ring, merge_ring
        self._may_connect = may_connect or (lambda _peer: True)
        self._lock = threading.Lock()
        self._docs = LwwMap(self.name, tombstone_ttl_ms=int(timing.tombstone_ttl * 1000))
        self._topology: dict[str, topo.PeerEntry] = {}
        self._connections: dict[str, Connection] = {}
        self._seen: dict[str, float] = {}
        self._backoff: dict[str, tuple[float, float]] = {}  # target -> (next try, delay)
        self._dialing: set[str] = set()
        self._own_addresses: set[str] = set()  # seeds that turned out to be this peer
        self._tasks: set[asyncio.Task] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.address: tuple[str, int] | None = None  # bound (host, port) once started
        self._publish()

    # ----- caller's API (any thread)
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"gossip-{self.name}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None

    def put(self, key: str, value: object) -> Document:
        with self._lock:
            doc = self._docs.put(key, value, _now_ms())
        self.push()
        return doc

    def delete(self, key: str) -> Document | None:
        with self._lock:
            doc = self._docs.delete(key, _now_ms())
        self.push()
        return doc

    def get(self, key: str) -> object | None:
        with self._lock:
            return self._docs.get(key)

    def document(self, key: str) -> Document | None:
        with self._lock:
            return self._docs.document(key)

    def documents(self, prefix: str = "") -> dict[str, object]:
        with self._lock:
            return self._docs.items(prefix)

    def snapshot(self) -> list[dict]:
        """Every document with its version (tombstones too): what a restarted peer
        `restore`s, so its writes keep their place in the order."""
        with self._lock:
            return [doc.to_json() for doc in self._docs.documents().values()]

    def restore(self, raw: list) -> list[str]:
        """Merge documents saved by `snapshot` (each checked); the keys that changed."""
        docs = [Document.from_json(item) for item in raw]
        with self._lock:
            changed = self._docs.merge(docs, _now_ms())
        self.push()
        return changed

    def topology(self) -> dict[str, topo.PeerEntry]:
        with self._lock:
            return dict(self._topology)

    def next_hops(self) -> dict[str, str]:
        with self._lock:
            return topo.next_hops(self._topology, self.name)

    def session_secret(self, peer: str) -> bytes | None:
        """The connection's 32-byte secret (None: no password, or not connected)."""
        with self._lock:
            conn = self._connections.get(peer)
            return conn.secret if conn else None

    def push(self) -> None:
        """Gossip now (after `push_delay`): the caller changed something (e.g. the ring)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    def status(self) -> dict:
        with self._lock:
            hops = topo.next_hops(self._topology, self.name)
            conns = [{"peer": c.peer, "address": c.address, "outbound": c.outbound,
                      "authenticated": c.channel is not None, "since": c.since, "last_seen": c.last_received}
                     for c in sorted(self._connections.values(), key=lambda c: c.peer)]
            seen = self._seen | {c.peer: c.last_received for c in self._connections.values()}
            peers = [{"name": p, "via": via, "direct": via == p, "last_seen": seen.get(p)}
                     for p, via in sorted(hops.items())]
        host, port = self.address or self.listen
        return {"name": self.name, "address": topo.format_address(host, port), "peers": peers, "connections": conns}

    # ----- the loop thread
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            self._error = exc
            if self._started.is_set():
                log.exception("gossip %s: the loop failed", self.name)
        finally:
            self._started.set()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stopping, self._wake = asyncio.Event(), asyncio.Event()
        server = await asyncio.start_server(self._accepted, *self.listen)
        self.address = server.sockets[0].getsockname()[:2]
        self._loop = loop
        self._started.set()
        try:
            await self._rounds()
        finally:
            server.close()
            await asyncio.sleep(0)  # a connection accepted just now: its task registers itself
            while self._tasks:  # every task ends before the loop closes (none left pending)
                pending = list(self._tasks)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                await asyncio.sleep(0)
            await server.wait_closed()
            self._loop = None

    async def _rounds(self) -> None:
        t = self.timing
        tick = min(t.gossip_interval, t.heartbeat_interval, t.reconnect_min) / 2
        next_round, rounds = 0.0, 0
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):  # never wait_for: 3.11's loses results when cancelled
                    await self._wake.wait()
            if self._wake.is_set():
                await asyncio.sleep(t.push_delay)
                self._wake.clear()
                self._gossip()
            now = time.monotonic()
            if now >= next_round:
                next_round, rounds = now + t.gossip_interval, rounds + 1
                with self._lock:
                    self._docs.purge(_now_ms())
                    self._topology = topo.prune(self._topology, self.name)
                self._gossip(full=rounds % t.full_sync_rounds == 0)
            self._heartbeats()
            self._dial_targets(now)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish(self) -> None:
        """Our own entry from our connections (called under the lock, or before start)."""
        mine = self._topology.get(self.name)
        links = {peer: conn.address for peer, conn in self._connections.items()}
        self._topology[self.name] = topo.PeerEntry(
            self.name, topo.next_version(mine.version if mine else 0, time.time_ns()), links)

    def _gossip(self, full: bool = False) -> None:
        """Each connection gets the entries and documents it was not sent yet (`full`: all
        entries, so one that a receiver pruned too early comes back), and the ring when it
        changed since the last one sent there. Nothing new: no frame."""
        ring, ring_text = NO_RING, None
        if self._get_ring is not None:
            try:
                ring = self._get_ring()
                ring_text = canonical(ring)
            except Exception:  # noqa: BLE001 - the caller's code must not stop the gossip
                log.exception("gossip %s: get_ring failed", self.name)
                ring, ring_text = NO_RING, None
        with self._lock:
            plan = [(conn, [e for e in self._topology.values() if full or conn.sent_versions.get(e.name) != e.version],
                     *self._docs.delta(conn.sent_seq)) for conn in self._connections.values()]
        for conn, entries, docs, seq in plan:
            send_ring = ring if ring_text is not None and ring_text != conn.sent_ring else NO_RING
            if not entries and not docs and send_ring is NO_RING:
                continue
            try:
                for payload in gossip_frames(entries, docs, send_ring):
                    conn.send(payload)
            except (ConnectionError, WireError) as exc:
                log.info("gossip %s: dropping %s: %s", self.name, conn.peer, exc)
                conn.writer.close()
                continue
            conn.sent_versions.update((e.name, e.version) for e in entries)
            conn.sent_seq, conn.sent_ring = seq, ring_text or conn.sent_ring

    def _heartbeats(self) -> None:
        due = time.time() - self.timing.heartbeat_interval
        with self._lock:
            quiet = [c for c in self._connections.values() if c.last_sent < due]
        for conn in quiet:
            try:
                conn.send(encode("heartbeat"))
            except (ConnectionError, WireError):
                conn.writer.close()  # a peer that does not read: its reader ends and drops it

    def _dial_targets(self, now: float) -> None:
        with self._lock:
            unconnected = topo.to_dial(self._topology, self.name, self._connections)
            held = {c.address for c in self._connections.values()} | self._own_addresses
        targets = [(f"peer:{p}", a) for p, a in unconnected.items() if self._may_connect(p)]
        targets += [(f"seed:{a}", [a]) for a in self.seeds if a not in held]
        for target, addresses in targets:
            due, _delay = self._backoff.get(target, (0.0, 0.0))
            if addresses and target not in self._dialing and now >= due:
                self._dialing.add(target)
                self._spawn(self._dial(target, addresses))

    async def _dial(self, target: str, addresses: list[str]) -> None:
        stood = False
        try:
            for address in addresses:
                host, port = topo.check_address(address)
                try:
                    async with asyncio.timeout(self.timing.handshake_timeout):
                        reader, writer = await asyncio.open_connection(host, port)
                except (OSError, TimeoutError) as exc:
                    log.debug("gossip %s: dial %s failed: %s", self.name, address, exc)
                    continue
                if stood := await self._serve(reader, writer, address):
                    break
        finally:  # after a connection that stood, try again soon; after failures, back off
            self._dialing.discard(target)
            delay = self._backoff.get(target, (0.0, 0.0))[1]
            t = self.timing
            delay = t.reconnect_min if stood else min(t.reconnect_max, max(t.reconnect_min, 2 * delay))
            self._backoff[target] = (time.monotonic() + delay, delay)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await self._serve(reader, writer, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dialed: str | None) -> bool:
        """Handshake, then read frames until the connection ends. True once it stood."""
        remote = writer.get_extra_info("peername") or ("?", 0)
        conn = None
        try:
            async with asyncio.timeout(self.timing.handshake_timeout):
                conn = await self._handshake(reader, writer, dialed, remote[0])
            if conn is None:
                return False
            self._gossip()
            while True:
                msg = await read_frame(reader, self.timing.dead_after, conn.channel.open if conn.channel else None)
                conn.last_received = time.time()
                if msg["type"] == "gossip":
                    self._received(conn.peer, parse_gossip(msg))
                elif msg["type"] != "heartbeat":
                    raise WireError(f"unexpected {msg['type']} message after the handshake")
        except AuthRefused as exc:
            log.warning("gossip %s: refused connection %s %s:%s: %s", self.name,
                        "to" if dialed else "from", remote[0], remote[1], exc)
        except (WireError, ValueError) as exc:
            log.warning("gossip %s: dropped %s: bad frame: %s", self.name, conn.peer if conn else remote[0], exc)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            log.info("gossip %s: connection %s ended: %s", self.name, conn.peer if conn else remote[0],
                     type(exc).__name__)
        finally:
            if conn is not None:  # before the close: whoever sees it closed sees it gone
                self._dropped(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return conn is not None

    async def _handshake(self, reader, writer, dialed: str | None, remote_ip: str) -> Connection | None:
        port = self.address[1] if self.address else PORT
        hs = Handshake(self.name, port, self._credential, initiator=dialed is not None)
        writer.write(frame(hs.hello().encode()))
        hello = parse_hello(await read_frame(reader, self.timing.handshake_timeout))
        if hello.name == self.name:  # a seed list that names this peer too: not an error
            if dialed:
                self._own_addresses.add(dialed)
            log.info("gossip %s: a connection %s itself (a seed naming this peer, or a name used twice)",
                     self.name, "to" if dialed else "from")
            return None
        proof = hs.on_hello(hello)
        if proof is not None:
            writer.write(frame(encode_proof(proof)))
            hs.on_proof(parse_proof(await read_frame(reader, self.timing.handshake_timeout)))
        if not self._may_connect(hello.name):
            log.info("gossip %s: not connecting to %s (may_connect)", self.name, hello.name)
            return None
        address = dialed or topo.format_address(remote_ip, hello.port)
        channel = Channel(hs.secret, self.name, hello.name) if hs.secret is not None else None
        conn = Connection(hello.name, address, dialed is not None, writer, channel, hs.secret)
        with self._lock:
            old = self._connections.get(hello.name)
            if old is not None and topo.keeps_first(self.name, hello.name, old.outbound, conn.outbound):
                return None
            self._connections[hello.name] = conn
            self._seen[hello.name] = time.time()
            self._publish()
        if old is not None:
            old.writer.close()
        self._backoff.pop(f"peer:{hello.name}", None)
        log.info("gossip %s: connected %s %s (%s)", self.name, "to" if dialed else "from", hello.name, address)
        self._changed(Change(topology=True))
        return conn

    def _dropped(self, conn: Connection) -> None:
        with self._lock:
            if self._connections.get(conn.peer) is not conn:
                return
            del self._connections[conn.peer]
            self._publish()
        self._changed(Change(topology=True))

    def _received(self, peer: str, gossip: Gossip) -> None:
        now = time.time()
        with self._lock:
            merged, changed = topo.merge(self._topology, gossip.topology)
            self._topology = merged
            if self.name in changed:  # our former self left a higher version: publish above it
                self._publish()
            for name in changed:
                self._seen[name] = now
            keys = self._docs.merge(gossip.docs, _now_ms())
        if gossip.ring is not NO_RING and self._merge_ring is not None:
            try:
                self._merge_ring(gossip.ring)
            except Exception as exc:  # noqa: BLE001 - the ring's owner validates and refuses
                log.warning("gossip %s: ring from %s refused: %s", self.name, peer, exc)
        if changed - {self.name} or keys:
            self._changed(Change(topology=bool(changed), keys=tuple(keys)))

    def _changed(self, change: Change) -> None:
        self._wake.set()
        if self._on_change is not None:
            try:
                self._on_change(change)
            except Exception:  # noqa: BLE001 - the caller's code must not stop the gossip
                log.exception("gossip %s: on_change failed", self.name)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

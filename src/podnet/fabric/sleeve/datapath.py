"""The sleeve's data path: TUN <-> UDP (port 6784), one AEAD message per super-packet.

Design (measured in bench/sleeve_throughput.py):
- The TUN gives GSO super-packets (up to 62 KiB) with a virtio-net header (tun.py);
  each is looked up once (routes.py: inner destination prefix -> peer), sealed once
  (crypto.py, AES-256-GCM in C, the GIL released), cut into chunks of one underlay
  packet each and sent with ONE sendmsg as UDP GSO (chunks.py, frame.py); the far
  socket reads them back coalesced (UDP_GRO), and the far sleeve writes the message
  to its TUN with the same vnet header: the kernel delivers the super-packet to a
  local socket whole, or segments it on the way to a pod. Python runs a few hundred
  bytecodes per 62 KiB, none per byte. (`udp_gso=False`: one datagram per message,
  fragmented by IP: ~25% more CPU per Gbit/s.)
- One transmit worker per TUN queue (the kernel keeps a flow on one queue) and as
  many receive workers on the one UDP socket; blocking syscalls and the AEAD release
  the GIL, so the workers overlap. Sockets and fds are non-blocking and a worker
  polls only when its queue is empty, with a stop pipe in the same poll.
- Keys per peer and direction (PeerRoute.tx_key/rx_key, from crypto.derive_sleeve_keys
  over the gossip session's secret). A peer with an rx key is only heard encrypted;
  its counters pass a replay window. Counters start at the wall clock in ns, so a
  restarted forwarder that is handed the same key never reuses a nonce.
- Open to WireGuard: a kernel that has it would replace this process with a wg
  device per node keyed from the same session (the route table stays the fabric's).

Run it in the namespace where its TUN belongs:
    python -m podnet.fabric.sleeve.forwarder --tun pnsl0 --address 10.200.0.1/24 \
        --listen 192.0.2.1:6784 --name node0 --peer node1=192.0.2.2 \
        --route 10.200.0.2/32=node1 [--secret-file FILE] [--stats FILE]
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from podnet.fabric.sleeve import chunks, frame
from podnet.fabric.sleeve.crypto import Opener, ReplayWindow, Sealer
from podnet.fabric.sleeve.routes import RouteTable, inner_destination
from podnet.fabric.sleeve.tun import TunOptions, close_tun, open_tun, set_up

PORT = 6784
READ_BYTES = 65536 + frame.VNET_HDR_BYTES
RECV_BYTES = 256 * 1024  # a GRO-coalesced read of many chunks
BURST = 16  # messages one direction handles before the other gets a turn
UDP_SEGMENT = 103
UDP_GRO = 104
SOCKET_BUFFER = 16 * 1024 * 1024
ZERO_VNET = bytes(frame.VNET_HDR_BYTES)


@dataclass(frozen=True)
class PeerRoute:
    """Where a peer's sleeve listens, and the keys of this session (None: plain)."""

    underlay_ip: str
    port: int = PORT
    tx_key: bytes | None = None
    rx_key: bytes | None = None


class _Peer:
    """A peer's runtime state: address, AEAD objects, counter, replay window."""

    def __init__(self, name: str, route: PeerRoute) -> None:
        self.name = name
        self.route = route
        self.address = (route.underlay_ip, route.port)
        self.sealer = Sealer(route.tx_key) if route.tx_key is not None else None
        self.opener = Opener(route.rx_key) if route.rx_key is not None else None
        self.counter = itertools.count(time.time_ns())
        self.window = ReplayWindow()
        self.gso_size = path_segment(self.address)
        self.gso_cmsg = [(socket.SOL_UDP, UDP_SEGMENT, self.gso_size.to_bytes(2, sys.byteorder))]

    def segment(self, udp_gso: bool) -> int:
        """Chunk size: one underlay packet with UDP GSO, else one whole datagram (the
        kernel fragments it)."""
        return self.gso_size if udp_gso else frame.MAX_DATAGRAM


def parse_address(text: str, default_port: int = PORT) -> tuple[str, int]:
    """'HOST', 'HOST:PORT' or '[V6]:PORT' -> (host, port)."""
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1..65535")
    return host, port


class Sleeve:
    """A TUN device and a UDP socket, forwarding between them until stop()."""

    def __init__(
        self,
        tun_name: str,
        listen_addr: tuple[str, int] | str,
        peers: Mapping[str, PeerRoute],
        *,
        local: str = "",
        routes: Mapping[str, str] | None = None,
        addresses: tuple[str, ...] = (),
        options: TunOptions | None = None,
        udp_gso: bool = True,
        threads_per_queue: int = 1,
    ) -> None:
        self.tun_name = tun_name
        self.listen = parse_address(listen_addr) if isinstance(listen_addr, str) else listen_addr
        self.local = local or f"{self.listen[0]}:{self.listen[1]}"
        self.sender = frame.sender_id(self.local)
        self.addresses = addresses
        self.options = options or TunOptions()
        self.udp_gso = udp_gso
        if threads_per_queue not in (1, 2):
            raise ValueError(f"threads_per_queue {threads_per_queue}: must be 1 or 2")
        self.threads_per_queue = threads_per_queue
        self.routes = RouteTable(routes)
        self.counts: Counter[str] = Counter()
        self._peers: dict[str, _Peer] = {}
        self._by_sender: dict[bytes, _Peer] = {}
        self.set_peers(peers)
        self._fds: list[int] = []
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop_r, self._stop_w = -1, -1
        self._stopping = False

    # -- the fabric's handles ---------------------------------------------------------
    def set_peers(self, peers: Mapping[str, PeerRoute]) -> None:
        """Replace the peers; one whose route and keys are unchanged keeps its counter
        and replay window."""
        current = dict(self._peers)
        fresh = {
            name: current[name] if name in current and current[name].route == route
            else _Peer(name, route)
            for name, route in peers.items()
        }
        self._peers = fresh
        self._by_sender = {frame.sender_id(name): peer for name, peer in fresh.items()}

    def set_routes(self, routes: Mapping[str, str]) -> None:
        self.routes.replace(routes)

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> None:
        self._fds = open_tun(self.tun_name, self.options)
        try:
            set_up(self.tun_name, list(self.addresses), self.options)
            family = socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock = sock
            for option, fallback in ((33, socket.SO_SNDBUF), (32, socket.SO_RCVBUF)):
                try:  # SO_SNDBUFFORCE/SO_RCVBUFFORCE (root), else what the limit allows
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, fallback, SOCKET_BUFFER)
            sock.bind(self.listen)
            if self.udp_gso:
                sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
            sock.setblocking(False)
            for fd in self._fds:
                os.set_blocking(fd, False)
            self._stop_r, self._stop_w = os.pipe()
        except Exception:
            self._close()
            raise
        for index, fd in enumerate(self._fds):
            if self.threads_per_queue == 2:
                self._spawn(f"sleeve-tx{index}", self._run_one, self._tx_loop(fd), fd)
                self._spawn(f"sleeve-rx{index}", self._run_one, self._rx_loop(fd), self._sock.fileno())
            else:
                self._spawn(f"sleeve-q{index}", self._run_both, fd)

    def stop(self) -> None:
        self._stopping = True
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        for thread in self._threads:
            thread.join(5)
        self._threads = []
        self._close()

    def _close(self) -> None:
        close_tun(self._fds)
        self._fds = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1

    def _spawn(self, name: str, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poller(self, *fds: int) -> select.poll:
        poller = select.poll()
        for fd in (*fds, self._stop_r):
            poller.register(fd, select.POLLIN)
        return poller

    def _run_one(self, loop: Iterator[bool], fd: int) -> None:
        """One direction on its own thread: wait only when its queue is empty."""
        wait = self._poller(fd).poll
        for busy in loop:
            if not busy:
                wait()

    def _run_both(self, tun_fd: int) -> None:
        """Both directions on one thread: no GIL hand-over between them. Each runs
        until its queue is empty or for BURST messages, then the other gets a turn."""
        sock_fd = self._sock.fileno()
        loops = {tun_fd: self._tx_loop(tun_fd), sock_fd: self._rx_loop(tun_fd)}
        wait = self._poller(tun_fd, sock_fd).poll
        while not self._stopping:
            for fd, _ in wait():
                loop = loops.get(fd)
                if loop is not None:
                    next(loop, None)

    # -- the two directions -----------------------------------------------------------
    def _tx_loop(self, tun_fd: int) -> Iterator[bool]:
        """TUN -> peer: read a (super-)packet, pick the peer, seal once, send its chunks
        in one UDP GSO sendmsg (or one datagram the kernel fragments)."""
        read, counts, sock = os.read, self.counts, self._sock
        burst = 0
        offset = frame.VNET_HDR_BYTES if self.options.offload else 0
        base_flags = frame.VNET if self.options.offload else 0
        sender, udp_gso = self.sender, self.udp_gso
        while not self._stopping:
            burst += 1
            if burst % BURST == 0:
                yield True
            try:
                packet = read(tun_fd, READ_BYTES)
            except BlockingIOError:
                yield False
                continue
            except OSError:
                counts["tun_read_errors"] += 1
                continue
            destination = inner_destination(packet, offset)
            peer = self._peers.get(self.routes.lookup(destination) or "") if destination else None
            if peer is None:
                counts["tx_no_route"] += 1
                continue
            counter = next(peer.counter)
            flags = base_flags
            if peer.sealer is not None:
                flags |= frame.ENCRYPTED
                count = chunks.chunk_count(len(packet) + frame.TAG_BYTES, peer.segment(udp_gso))
                ad = frame.pack_header(flags, sender, counter, 0, count)
                packet = peer.sealer.seal(counter, ad, packet)
            try:
                batches = chunks.split(packet, flags, sender, counter, peer.segment(udp_gso))
                for batch in batches:
                    sock.sendmsg(batch, peer.gso_cmsg if udp_gso else (), 0, peer.address)
            except (OSError, chunks.ChunkError):
                counts["tx_send_errors"] += 1
                continue
            counts["tx_messages"] += 1

    def _rx_loop(self, tun_fd: int) -> Iterator[bool]:
        """Peer -> TUN: reassemble, authenticate, refuse replays, write back with the
        vnet header."""
        sock, counts, write, writev = self._sock, self.counts, os.write, os.writev
        burst = 0
        buffer = bytearray(RECV_BYTES)
        view = memoryview(buffer)
        offload = self.options.offload
        reassembler = chunks.Reassembler()
        ancillary = socket.CMSG_SPACE(4)
        while not self._stopping:
            burst += 1
            if burst % BURST == 0:
                yield True
            try:
                size, anc, _, _ = sock.recvmsg_into((buffer,), ancillary)
            except BlockingIOError:
                yield False
                continue
            except OSError:
                counts["rx_recv_errors"] += 1
                continue
            segment = _gro_segment(anc) or size
            for header, ad, message in reassembler.feed(view[:size], segment):
                payload = self._accept(header, ad, message)
                if payload is None:
                    continue
                try:
                    if offload == payload[1]:
                        write(tun_fd, payload[0])
                    elif offload:
                        writev(tun_fd, (ZERO_VNET, payload[0]))
                    elif payload[0][1] == 0:  # vnet header without GSO: strip it
                        write(tun_fd, payload[0][frame.VNET_HDR_BYTES :])
                    else:
                        counts["rx_gso_without_offload"] += 1
                        continue
                except OSError:
                    counts["tun_write_errors"] += 1
                    continue
                counts["rx_messages"] += 1
            counts["rx_malformed"] = reassembler.malformed

    def _accept(self, header: frame.FrameHeader, ad: bytes, message):
        """(payload, has vnet header) of a valid message, else None (counted)."""
        counts = self.counts
        try:
            frame.check_message(header.flags, len(message))
        except frame.FrameError:
            counts["rx_short"] += 1
            return None
        peer = self._by_sender.get(header.sender)
        if peer is None:
            counts["rx_unknown_sender"] += 1
            return None
        if peer.opener is None:
            if header.encrypted:
                counts["rx_no_key"] += 1
                return None
            return message, header.vnet
        if not header.encrypted:
            counts["rx_plain_refused"] += 1
            return None
        if not peer.window.check(header.counter):
            counts["rx_replayed"] += 1
            return None
        plain = peer.opener.open(header.counter, ad, message)
        if plain is None:
            counts["rx_forged"] += 1
            return None
        if not peer.window.accept(header.counter):
            counts["rx_replayed"] += 1
            return None
        return plain, header.vnet


def _gro_segment(ancillary) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    return 0


def path_segment(address: tuple[str, int]) -> int:
    """The largest UDP payload one underlay packet to `address` carries unfragmented:
    the route's MTU (IP_MTU of a connected socket) less the IP and UDP headers."""
    v6 = ":" in address[0]
    probe = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(address)
        mtu = probe.getsockopt(socket.IPPROTO_IPV6, 24) if v6 else probe.getsockopt(
            socket.IPPROTO_IP, 14
        )  # IPV6_MTU, IP_MTU
    except OSError:
        mtu = 1500
    finally:
        probe.close()
    return max(mtu, 1280) - (48 if v6 else 28)

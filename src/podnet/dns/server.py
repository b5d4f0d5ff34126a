"""A small DNS server (UDP and TCP on one address:port) answering from a callable.

Why its own server and not dnslib.server: podnet needs a clean, prompt stop (the agent
starts and stops one per network as networks come and go), bounded work per query and
per client, and a policy for names that are not ours that never sends traffic
anywhere unless an upstream was configured explicitly. What to answer is decided by
dns/answer.py (sans-io, where the rules are written down); this module only moves bytes
between the sockets, the answerer and the upstream.

Threads: one selector loop per server (UDP datagrams and TCP accepts), a bounded
number of TCP connection threads, and a small pool for upstream relays; each query is
one dictionary lookup, so the loop never waits on anything but the network.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from podnet.dns.answer import DEFAULT_TTL, Answerer, Lookup, Relay, Reply, single_label

log = logging.getLogger("podnet.dns")

MAX_TCP_CLIENTS = 16
MAX_TCP_QUERIES = 64  # per connection, then it is closed
TCP_IDLE = 5.0  # seconds a TCP client may stay silent
TCP_LIFETIME = 30.0  # and stay connected at all: a trickling client cannot hold a slot
UPSTREAM_TIMEOUT = 2.0
MAX_RELAYS = 32  # upstream queries in flight; beyond that SERVFAIL at once
UDP_BURST = 64  # datagrams read per wake-up before TCP accepts get a turn


def parse_upstream(text: str) -> tuple[str, int]:
    """`IP`, `IP:PORT`, `[IPv6]:PORT` or a bare IPv6 -> (ip, port)."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad upstream {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)  # raises ValueError for anything but an address
    if not 0 < port < 65536:
        raise ValueError(f"bad upstream port in {text!r}")
    return host, port


def format_endpoint(host: str, port: int) -> str:
    """The inverse of parse_upstream: `IP:PORT`, `[IPv6]:PORT`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DnsServer:
    """One server on one address and port; `start()` binds both transports (raising
    OSError, e.g. EADDRNOTAVAIL while the address is not on any interface)."""

    def __init__(
        self,
        address: str,
        port: int,
        lookup: Lookup,
        *,
        is_local: Callable[[str], bool] = single_label,
        allow: Callable[[str], bool] | None = None,
        upstream: tuple[str, int] | None = None,
        ttl: int = DEFAULT_TTL,
        label: str = "",
        netns_path: str | None = None,
    ) -> None:
        self.address = str(ipaddress.ip_address(address))
        self.netns_path = netns_path  # bind there (a pod's namespace); the sockets stay in it
        self.family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        self.port = port
        self.upstream = upstream
        self.label = label or f"{self.address}:{port}"
        self.answers = Answerer(
            lookup, is_local=is_local, allow=allow, relays=upstream is not None, ttl=ttl, label=self.label,
        )
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._loop: threading.Thread | None = None
        self._clients: set[socket.socket] = set()
        self._client_threads: set[threading.Thread] = set()
        self._clients_lock = threading.Lock()
        self._client_slots = threading.BoundedSemaphore(MAX_TCP_CLIENTS)
        self._relay_slots = threading.BoundedSemaphore(MAX_RELAYS)
        self._relays = ThreadPoolExecutor(max_workers=4, thread_name_prefix="podnet-dns-relay")

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> DnsServer:
        self._bind()
        self._loop = threading.Thread(target=self._serve, name=f"podnet-dns {self.label}", daemon=True)
        self._loop.start()
        return self

    def _bind(self) -> None:
        """UDP and TCP on the same port, in `netns_path` if given (a socket belongs to the
        namespace it was made in, whatever thread later uses it)."""
        if self.netns_path is None:
            self._bind_here()
            return
        from podnet.kernel import netns

        fd = netns.open_netns(self.netns_path)
        try:
            with netns.entered(fd):
                self._bind_here()
        finally:
            os.close(fd)

    def _bind_here(self) -> None:
        """UDP and TCP on the same port; port 0 picks a free one for both."""
        for _attempt in range(20):
            udp = socket.socket(self.family, socket.SOCK_DGRAM)
            tcp = socket.socket(self.family, socket.SOCK_STREAM)
            try:
                if self.family == socket.AF_INET6:
                    for sock in (udp, tcp):
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only
                udp.bind((self.address, self.port))
                port = udp.getsockname()[1]
                try:
                    tcp.bind((self.address, port))
                except OSError:
                    if self.port:
                        raise
                    udp.close()
                    tcp.close()
                    continue  # the free UDP port was taken for TCP: pick another
                tcp.listen(MAX_TCP_CLIENTS)
            except BaseException:
                udp.close()
                tcp.close()
                raise
            udp.setblocking(False)
            tcp.setblocking(False)
            self._udp, self._tcp, self.port = udp, tcp, port
            return
        raise OSError(f"no port free for both UDP and TCP on {self.address}")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving and release the port; safe to call twice or before start."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._loop is not None and self._loop is not threading.current_thread():
            self._loop.join(timeout)
        with self._clients_lock:
            clients, threads = list(self._clients), list(self._client_threads)
        for conn in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout)
        self._relays.shutdown(wait=False, cancel_futures=True)
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.is_alive()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop -------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._udp, selectors.EVENT_READ, self._on_udp)
            sel.register(self._tcp, selectors.EVENT_READ, self._on_accept)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            while not self._stopping.is_set():
                for key, _events in sel.select(timeout=1.0):
                    if key.data is None or self._stopping.is_set():
                        return
                    try:
                        key.data()
                    except Exception:  # noqa: BLE001 - one bad packet must not stop a network's DNS
                        self._count("errors")
                        log.exception("dns %s: unexpected error", self.label)

    def _on_udp(self) -> None:
        assert self._udp is not None
        for _ in range(UDP_BURST):
            try:
                data, peer = self._udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP errors surfacing as ECONNREFUSED: nothing to answer
            outcome = self.answers.answer(data, peer[0], udp=True)
            if isinstance(outcome, Relay):
                self._relay_udp(outcome, peer)
            else:
                self._send_udp(self._settle(outcome), peer)

    def _send_udp(self, payload: bytes | None, peer: object) -> None:
        assert self._udp is not None
        if payload is None:
            return
        with contextlib.suppress(OSError):
            self._udp.sendto(payload, peer)

    def _on_accept(self) -> None:
        assert self._tcp is not None
        try:
            conn, peer = self._tcp.accept()
        except (BlockingIOError, InterruptedError, OSError):
            return
        if not self._client_slots.acquire(blocking=False):
            conn.close()  # too many clients: they retry; the server stays responsive
            self._count("tcp_rejected")
            return
        thread = threading.Thread(target=self._tcp_client, args=(conn, peer[0]), name=f"podnet-dns-tcp {self.label}", daemon=True)
        with self._clients_lock:
            self._clients.add(conn)
            self._client_threads.add(thread)
        thread.start()

    def _tcp_client(self, conn: socket.socket, client: str) -> None:
        try:
            deadline = time.monotonic() + TCP_LIFETIME
            for _ in range(MAX_TCP_QUERIES):
                if self._stopping.is_set():
                    break
                data = _recv_message(conn, deadline, TCP_IDLE)
                if data is None:
                    break
                outcome = self.answers.answer(data, client, udp=False)
                payload = self._relay(outcome, tcp=True) if isinstance(outcome, Relay) else self._settle(outcome)
                if payload is None:
                    break  # undecodable: a stream cannot resynchronise, close it
                conn.sendall(struct.pack("!H", len(payload)) + payload)
        except (OSError, ValueError):
            pass  # timeouts, resets, shutdown by stop(): the client's problem
        except Exception:  # noqa: BLE001 - never let a client thread die noisily
            self._count("errors")
            log.exception("dns %s: unexpected error on a TCP client", self.label)
        finally:
            conn.close()
            with self._clients_lock:
                self._clients.discard(conn)
                self._client_threads.discard(threading.current_thread())
            self._client_slots.release()

    def _settle(self, reply: Reply) -> bytes | None:
        """Count what the answerer asks to count; the bytes to send."""
        for what in reply.counted:
            self._count(what)
        return reply.payload

    # -- upstream -----------------------------------------------------------------------

    def _relay_udp(self, relay: Relay, peer: object) -> None:
        """Hand a relay to the pool, or SERVFAIL at once when too many are in flight."""
        if not self._relay_slots.acquire(blocking=False):
            self._count("relay_busy")
            self._send_udp(self._settle(self.answers.servfail(relay.request, udp=True)), peer)
            return

        def work() -> None:
            try:
                self._send_udp(self._relay(relay, tcp=False), peer)
            finally:
                self._relay_slots.release()

        try:
            self._relays.submit(work)
        except RuntimeError:  # the pool was shut down by stop()
            self._relay_slots.release()

    def _relay(self, relay: Relay, *, tcp: bool) -> bytes | None:
        """The upstream's answer to the client's own bytes, or SERVFAIL."""
        assert self.upstream is not None
        self._count("forwarded")
        host, port = self.upstream
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        data, answer = relay.data, None
        try:
            with socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as sock:
                deadline = time.monotonic() + UPSTREAM_TIMEOUT
                sock.settimeout(UPSTREAM_TIMEOUT)
                sock.connect((host, port))
                if tcp:
                    sock.sendall(struct.pack("!H", len(data)) + data)
                    answer = _recv_message(sock, deadline, UPSTREAM_TIMEOUT)
                else:
                    sock.send(data)
                    answer = sock.recv(65535)
        except Exception:  # noqa: BLE001 - timeouts, refusals: the answerer makes it SERVFAIL
            answer = None
        return self._settle(self.answers.relayed(relay.request, answer, udp=not tcp))

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1


def _recv_exact(sock: socket.socket, size: int, deadline: float, idle: float) -> bytes | None:
    """`size` bytes, None at EOF; TimeoutError after `idle` silent seconds or at the
    `deadline` (time.monotonic()), whichever comes first."""
    chunks, left = [], size
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        sock.settimeout(min(idle, remaining))
        chunk = sock.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv_message(sock: socket.socket, deadline: float, idle: float) -> bytes | None:
    """One length-prefixed DNS message from a stream (RFC 1035 4.2.2), None at EOF."""
    prefix = _recv_exact(sock, 2, deadline, idle)
    if prefix is None:
        return None
    (length,) = struct.unpack("!H", prefix)
    return _recv_exact(sock, length, deadline, idle) if length else b""

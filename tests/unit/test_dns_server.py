"""dns/server.py on loopback (127.0.0.x, free high ports; no root): what the sockets
add to dns/answer.py (tested there without them): UDP and TCP, truncation by transport,
the client's address, forwarding only when configured, limits, clean stop, and garbage
that never kills the server."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

import pytest
from dnslib import EDNS0, RCODE, DNSRecord
from test_dns_answer import SHARED, VALID, ZONE, addresses

from podnet.dns import server as server_mod
from podnet.dns.server import DnsServer, format_endpoint, parse_upstream

ADDR = "127.0.53.1"
UPSTREAM_ADDR = "127.0.53.2"


def query(port: int, name: str, qtype: str = "A", *, tcp: bool = False, addr: str = ADDR,
          edns: int | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    reply = DNSRecord.parse(q.send(addr, port, tcp=tcp, timeout=3))
    assert reply.header.id == q.header.id
    return reply


@pytest.fixture
def dns():
    with DnsServer(ADDR, 0, ZONE.lookup, is_local=ZONE.is_local) as srv:
        yield srv


def test_tcp_with_several_queries_on_one_connection(dns) -> None:
    assert addresses(query(dns.port, "db", tcp=True)) == ["10.89.1.3"]
    with socket.create_connection((ADDR, dns.port), timeout=3) as sock:
        for name, expected in (("web", "10.89.1.2"), ("db", "10.89.1.3"), ("www", "10.89.1.2")):
            q = DNSRecord.question(name).pack()
            sock.sendall(struct.pack("!H", len(q)) + q)
            (length,) = struct.unpack("!H", recv_exact(sock, 2))
            assert addresses(DNSRecord.parse(recv_exact(sock, length))) == [expected]


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def test_large_answers_are_truncated_over_udp_and_complete_over_tcp() -> None:
    with DnsServer(ADDR, 0, SHARED.lookup, is_local=SHARED.is_local) as srv:
        udp = query(srv.port, "shared")
        assert udp.header.tc == 1 and udp.rr == []
        assert len(query(srv.port, "shared", tcp=True).rr) == 40
        assert len(query(srv.port, "shared", edns=4096).rr) == 40
        assert srv.stats["truncated"] == 1


def test_clients_outside_allow_are_refused() -> None:
    allowed = {"127.0.53.7"}
    with DnsServer(ADDR, 0, ZONE.lookup, is_local=ZONE.is_local, allow=allowed.__contains__) as srv:
        assert query(srv.port, "web").header.rcode == RCODE.REFUSED  # from 127.0.0.1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.53.7", 0))
            sock.settimeout(3)
            sock.sendto(DNSRecord.question("web").pack(), (ADDR, srv.port))
            assert addresses(DNSRecord.parse(sock.recv(4096))) == ["10.89.1.2"]
        assert srv.stats["foreign_client"] == 1


# -- forwarding ------------------------------------------------------------------------


@pytest.fixture
def upstream():
    """A fake upstream on loopback that knows one foreign name."""
    seen: list[str] = []

    def lookup(qname: str, qtype: str) -> list[str] | None:
        seen.append(qname)
        return ["192.0.2.80"] if qname == "example.com." else None

    with DnsServer(UPSTREAM_ADDR, 0, lookup, is_local=lambda q: True) as srv:
        srv.seen = seen
        yield srv


def test_foreign_names_go_to_an_explicit_upstream_local_ones_never(upstream) -> None:
    with DnsServer(ADDR, 0, ZONE.lookup, is_local=ZONE.is_local, upstream=(UPSTREAM_ADDR, upstream.port)) as srv:
        assert addresses(query(srv.port, "example.com")) == ["192.0.2.80"]  # relayed untouched
        assert addresses(query(srv.port, "example.com", tcp=True)) == ["192.0.2.80"]
        assert query(srv.port, "other.org").header.rcode == RCODE.NXDOMAIN  # upstream's answer
        assert query(srv.port, "nope").header.rcode == RCODE.NXDOMAIN
        assert query(srv.port, "nope.appnet").header.rcode == RCODE.NXDOMAIN
        local = query(srv.port, "web")
        assert addresses(local) == ["10.89.1.2"] and local.header.ra == 1
        assert upstream.seen == ["example.com.", "example.com.", "other.org."]
        assert srv.stats["forwarded"] == 3


def test_a_silent_upstream_gives_servfail(monkeypatch) -> None:
    monkeypatch.setattr(server_mod, "UPSTREAM_TIMEOUT", 0.3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((UPSTREAM_ADDR, 0))
        upstream = ("127.0.53.2", silent.getsockname()[1])
        with DnsServer(ADDR, 0, ZONE.lookup, is_local=ZONE.is_local, upstream=upstream) as srv:
            assert query(srv.port, "example.com").header.rcode == RCODE.SERVFAIL
            assert srv.stats["upstream_failed"] == 1


def test_parse_upstream() -> None:
    assert parse_upstream("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_upstream("192.0.2.1:5353") == ("192.0.2.1", 5353)
    assert parse_upstream("2001:db8::1") == ("2001:db8::1", 53)
    assert parse_upstream("[2001:db8::1]:54") == ("2001:db8::1", 54)
    assert format_endpoint("2001:db8::1", 54) == "[2001:db8::1]:54"
    for bad in ("dns.google", "1.2.3.4:0", "1.2.3.4:x", "[::1]x", ""):
        with pytest.raises(ValueError):
            parse_upstream(bad)


# -- life cycle ---------------------------------------------------------------------------


def test_stop_is_prompt_releases_the_port_and_ends_threads() -> None:
    before = set(threading.enumerate())
    srv = DnsServer(ADDR, 0, ZONE.lookup).start()
    port = srv.port
    idle = socket.create_connection((ADDR, port), timeout=3)  # an idle TCP client
    time.sleep(0.1)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 1.5
    srv.stop()  # twice is fine
    assert not srv.running
    assert idle.recv(10) == b""  # the server closed it
    idle.close()
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive() and t.name.startswith("podnet-dns")]
    with DnsServer(ADDR, port, ZONE.lookup) as again:  # the same port binds again at once
        assert addresses(query(again.port, "db")) == ["10.89.1.3"]


def test_an_address_that_is_not_local_fails_to_bind() -> None:
    srv = DnsServer("192.0.2.53", 0, ZONE.lookup)
    with pytest.raises(OSError):
        srv.start()
    srv.stop()


def test_too_many_tcp_clients_are_turned_away_while_udp_still_answers(dns) -> None:
    clients = [socket.create_connection((ADDR, dns.port), timeout=3) for _ in range(server_mod.MAX_TCP_CLIENTS + 4)]
    try:
        time.sleep(0.2)
        assert addresses(query(dns.port, "web")) == ["10.89.1.2"]
        assert dns.stats["tcp_rejected"] >= 1
    finally:
        for c in clients:
            c.close()


# -- garbage ---------------------------------------------------------------------------

GARBAGE = [
    b"\x01",
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff",
    DNSRecord.question("web").reply().pack(),
    VALID[0][:-3],
    VALID[3] + bytes(range(16)),
    bytes(range(256)) * 2,
]


def raw(srv: DnsServer, packet: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (ADDR, srv.port))
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None


def test_garbage_gets_formerr_or_nothing_and_never_kills_the_server(dns) -> None:
    """The rules are fuzzed in test_dns_answer.py; here what the sockets make of them."""
    assert raw(dns, GARBAGE[2], timeout=0.3) is None  # a response is never answered
    assert raw(dns, GARBAGE[0], timeout=0.3) is None
    formerr = raw(dns, GARBAGE[1])
    assert formerr is not None
    reply = DNSRecord.parse(formerr)
    assert reply.header.id == 0x1234 and reply.header.rcode == RCODE.FORMERR
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in GARBAGE:
            sock.sendto(data, (ADDR, dns.port))
    with socket.create_connection((ADDR, dns.port), timeout=3) as sock:
        for data in GARBAGE:
            with contextlib.suppress(OSError):  # the server may close a garbage stream
                sock.sendall(struct.pack("!H", len(data)) + data)
    assert addresses(query(dns.port, "web")) == ["10.89.1.2"]
    assert dns.running


def test_silent_and_trickling_tcp_clients_are_cut_off(monkeypatch) -> None:
    monkeypatch.setattr(server_mod, "TCP_IDLE", 0.3)
    monkeypatch.setattr(server_mod, "TCP_LIFETIME", 0.8)
    with DnsServer(ADDR, 0, ZONE.lookup) as srv:
        with socket.create_connection((ADDR, srv.port), timeout=3) as silent:
            started = time.monotonic()
            assert silent.recv(10) == b""
            assert time.monotonic() - started < 1.5
        with socket.create_connection((ADDR, srv.port), timeout=3) as trickle:
            started = time.monotonic()
            q = DNSRecord.question("web").pack()
            message = struct.pack("!H", len(q)) + q
            with contextlib.suppress(OSError):
                for byte in message:  # one byte per 0.2 s: never idle, never done
                    trickle.sendall(bytes([byte]))
                    time.sleep(0.2)
            assert time.monotonic() - started < 2.5
            with contextlib.suppress(OSError):
                assert trickle.recv(10) == b""

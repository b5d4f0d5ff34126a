"""dns/server.py on loopback (127.0.0.x, free high ports; no root): answers, rcodes,
TCP, truncation, the client check, forwarding only when configured, clean stop, and
hypothesis fuzzing (random or mutated packets never kill the server)."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time

import pytest
from dnslib import CLASS, EDNS0, OPCODE, QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnet.dns import server as server_mod
from podnet.dns.records import build_zone
from podnet.dns.server import DnsServer, format_endpoint, parse_upstream, single_label

ADDR = "127.0.53.1"
UPSTREAM_ADDR = "127.0.53.2"
NET = {
    "name": "appnet",
    "subnets": [{"subnet": "10.89.1.0/24", "gateway": "10.89.1.1"}, {"subnet": "fd00::/64", "gateway": "fd00::1"}],
}


def container(name: str, ip: str, **extra) -> dict:
    return {"name": name, "network": "appnet", "network_mode": "bridge", "state": "running",
            "ips": [ip], "aliases": [], **extra}


ZONE = build_zone(NET, [
    container("web", "10.89.1.2/24", aliases=["www"], ips=["10.89.1.2/24", "fd00::2/64"]),
    container("db", "10.89.1.3/24"),
])


def query(port: int, name: str, qtype: str = "A", *, tcp: bool = False, addr: str = ADDR,
          edns: int | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    reply = DNSRecord.parse(q.send(addr, port, tcp=tcp, timeout=3))
    assert reply.header.id == q.header.id
    return reply


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


@pytest.fixture
def dns():
    with DnsServer(ADDR, 0, ZONE.lookup, is_local=ZONE.is_local) as srv:
        yield srv


def test_a_aaaa_and_alias(dns) -> None:
    reply = query(dns.port, "web")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert addresses(reply) == ["10.89.1.2"]
    assert reply.rr[0].ttl == server_mod.DEFAULT_TTL
    assert addresses(query(dns.port, "web", "AAAA")) == ["fd00::2"]
    assert addresses(query(dns.port, "www.appnet", "A")) == ["10.89.1.2"]
    assert sorted(addresses(query(dns.port, "web", "ANY"))) == ["10.89.1.2", "fd00::2"]


def test_case_insensitive_and_the_question_case_is_echoed(dns) -> None:
    reply = query(dns.port, "WwW.AppNet")
    assert addresses(reply) == ["10.89.1.2"]
    assert str(reply.rr[0].rname) == "WwW.AppNet."


def test_nodata_for_a_known_name_without_that_type(dns) -> None:
    reply = query(dns.port, "db", "AAAA")
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


def test_ptr(dns) -> None:
    reply = query(dns.port, "3.1.89.10.in-addr.arpa", "PTR")
    assert [str(rr.rdata) for rr in reply.rr] == ["db.appnet."]


def test_unknown_local_names_are_nxdomain(dns) -> None:
    for name in ("nope", "nope.appnet", "99.1.89.10.in-addr.arpa"):
        qtype = "PTR" if name.endswith("arpa") else "A"
        reply = query(dns.port, name, qtype)
        assert reply.header.rcode == RCODE.NXDOMAIN, name
        assert reply.header.aa == 1


def test_foreign_names_are_refused_without_an_upstream(dns) -> None:
    started = time.monotonic()
    reply = query(dns.port, "example.com")
    assert reply.header.rcode == RCODE.REFUSED
    assert reply.header.ra == 0  # we do not recurse: nothing was sent anywhere
    assert time.monotonic() - started < 1
    assert dns.stats["refused"] == 1 and dns.stats["forwarded"] == 0


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
    many = [container(f"r{i}", f"10.89.1.{10 + i}/24", aliases=["shared"]) for i in range(40)]
    zone = build_zone(NET, many)
    with DnsServer(ADDR, 0, zone.lookup, is_local=zone.is_local) as srv:
        udp = query(srv.port, "shared")
        assert udp.header.tc == 1 and udp.rr == []
        assert str(udp.q.qname) == "shared."
        assert len(query(srv.port, "shared", tcp=True).rr) == 40
        edns = query(srv.port, "shared", edns=4096)  # 40 A records fit in 1232 bytes
        assert edns.header.tc == 0 and len(edns.rr) == 40
        assert any(rr.rtype == QTYPE.OPT for rr in edns.ar)


def test_answer_count_is_capped() -> None:
    with DnsServer(ADDR, 0, lambda q, t: [f"10.0.{i // 250}.{i % 250}" for i in range(5000)]) as srv:
        assert len(query(srv.port, "x", tcp=True).rr) == server_mod.MAX_ANSWERS


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


def test_a_failing_lookup_is_servfail_and_the_server_lives_on() -> None:
    def lookup(qname: str, qtype: str) -> list[str] | None:
        if qname.startswith("boom"):
            raise RuntimeError("store on fire")
        return ["10.1.1.1"]

    with DnsServer(ADDR, 0, lookup) as srv:
        assert query(srv.port, "boom").header.rcode == RCODE.SERVFAIL
        assert addresses(query(srv.port, "fine")) == ["10.1.1.1"]


def raw(srv: DnsServer, packet: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (ADDR, srv.port))
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None


def test_rcodes_for_odd_but_well_formed_packets(dns) -> None:
    notify = DNSRecord(DNSHeader(opcode=OPCODE.NOTIFY), q=DNSQuestion("web"))
    assert DNSRecord.parse(raw(dns, notify.pack())).header.rcode == RCODE.NOTIMP
    two = DNSRecord(questions=[DNSQuestion("web"), DNSQuestion("db")])
    assert DNSRecord.parse(raw(dns, two.pack())).header.rcode == RCODE.FORMERR
    none = DNSRecord()
    assert DNSRecord.parse(raw(dns, none.pack())).header.rcode == RCODE.FORMERR
    chaos = DNSRecord(q=DNSQuestion("version.bind", QTYPE.TXT, CLASS.CH))
    assert DNSRecord.parse(raw(dns, chaos.pack())).header.rcode == RCODE.REFUSED
    axfr = DNSRecord.question("appnet", "AXFR")
    assert DNSRecord.parse(raw(dns, axfr.pack())).header.rcode == RCODE.REFUSED
    odd = DNSRecord(q=DNSQuestion([b"we.b"]))  # a dot inside a label is never ours
    assert DNSRecord.parse(raw(dns, odd.pack())).header.rcode == RCODE.REFUSED


def test_responses_are_never_answered_and_garbage_gets_formerr_or_nothing(dns) -> None:
    response = DNSRecord.question("web").reply()
    assert raw(dns, response.pack(), timeout=0.3) is None
    assert raw(dns, b"\x01", timeout=0.3) is None
    formerr = raw(dns, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff")
    assert formerr is not None
    reply = DNSRecord.parse(formerr)
    assert reply.header.id == 0x1234 and reply.header.rcode == RCODE.FORMERR
    assert addresses(query(dns.port, "web")) == ["10.89.1.2"]


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


def test_single_label() -> None:
    assert single_label("web") and single_label("web.")
    assert not single_label("web.appnet") and not single_label(".") and not single_label("")


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


# -- fuzzing -----------------------------------------------------------------------------

FUZZ = settings(
    max_examples=int(os.environ.get("PODNET_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
VALID = [
    DNSRecord.question("web").pack(),
    DNSRecord.question("nope.appnet", "AAAA").pack(),
    DNSRecord.question("2.1.89.10.in-addr.arpa", "PTR").pack(),
    (lambda q: (q.add_ar(EDNS0(udp_len=4096)), q.pack())[1])(DNSRecord.question("example.com")),
]


@st.composite
def mutated(draw) -> bytes:
    """A valid query with a few bytes flipped, cut or appended: reaches deeper into the
    parser than random bytes, which mostly fail at the header."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "add"]))
        if op == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        else:
            data += draw(st.binary(max_size=16))
    return bytes(data)


packets = st.binary(max_size=600) | mutated()

@FUZZ
@given(packets)
def test_decide_never_raises(data: bytes) -> None:
    srv = DnsServer(ADDR, 0, ZONE.lookup, is_local=ZONE.is_local, allow=ZONE.allows)
    for udp in (True, False):
        decision = srv.decide(data, "10.89.1.50")
        payload = srv.wire(decision, udp=udp)
        assert payload is None or DNSRecord.parse(payload).header.qr == 1
        if udp and payload is not None:
            assert len(payload) <= server_mod.EDNS_PAYLOAD
    srv.stop()


@pytest.fixture(scope="module")
def live():
    with DnsServer(ADDR, 0, ZONE.lookup, is_local=ZONE.is_local) as srv:
        yield srv


@FUZZ
@given(st.lists(packets, min_size=1, max_size=5), st.booleans())
def test_random_packets_never_kill_the_server(live, batch: list[bytes], tcp: bool) -> None:
    if tcp:
        with socket.create_connection((ADDR, live.port), timeout=3) as sock:
            for data in batch:
                with contextlib.suppress(OSError):  # the server may close a garbage stream
                    sock.sendall(struct.pack("!H", len(data)) + data)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for data in batch:
                sock.sendto(data, (ADDR, live.port))
    assert addresses(query(live.port, "web")) == ["10.89.1.2"]
    assert live.running



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

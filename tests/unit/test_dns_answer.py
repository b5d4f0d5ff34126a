"""dns/answer.py, sans-io (no sockets, no root): answers, rcodes, truncation, the client
check, the relay decision and what comes back from an upstream, and hypothesis fuzzing
(random or mutated packets never make it raise or answer a response)."""

from __future__ import annotations

import os

import pytest
from dnslib import CLASS, EDNS0, OPCODE, QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnet.dns import answer as answer_mod
from podnet.dns.answer import Answerer, Relay, Reply, single_label
from podnet.dns.records import build_zone
from podnet.model.container import ContainerRecord
from podnet.model.network import NetworkRecord

NET = NetworkRecord.from_json({
    "name": "appnet", "id": "appnet",
    "subnets": [{"subnet": "10.89.1.0/24", "gateway": "10.89.1.1"}, {"subnet": "fd00::/64", "gateway": "fd00::1"}],
})


def container(name: str, ip: str, **extra) -> ContainerRecord:
    """A running container of appnet; its ID too short to be an alias."""
    return ContainerRecord.from_json({"name": name, "id": name, "network": "appnet", "network_mode": "bridge",
                                      "state": "running", "ips": [ip], "aliases": [], **extra})


ZONE = build_zone(NET, [
    container("web", "10.89.1.2/24", aliases=["www"], ips=["10.89.1.2/24", "fd00::2/64"]),
    container("db", "10.89.1.3/24"),
])
SHARED = build_zone(NET, [container(f"r{i}", f"10.89.1.{10 + i}/24", aliases=["shared"]) for i in range(40)])


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


def reply_to(answerer: Answerer, packet: bytes, *, udp: bool = True, client: str | None = "10.89.1.50") -> Reply:
    outcome = answerer.answer(packet, client, udp=udp)
    assert isinstance(outcome, Reply), outcome
    return outcome


def ask(answerer: Answerer, name: str, qtype: str = "A", *, udp: bool = True, edns: int | None = None,
        client: str | None = "10.89.1.50") -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    payload = reply_to(answerer, q.pack(), udp=udp, client=client).payload
    assert payload is not None
    reply = DNSRecord.parse(payload)
    assert reply.header.id == q.header.id and reply.header.qr == 1
    return reply


def rcode(answerer: Answerer, record: DNSRecord) -> int:
    payload = reply_to(answerer, record.pack()).payload
    assert payload is not None
    return DNSRecord.parse(payload).header.rcode


@pytest.fixture
def dns() -> Answerer:
    return Answerer(ZONE.lookup, is_local=ZONE.is_local)


def test_a_aaaa_and_alias(dns) -> None:
    reply = ask(dns, "web")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert addresses(reply) == ["10.89.1.2"]
    assert reply.rr[0].ttl == answer_mod.DEFAULT_TTL
    assert addresses(ask(dns, "web", "AAAA")) == ["fd00::2"]
    assert addresses(ask(dns, "www.appnet", "A")) == ["10.89.1.2"]
    assert sorted(addresses(ask(dns, "web", "ANY"))) == ["10.89.1.2", "fd00::2"]
    assert reply_to(dns, DNSRecord.question("web").pack()).counted == ("answered",)


def test_case_insensitive_and_the_question_case_is_echoed(dns) -> None:
    reply = ask(dns, "WwW.AppNet")
    assert addresses(reply) == ["10.89.1.2"]
    assert str(reply.rr[0].rname) == "WwW.AppNet."


def test_nodata_for_a_known_name_without_that_type(dns) -> None:
    reply = ask(dns, "db", "AAAA")
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


def test_ptr(dns) -> None:
    reply = ask(dns, "3.1.89.10.in-addr.arpa", "PTR")
    assert [str(rr.rdata) for rr in reply.rr] == ["db.appnet."]


def test_unknown_local_names_are_nxdomain(dns) -> None:
    for name in ("nope", "nope.appnet", "99.1.89.10.in-addr.arpa"):
        qtype = "PTR" if name.endswith("arpa") else "A"
        reply = ask(dns, name, qtype)
        assert reply.header.rcode == RCODE.NXDOMAIN, name
        assert reply.header.aa == 1
    assert reply_to(dns, DNSRecord.question("nope").pack()).counted == ("nxdomain",)


def test_foreign_names_are_refused_without_an_upstream(dns) -> None:
    reply = ask(dns, "example.com")
    assert reply.header.rcode == RCODE.REFUSED
    assert reply.header.ra == 0  # we do not recurse: nothing is sent anywhere
    assert reply_to(dns, DNSRecord.question("example.com").pack()).counted == ("refused",)


def test_foreign_names_are_relayed_untouched_with_an_upstream_local_ones_never() -> None:
    dns = Answerer(ZONE.lookup, is_local=ZONE.is_local, relays=True)
    query = DNSRecord.question("example.com").pack()
    outcome = dns.answer(query, "10.89.1.50", udp=True)
    assert isinstance(outcome, Relay) and outcome.data == query
    assert ask(dns, "nope").header.rcode == RCODE.NXDOMAIN
    assert ask(dns, "nope.appnet").header.rcode == RCODE.NXDOMAIN
    local = ask(dns, "web")
    assert addresses(local) == ["10.89.1.2"] and local.header.ra == 1


def test_an_upstream_answer_is_passed_on_only_when_it_answers_the_query() -> None:
    dns = Answerer(ZONE.lookup, is_local=ZONE.is_local, relays=True)
    query = DNSRecord.question("example.com")
    relay = dns.answer(query.pack(), "10.89.1.50", udp=True)
    assert isinstance(relay, Relay)
    good = query.reply()
    assert dns.relayed(relay.request, good.pack(), udp=True) == Reply(good.pack())
    other = DNSRecord(DNSHeader(id=(query.header.id + 1) % 65536, qr=1), q=query.q)
    for bad in (None, b"", b"\x01garbage", query.pack(), other.pack()):
        failed = dns.relayed(relay.request, bad, udp=True)
        assert failed.counted == ("upstream_failed",)
        assert failed.payload is not None
        reply = DNSRecord.parse(failed.payload)
        assert reply.header.rcode == RCODE.SERVFAIL and reply.header.id == query.header.id
    busy = DNSRecord.parse(dns.servfail(relay.request, udp=True).payload or b"")
    assert busy.header.rcode == RCODE.SERVFAIL and busy.header.ra == 1


def test_large_answers_are_truncated_over_udp_and_complete_over_tcp() -> None:
    dns = Answerer(SHARED.lookup, is_local=SHARED.is_local)
    udp = ask(dns, "shared")
    assert udp.header.tc == 1 and udp.rr == []
    assert str(udp.q.qname) == "shared."
    assert reply_to(dns, DNSRecord.question("shared").pack()).counted == ("answered", "truncated")
    assert len(ask(dns, "shared", udp=False).rr) == 40
    edns = ask(dns, "shared", edns=4096)  # 40 A records fit in 1232 bytes
    assert edns.header.tc == 0 and len(edns.rr) == 40
    assert any(rr.rtype == QTYPE.OPT for rr in edns.ar)
    assert ask(dns, "shared", edns=100).header.tc == 1  # never below 512 bytes, still too small


def test_answer_count_is_capped() -> None:
    dns = Answerer(lambda q, t: [f"10.0.{i // 250}.{i % 250}" for i in range(5000)])
    assert len(ask(dns, "x", udp=False).rr) == answer_mod.MAX_ANSWERS


def test_clients_outside_allow_are_refused() -> None:
    allowed = {"127.0.53.7"}
    dns = Answerer(ZONE.lookup, is_local=ZONE.is_local, allow=allowed.__contains__)
    assert ask(dns, "web", client="127.0.0.1").header.rcode == RCODE.REFUSED
    assert ask(dns, "web", client=None).header.rcode == RCODE.REFUSED
    assert addresses(ask(dns, "web", client="127.0.53.7")) == ["10.89.1.2"]
    assert reply_to(dns, DNSRecord.question("web").pack(), client="127.0.0.1").counted == ("foreign_client",)

    def broken(client: str) -> bool:
        raise RuntimeError("no zone")

    assert ask(Answerer(ZONE.lookup, allow=broken), "web").header.rcode == RCODE.REFUSED  # fails closed


def test_a_failing_lookup_is_servfail_and_the_next_query_is_answered() -> None:
    def lookup(qname: str, qtype: str) -> list[str] | None:
        if qname.startswith("boom"):
            raise RuntimeError("store on fire")
        return ["10.1.1.1"]

    dns = Answerer(lookup)
    assert ask(dns, "boom").header.rcode == RCODE.SERVFAIL
    assert addresses(ask(dns, "fine")) == ["10.1.1.1"]


def test_rcodes_for_odd_but_well_formed_packets(dns) -> None:
    assert rcode(dns, DNSRecord(DNSHeader(opcode=OPCODE.NOTIFY), q=DNSQuestion("web"))) == RCODE.NOTIMP
    assert rcode(dns, DNSRecord(questions=[DNSQuestion("web"), DNSQuestion("db")])) == RCODE.FORMERR
    assert rcode(dns, DNSRecord()) == RCODE.FORMERR
    assert rcode(dns, DNSRecord(q=DNSQuestion("version.bind", QTYPE.TXT, CLASS.CH))) == RCODE.REFUSED
    assert rcode(dns, DNSRecord.question("appnet", "AXFR")) == RCODE.REFUSED
    assert rcode(dns, DNSRecord(q=DNSQuestion([b"we.b"]))) == RCODE.REFUSED  # a dot inside a label is never ours


def test_responses_are_never_answered_and_garbage_gets_formerr_or_nothing(dns) -> None:
    assert reply_to(dns, DNSRecord.question("web").reply().pack()) == Reply(None)
    assert reply_to(dns, b"\x01") == Reply(None, ("malformed",))
    formerr = reply_to(dns, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff")
    assert formerr.payload is not None and formerr.counted == ("malformed",)
    reply = DNSRecord.parse(formerr.payload)
    assert reply.header.id == 0x1234 and reply.header.rcode == RCODE.FORMERR


def test_single_label() -> None:
    assert single_label("web") and single_label("web.")
    assert not single_label("web.appnet") and not single_label(".") and not single_label("")


# -- fuzzing -----------------------------------------------------------------------------

FUZZ = settings(
    max_examples=int(os.environ.get("PODNET_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
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
FUZZED = [
    Answerer(ZONE.lookup, is_local=ZONE.is_local, allow=ZONE.allows),
    Answerer(ZONE.lookup, is_local=ZONE.is_local, allow=ZONE.allows, relays=True),
]


@FUZZ
@given(packets, st.sampled_from(FUZZED))
def test_answer_never_raises(data: bytes, dns: Answerer) -> None:
    for udp in (True, False):
        outcome = dns.answer(data, "10.89.1.50", udp=udp)
        if isinstance(outcome, Relay):
            assert dns.relays and outcome.data == data
            continue
        payload = outcome.payload
        assert payload is None or DNSRecord.parse(payload).header.qr == 1
        if udp and payload is not None:
            assert len(payload) <= answer_mod.EDNS_PAYLOAD

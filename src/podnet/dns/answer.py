"""What a DNS server answers, sans-io: the bytes of one query in, the bytes to send
back (or "ask the upstream") out.

Why apart from the server: every rule about an answer lives here with no socket, no
thread and no clock (in the style of mitmproxy's sans-io layers), so it is tested and
fuzzed by calling a function; dns/server.py only moves bytes and calls it. dnslib does
all the parsing and building; nothing here reads DNS wire format by hand.

Answers, for a query of one question in class IN:
- `lookup(qname, qtype)` returns a list: NOERROR, authoritative, one record per item
  (A/AAAA for addresses, PTR for names; an empty list is NODATA), with the server's
  TTL unless the item is a `Timed` that brings its own;
- it returns None and `is_local(qname)` is true: NXDOMAIN (an unknown container name
  never leaks to an upstream);
- otherwise the query is relayed untouched to the upstream if one is configured, else
  REFUSED (RFC 1035's "will not do this for you": stub resolvers move on at once).
Clients outside `allow` get REFUSED: a network's gateway is an address of the host, so
containers of every other network can reach it through their own gateway; without the
check they could resolve this network's names by asking it directly.

Malformed packets get FORMERR when a header could be read, else nothing; responses
are never answered (no loops, no reflection). Replies over UDP respect 512 bytes or the
client's EDNS size and set TC beyond it, so the client retries over TCP.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

from dnslib import AAAA, CLASS, EDNS0, OPCODE, PTR, QTYPE, RCODE, RR, SRV, A, DNSHeader, DNSRecord
from dnslib.buffer import Buffer

log = logging.getLogger("podnet.dns")

Lookup = Callable[[str, str], list[str] | None]

DEFAULT_TTL = 10  # short: a stopped container's name must drop out of caches quickly
UDP_PAYLOAD = 512  # without EDNS (RFC 1035)
EDNS_PAYLOAD = 1232  # what we advertise and the most we send (DNS flag day 2020)
MAX_ANSWERS = 64  # one shared alias held by very many containers stays one packet
ZONE_TRANSFERS = frozenset({"AXFR", "IXFR"})


class Timed(str):
    """An answer value with a TTL of its own (seconds), for zones whose records carry
    one (the gossip DNS, dns/gossip_zone.py); a plain str gets the server's TTL."""

    ttl: int

    def __new__(cls, value: str, ttl: int) -> Timed:
        made = super().__new__(cls, value)
        made.ttl = ttl
        return made


def single_label(qname: str) -> bool:
    """The default local zone: bare names such as `web` (Docker's container names)."""
    name = qname[:-1] if qname.endswith(".") else qname
    return bool(name) and "." not in name


@dataclass(frozen=True)
class Reply:
    """Send `payload` to the client (None: send nothing, and over TCP close the stream,
    which cannot resynchronise) and add `counted` to the server's counters."""

    payload: bytes | None
    counted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Relay:
    """Send the client's own bytes `data` to the upstream and hand what comes back (or
    None) to `Answerer.relayed` with `request`, the query as parsed."""

    data: bytes
    request: DNSRecord


@dataclass(frozen=True)
class _Decided:
    """A reply still to be packed for its transport."""

    reply: DNSRecord
    request: DNSRecord
    counted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answerer:
    """The answers of one server: its zone (`lookup`, `is_local`), its clients
    (`allow`) and whether an upstream takes the names that are not ours (`relays`)."""

    lookup: Lookup
    _: KW_ONLY
    is_local: Callable[[str], bool] = single_label
    allow: Callable[[str], bool] | None = None
    relays: bool = False
    ttl: int = DEFAULT_TTL
    label: str = ""

    def answer(self, data: bytes, client: str | None, *, udp: bool) -> Reply | Relay:
        """One packet from `client` -> what to send back. Never raises: anything dnslib
        cannot parse is FORMERR (if a header could be read) or nothing."""
        decided = self._decide(data, client)
        if not isinstance(decided, _Decided):
            return decided
        return self._packed(decided.reply, decided.request, udp=udp, counted=decided.counted)

    def servfail(self, request: DNSRecord, *, udp: bool, counted: tuple[str, ...] = ()) -> Reply:
        """SERVFAIL for a relay that could not be made or failed."""
        return self._packed(self._reply(request, RCODE.SERVFAIL), request, udp=udp, counted=counted)

    def relayed(self, request: DNSRecord, answer: bytes | None, *, udp: bool) -> Reply:
        """The upstream's answer untouched if it is a response to `request`, else
        SERVFAIL (timeouts, refusals, garbage from upstream)."""
        if answer is not None:
            try:
                parsed = DNSRecord.parse(answer)
            except Exception:  # noqa: BLE001 - dnslib raises several kinds on garbage
                parsed = None
            if parsed is not None and parsed.header.qr and parsed.header.id == request.header.id:
                return Reply(answer)
        return self.servfail(request, udp=udp, counted=("upstream_failed",))

    # -- deciding -----------------------------------------------------------------------

    def _decide(self, data: bytes, client: str | None) -> Reply | Relay | _Decided:
        try:
            request = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - dnslib raises several kinds on garbage
            formerr = _formerr(data)
            return Reply(None if formerr is None else bytes(formerr.pack()), ("malformed",))
        header = request.header
        if header.qr:
            return Reply(None)  # a response, not a query: never answer it
        if header.opcode != OPCODE.QUERY:
            return self._rcode(request, RCODE.NOTIMP)
        if len(request.questions) != 1:
            return self._rcode(request, RCODE.FORMERR)
        if not self._allowed(client):
            return self._rcode(request, RCODE.REFUSED, counted=("foreign_client",))
        question = request.questions[0]
        qtype = QTYPE.get(question.qtype, f"TYPE{question.qtype}")
        qname = _qname(question.qname.label)
        if question.qclass not in (CLASS.IN, 255) or qname is None or qtype in ZONE_TRANSFERS:
            return self._rcode(request, RCODE.REFUSED)
        try:
            found = self.lookup(qname, qtype)
            local = found is not None or self.is_local(qname)
        except Exception:  # noqa: BLE001 - a failing lookup is SERVFAIL, not a dead server
            log.exception("dns %s: lookup of %s %s failed", self.label, qname, qtype)
            return self._rcode(request, RCODE.SERVFAIL)
        if found is not None:
            reply = self._reply(request, RCODE.NOERROR, authoritative=True)
            for value in found[:MAX_ANSWERS]:
                record = _record(question.qname, qtype, value, getattr(value, "ttl", self.ttl))
                if record is not None:
                    reply.add_answer(record)
            return _Decided(reply, request, ("answered",))
        if local:
            return self._rcode(request, RCODE.NXDOMAIN, authoritative=True, counted=("nxdomain",))
        if self.relays:
            return Relay(data, request)
        return self._rcode(request, RCODE.REFUSED, counted=("refused",))

    def _allowed(self, client: str | None) -> bool:
        if self.allow is None:
            return True
        try:
            return client is not None and self.allow(client)
        except Exception:  # noqa: BLE001 - fail closed
            log.exception("dns %s: allow(%s) failed", self.label, client)
            return False

    def _reply(self, request: DNSRecord, rcode: int, authoritative: bool = False) -> DNSRecord:
        header = DNSHeader(
            id=request.header.id, qr=1, opcode=request.header.opcode, aa=int(authoritative),
            rd=request.header.rd, ra=int(self.relays), rcode=rcode,
        )
        return DNSRecord(header, questions=list(request.questions))

    def _rcode(
        self, request: DNSRecord, rcode: int, authoritative: bool = False, counted: tuple[str, ...] = (),
    ) -> _Decided:
        return _Decided(self._reply(request, rcode, authoritative), request, counted)

    # -- packing ------------------------------------------------------------------------

    def _packed(self, reply: DNSRecord, request: DNSRecord, *, udp: bool, counted: tuple[str, ...]) -> Reply:
        """Wire form; over UDP within the client's limit, else header, question and TC."""
        opt = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
        extra = [EDNS0(udp_len=EDNS_PAYLOAD)] if opt is not None else []
        limit = 65535
        if udp:
            limit = max(UDP_PAYLOAD, min(opt.rclass, EDNS_PAYLOAD)) if opt is not None else UDP_PAYLOAD
        payload = bytes(DNSRecord(reply.header, list(reply.questions), list(reply.rr), ar=extra).pack())
        if len(payload) <= limit:
            return Reply(payload, counted)
        header = DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1)
        return Reply(bytes(DNSRecord(header, list(reply.questions), ar=extra).pack()), (*counted, "truncated"))


def _formerr(data: bytes) -> DNSRecord | None:
    """FORMERR for a query whose header is readable, nothing otherwise."""
    try:
        header = DNSHeader.parse(Buffer(data))
    except Exception:  # noqa: BLE001 - fewer than 12 bytes, or worse
        return None
    if header.qr:
        return None
    return DNSRecord(DNSHeader(id=header.id, qr=1, opcode=header.opcode, rcode=RCODE.FORMERR))


def _qname(labels: tuple[bytes, ...]) -> str | None:
    """The name as text, or None when it holds bytes no podnet name can have (a dot
    inside a label, non-ASCII, controls): such a name is never ours."""
    try:
        text = [label.decode("ascii") for label in labels]
    except UnicodeDecodeError:
        return None
    if any("." in label or not label.isprintable() for label in text):
        return None
    return ".".join(text) + "."


def _record(qname: object, qtype: str, value: str, ttl: int) -> RR | None:
    """One answer: an address becomes A or AAAA (by its family), a name a PTR, and
    "priority weight port target" an SRV."""
    if qtype == "PTR":
        return RR(qname, QTYPE.PTR, ttl=ttl, rdata=PTR(value.rstrip(".") + "."))
    if qtype == "SRV":
        return _srv(qname, value, ttl)
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if address.version == 4:
        return RR(qname, QTYPE.A, ttl=ttl, rdata=A(str(address)))
    return RR(qname, QTYPE.AAAA, ttl=ttl, rdata=AAAA(str(address)))


def _srv(qname: object, value: str, ttl: int) -> RR | None:
    try:
        priority, weight, port, target = value.split()
        numbers = [int(priority), int(weight), int(port)]
    except ValueError:
        return None
    if not all(0 <= n < 65536 for n in numbers):
        return None
    return RR(qname, QTYPE.SRV, ttl=ttl, rdata=SRV(*numbers, target=target.rstrip(".") + "."))

"""The gossip DNS zone (`--fabric gossip`, issue 14): `<hostname>.<domain>` from this
node's `meta/gossip/dns/<hostname>/<ip>` keys (pure).

Weave's DNS semantics: names are flat (one label under the domain, `web.podnet.local`),
a name held by several pods answers all their addresses (A and AAAA by family), and
each record keeps the TTL its node published. agent/gossip_dns.py writes the keys from
the gossip documents after `check_entry` (the one place a name, an address and a TTL
are judged), and the cluster DNS (agent/cluster_dns_service.py) feeds them here change
by change; a key that does not hold is checked again and left out, named in `problems`.

Names under the domain that no key holds are NXDOMAIN (authoritative), the domain
itself exists without data. `combined` puts this zone beside the cluster's in one
server: the lookups are unioned, a name is local if either zone says so.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from podnet import keys
from podnet.addresses import address
from podnet.dns.answer import Timed
from podnet.dns.records import fold
from podnet.errors import InvalidConfig
from podnet.schema.fields import DNS_LABEL_RE
from podnet.store.base import DELETE, Entry, Event

MAX_TTL = 86400


@dataclass(frozen=True)
class GossipName:
    """One record: `hostname` (a folded DNS label) holds `ip` (canonical text)."""

    hostname: str
    ip: str
    ttl: int
    node: str

    @property
    def value(self) -> dict[str, object]:
        """What this node's store keeps for it (the key holds hostname and ip)."""
        return {"ttl": self.ttl, "node": self.node}


def valid_hostname(text: object) -> bool:
    """A DNS-1123 label once folded: the one label a gossip name has under the domain."""
    return isinstance(text, str) and DNS_LABEL_RE.fullmatch(fold(text)) is not None


def check_entry(hostname: object, ip: object, value: object) -> GossipName:
    """A record from outside (a gossip document, a stored key), or ValueError naming
    the field that does not hold."""
    if not valid_hostname(hostname):
        raise ValueError(f"hostname {str(hostname)[:80]!r} is not a DNS label")
    assert isinstance(hostname, str)
    try:
        parsed = address(ip, "ip")
    except InvalidConfig as exc:
        raise ValueError(exc.msg) from None
    if not isinstance(value, dict):
        raise ValueError("value is not an object")
    ttl = value.get("ttl")
    if type(ttl) is not int or not 1 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl {ttl!r} is not an integer of 1 to {MAX_TTL}")
    node = value.get("node")
    if not isinstance(node, str) or not node:
        raise ValueError(f"node {node!r} is not a name")
    return GossipName(fold(hostname), str(parsed), ttl, node)


def parse_key(key: str, text: str | None) -> GossipName:
    """A `meta/gossip/dns/` key and its JSON text -> the record (ValueError if bad)."""
    try:
        hostname, ip = keys.parse_gossip_dns(key)
    except InvalidConfig as exc:
        raise ValueError(exc.msg) from None
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        raise ValueError("value is not JSON") from None
    return check_entry(hostname, ip, value)


class GossipZone:
    """The names of one gossip domain; `lookup` and `is_local` follow dns/answer.py's
    contract and run in the server's thread while the watch thread feeds changes."""

    def __init__(self, domain: str) -> None:
        self.domain = fold(domain)
        self._records: dict[str, dict[str, int]] = {}  # folded name -> ip -> ttl
        self._by_key: dict[str, tuple[str, str]] = {}  # store key -> (name, ip)
        self._bad: dict[str, str] = {}  # store key -> why it was left out
        self._lock = threading.Lock()

    # -- from the store

    def relist(self, entries: Iterable[Entry]) -> None:
        """Everything again from a listing of `keys.GOSSIP_DNS`."""
        with self._lock:
            self._records.clear()
            self._by_key.clear()
            self._bad.clear()
            for entry in entries:
                self._set(entry.key, entry.value)

    def feed(self, events: Iterable[Event]) -> int:
        """The watch's events (any prefix: others are ignored); how many were ours."""
        ours = 0
        with self._lock:
            for event in events:
                if event.key.startswith(keys.GOSSIP_DNS):
                    ours += 1
                    self._set(event.key, None if event.kind == DELETE else event.value)
        return ours

    def _set(self, key: str, text: str | None) -> None:
        old = self._by_key.pop(key, None)
        self._bad.pop(key, None)
        if old is not None:
            name, ip = old
            held = self._records[name]
            held.pop(ip, None)
            if not held:
                del self._records[name]
        if text is None:
            return
        try:
            record = parse_key(key, text)
        except ValueError as exc:
            self._bad[key] = str(exc)
            return
        name = f"{record.hostname}.{self.domain}"
        self._records.setdefault(name, {})[record.ip] = record.ttl
        self._by_key[key] = (name, record.ip)

    # -- answering

    def lookup(self, qname: str, qtype: str) -> list[str] | None:
        name = fold(qname)
        with self._lock:
            held = self._records.get(name)
            if held is None:
                return [] if name == self.domain else None
            items = sorted(held.items())
        if qtype in ("A", "AAAA", "ANY"):
            return [Timed(ip, ttl) for ip, ttl in items
                    if qtype == "ANY" or (qtype == "AAAA") == (":" in ip)]
        return []

    def is_local(self, qname: str) -> bool:
        name = fold(qname)
        return bool(self.domain) and (name == self.domain or name.endswith("." + self.domain))

    # -- diagnostics

    def names(self) -> int:
        with self._lock:
            return len(self._records)

    def records(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(held) for name, held in self._records.items()}

    def problems(self) -> list[str]:
        with self._lock:
            return [f"{key}: {why}" for key, why in sorted(self._bad.items())]


class Zone(Protocol):
    def lookup(self, qname: str, qtype: str) -> list[str] | None: ...

    def is_local(self, qname: str) -> bool: ...


@dataclass(frozen=True)
class CombinedZone:
    """Several zones served by one DnsServer: the first that knows a name answers it,
    and a name any of them calls local is NXDOMAIN when none knows it."""

    zones: tuple[Zone, ...]

    def lookup(self, qname: str, qtype: str) -> list[str] | None:
        for zone in self.zones:
            found = zone.lookup(qname, qtype)
            if found is not None:
                return found
        return None

    def is_local(self, qname: str) -> bool:
        return any(zone.is_local(qname) for zone in self.zones)

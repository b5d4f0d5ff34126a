"""Port mappings and the nft rule model: validation in, `nft -j` listings read back (pure).

Decisions:
- hostIP follows the CNI portmap plugin: an IPv4 hostIP maps only IPv4, an IPv6 one
  only IPv6; unset maps both; an unspecified address (0.0.0.0, ::) means "every local
  address of that family" (`fib daddr type local`).
- Two mappings (or two attachments) clash when they claim the same host port of the
  same family and protocol on intersecting host addresses: only the first DNAT rule
  could ever match, so the second is refused rather than silently dead.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from podnet import addresses
from podnet.cni.gokeys import go_field
from podnet.errors import InvalidConfig, PortInUse
from podnet.naming import is_ifname

FAMILIES = ("ip", "ip6")
PROTOCOLS = ("tcp", "udp", "sctp")
NAT_CHAINS = ("prerouting", "output", "postrouting")
LOOPBACK4 = ipaddress.IPv4Network("127.0.0.0/8")
# The `ip podnet` input chain holds one rule, no attachment's: 127.0.0.0/8 is dropped
# unless it came in on lo or was DNATed (render.py says why). Found by its comment.
GUARD_CHAIN = "input"
GUARD_COMMENT = "podnet loopback guard: 127.0.0.0/8 only from lo or DNATed"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_ATTACH_RE = re.compile(r"[0-9a-f]{12}")
_COMMENT_RE = re.compile(r"podnet:([0-9a-f]{8}):([0-9a-f]{12})")


# ---------------------------------------------------------------- input model


@dataclass(frozen=True)
class PortMapping:
    """One validated CNI port mapping. host_ip None: any address of either family."""

    host_port: int
    container_port: int
    protocol: str
    host_ip: IPAddress | None = None

    def applies_to(self, family: str) -> bool:
        return self.host_ip is None or family_of(self.host_ip) == family

    def host_match(self) -> IPAddress | None:
        """The address to match, or None for "every local address"."""
        if self.host_ip is None or self.host_ip.is_unspecified:
            return None
        return self.host_ip

    def needs_localnet(self) -> bool:
        """Whether 127.0.0.0/8 on the host reaches this mapping (IPv4 only)."""
        if self.host_ip is None:
            return True
        if self.host_ip.version != 4:
            return False
        return self.host_ip.is_unspecified or self.host_ip in LOOPBACK4


def family_of(
    addr: IPAddress | IPInterface | ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> str:
    """The nft family ("ip" or "ip6") of an address, interface or network."""
    return "ip" if addr.version == 4 else "ip6"


def _port(pm: dict, key: str) -> int:
    value = go_field(pm, key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidConfig(f"port mapping {key} must be an integer 1..65535, got {value!r}")
    return value


def parse_port_mappings(raw: Iterable[Any]) -> list[PortMapping]:
    """Validate CNI `portMappings` entries; InvalidConfig on bad input or clashes.

    Exact duplicates collapse into one; two entries that claim the same host port for
    different targets are rejected, since only the first DNAT rule could ever match.
    """
    if raw is None:
        return []
    if isinstance(raw, dict | str) or not isinstance(raw, Iterable):
        raise InvalidConfig("portMappings must be a list")
    out: list[PortMapping] = []
    for pm in raw:
        if not isinstance(pm, dict):
            raise InvalidConfig(f"port mapping must be an object, got {pm!r}")
        # Keys match as in the reference portmap plugin (Go: case-insensitively), so
        # containerd's {"HostPort": .., "ContainerPort": .., "Protocol": .., "HostIP": ..}.
        proto = go_field(pm, "protocol", "tcp")
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            raise InvalidConfig(f"port mapping protocol must be tcp, udp or sctp, got {proto!r}")
        host_ip_raw = go_field(pm, "hostIP")
        host_ip: IPAddress | None = None
        if host_ip_raw not in (None, ""):
            host_ip = addresses.address(host_ip_raw, "port mapping hostIP")  # no scope ID
        mapping = PortMapping(
            _port(pm, "hostPort"), _port(pm, "containerPort"), proto.lower(), host_ip
        )
        if mapping in out:
            continue
        for fam in FAMILIES:
            if not mapping.applies_to(fam):
                continue
            for prev in out:
                if prev.applies_to(fam) and _overlap(map_key(prev, fam), map_key(mapping, fam)):
                    raise InvalidConfig(
                        f"port mappings {_key_text(map_key(prev, fam))} and "
                        f"{_key_text(map_key(mapping, fam))} claim the same host port"
                    )
        out.append(mapping)
    return out


def check_attach_id(attach: str) -> None:
    """The attachment id goes into every rule's comment: 12 lowercase hex digits only."""
    if not isinstance(attach, str) or not _ATTACH_RE.fullmatch(attach):
        raise InvalidConfig(f"attach_id must be 12 lowercase hex digits, got {attach!r}")


def check_ifname(name: str) -> None:
    """An interface name safe to put in a /proc path (kernel rules: <=15 bytes, no / : ws)."""
    if not is_ifname(name):
        raise InvalidConfig(f"invalid host interface name {name!r}")


# A DNAT key: (family, host address or None for every local address, port, protocol).
MapKey = tuple[str, str | None, int, str]


def map_key(pm: PortMapping, family: str) -> MapKey:
    match = pm.host_match()
    return (family, str(match) if match is not None else None, pm.host_port, pm.protocol)


def _overlap(a: MapKey, b: MapKey) -> bool:
    """Same family, port and protocol, and the host addresses intersect."""
    return a[0] == b[0] and a[2:] == b[2:] and (a[1] is None or b[1] is None or a[1] == b[1])


def _key_text(k: MapKey) -> str:
    host = k[1] or ("0.0.0.0" if k[0] == "ip" else "::")
    return f"{k[3]} {'[' + host + ']' if ':' in host else host}:{k[2]}"


# ---------------------------------------------------------------- rule model


@dataclass(frozen=True)
class Rule:
    """One rule to install: its family, chain and nft body (without the comment)."""

    family: str
    chain: str
    body: str
    key: MapKey | None = None  # set on prerouting DNAT rules, for conflict checks

    def describe(self) -> str:
        return f"{self.family} {self.chain} {self.body}"


@dataclass(frozen=True)
class InstalledRule:
    """A podnet rule found in the kernel, parsed from `nft -j list table`."""

    family: str
    chain: str
    handle: int
    net_id: str
    attach_id: str
    body: str
    key: MapKey | None = None

    def describe(self) -> str:
        return f"{self.family} {self.chain} {self.body}"


def check_conflicts(rules: list[Rule], others: list[InstalledRule]) -> None:
    """PortInUse when a DNAT rule to install overlaps one another attachment holds."""
    for r in rules:
        if r.key is None:
            continue
        for o in others:
            if o.key is not None and _overlap(r.key, o.key):
                raise PortInUse(
                    f"host port {_key_text(r.key)} is already mapped "
                    f"(as {_key_text(o.key)}) by attachment {o.attach_id} "
                    f"of network {o.net_id}"
                )


# ---------------------------------------------------------------- reading tables back


def _left_text(left: Any) -> str:
    if isinstance(left, dict):
        if "payload" in left:
            p = left["payload"]
            return f"{p.get('protocol')} {p.get('field')}"
        if "fib" in left:
            f = left["fib"]
            return f"fib {' . '.join(f.get('flags', []))} {f.get('result')}"
        if "ct" in left:
            return f"ct {left['ct'].get('key')}"
        if "meta" in left:
            return f"meta {left['meta'].get('key')}"
    return json.dumps(left, sort_keys=True)


def _value_text(value: Any) -> str:
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    if isinstance(value, dict) and "set" in value:
        return "{ " + ", ".join(_value_text(v) for v in value["set"]) + " }"
    if isinstance(value, list):
        return ", ".join(_value_text(v) for v in value)
    return json.dumps(value, sort_keys=True)


def _expr_text(expr: dict) -> str:
    """One JSON statement as nft text, for the statements podnet writes (others: JSON)."""
    if "match" in expr:
        m = expr["match"]
        op = m.get("op", "==")
        sep = " " if op in ("==", "in") else f" {op} "
        return f"{_left_text(m.get('left'))}{sep}{_value_text(m.get('right'))}"
    if "dnat" in expr or "snat" in expr:
        kind = "dnat" if "dnat" in expr else "snat"
        d = expr[kind] or {}
        addr = str(d.get("addr", ""))
        if "port" in d:
            addr = f"[{addr}]:{d['port']}" if ":" in addr else f"{addr}:{d['port']}"
        return f"{kind} to {addr}"
    if "masquerade" in expr and not expr["masquerade"]:
        return "masquerade"
    if "counter" in expr:
        return "counter"
    return json.dumps(expr, sort_keys=True)


def _dnat_key(family: str, exprs: list[dict]) -> MapKey | None:
    """(family, host address or None, port, protocol) of a DNAT rule podnet wrote."""
    if not any(isinstance(e, dict) and "dnat" in e for e in exprs):
        return None
    host: str | None = None
    port: int | None = None
    proto: str | None = None
    for e in exprs:
        m = e.get("match") if isinstance(e, dict) else None
        if not m or m.get("op", "==") != "==" or not isinstance(m.get("left"), dict):
            continue
        p = m["left"].get("payload")
        if p and p.get("field") == "daddr" and p.get("protocol") in FAMILIES:
            host = str(m.get("right"))
        elif p and p.get("field") == "dport" and p.get("protocol") in PROTOCOLS:
            port, proto = m.get("right"), p["protocol"]
    if not isinstance(port, int) or proto is None:
        return None
    return (family, host, port, proto)


def _rules(doc: dict | None) -> Iterable[dict]:
    for item in (doc or {}).get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if isinstance(rule, dict):
            yield rule


def has_guard(doc: dict | None) -> bool:
    """Whether an `nft -j list table ip podnet` document holds the loopback guard."""
    return any(r.get("chain") == GUARD_CHAIN and r.get("comment") == GUARD_COMMENT for r in _rules(doc))


def parse_table(doc: dict | None) -> list[InstalledRule]:
    """The podnet-tagged rules of one `nft -j list table` document: those in podnet's
    NAT chains of its two families (anything else is no attachment's rule)."""
    out: list[InstalledRule] = []
    for rule in _rules(doc):
        tag = _COMMENT_RE.fullmatch(str(rule.get("comment", "")))
        family = rule.get("family", "")
        chain = rule.get("chain", "")
        if not tag or family not in FAMILIES or chain not in NAT_CHAINS:
            continue
        exprs = [e for e in rule.get("expr", []) if isinstance(e, dict)]
        out.append(
            InstalledRule(
                family=family,
                chain=chain,
                handle=int(rule["handle"]),
                net_id=tag.group(1),
                attach_id=tag.group(2),
                body=" ".join(_expr_text(e) for e in exprs),
                key=_dnat_key(family, exprs) if chain == "prerouting" else None,
            )
        )
    return out

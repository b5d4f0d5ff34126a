"""What `podnet trace` reads from a node's kernel, as pure functions over the text or
JSON the kernel tools give (no kernel import: unit-tested without root).

- `nft monitor` lines: each `trace id ... <family> <table> <chain> packet|rule|policy|verdict`
  line of a traced packet becomes a TraceEvent; `first_packet` keeps the first packet
  of the probe (the SYN, or the first datagram) across every chain it went through.
- the service table (`inet podnet-svc` as `nft -j`): which chain a frontend's verdict
  map sends to, and the DNAT target of each of its rules (services/render.py).
- the policy table (`inet podnet-policy`): each rule line's comment and counter
  (policy/compile.py), and the comment the rule that decided would carry.
- `conntrack -L` lines: where a connection was DNATed to (its reply source).
- routes: the longest-prefix FIB entry for an address (its protocol and prefix, which a
  plain `route get` does not say).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from podnet.policy.table import (
    COMMENT_MAX,
    cluster_rule_what,
    isolation_what,
    nft_text,
    np_rule_what,
)

TRACE_TABLE_PREFIX = "pntrace-"  # the temporary tables trace.arm creates (one per probe)
_TRACE = re.compile(r"^trace id (?P<id>[0-9a-f]+) (?P<family>\w+) (?P<table>\S+) (?P<chain>\S+) "
                    r"(?P<kind>packet|rule|policy|verdict|unknown rule)(?::)?\s?(?P<rest>.*)$")
_FIELD = re.compile(r'\b(iif|oif) "([^"]+)"|\bip (saddr|daddr) (\S+)|\b(?:tcp|udp|th) (sport|dport) (\d+)')
_VERDICT = re.compile(r"\(verdict (\w+)(?: ([\w.-]+))?\)\s*$")
_COMMENT = re.compile(r'comment "([^"]*)"')
_CONNTRACK = re.compile(r"(src|dst|sport|dport)=(\S+)")
ROUTE_PROTOCOLS = {2: "kernel", 3: "boot", 4: "static", 12: "bird", 77: "podnet", 186: "bgp"}


@dataclass(frozen=True)
class TraceEvent:
    table: str  # "inet podnet-policy"
    chain: str
    kind: str  # packet, rule, policy, verdict
    text: str  # the rule, or the packet's fields
    verdict: str = ""  # accept, drop, jump, goto, continue, return ("" on a packet line)
    target: str = ""  # the chain of a jump/goto
    comment: str = ""
    iif: str = ""
    oif: str = ""
    saddr: str = ""
    daddr: str = ""
    sport: int | None = None
    dport: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_trace_line(line: str) -> TraceEvent | None:
    """One line of `nft monitor`; None for anything that is no trace line."""
    m = _TRACE.match(line.strip())
    if m is None:
        return None
    rest, kind = m["rest"].strip(), m["kind"].replace("unknown rule", "rule")
    fields: dict[str, Any] = {}
    if kind == "packet":
        for f in _FIELD.finditer(rest):
            if f[1]:
                fields[f[1]] = f[2]
            elif f[3]:
                fields[f[3]] = f[4]
            else:
                fields[f[5]] = int(f[6])
    verdict = target = ""
    v = _VERDICT.search(rest)
    if v:
        verdict, target = v[1], v[2] or ""
        rest = rest[: v.start()].strip()
    elif kind in ("policy", "verdict"):
        verdict = rest.split()[0] if rest else ""
    comment = _COMMENT.search(rest)
    return TraceEvent(f"{m['family']} {m['table']}", m["chain"], kind, rest, verdict, target,
                      comment[1] if comment else "", **fields)


def parse_trace(lines: Iterable[str]) -> list[TraceEvent]:
    return [e for e in map(parse_trace_line, lines) if e is not None]


def first_packet(events: Sequence[TraceEvent]) -> list[TraceEvent]:
    """The events of the probe's first packet: from the first packet line of a trace
    table up to the next one (each later packet of the connection starts there again)."""
    starts = [i for i, e in enumerate(events)
              if e.kind == "packet" and e.table.split()[-1].startswith(TRACE_TABLE_PREFIX)]
    if not starts:
        return list(events)
    end = starts[1] if len(starts) > 1 else len(events)
    return list(events[starts[0]:end])


def dropped_by(events: Sequence[TraceEvent]) -> TraceEvent | None:
    """The event that dropped (or rejected) the packet, if any did."""
    return next((e for e in events if e.verdict in ("drop", "reject")), None)


def dnat_choice(events: Sequence[TraceEvent]) -> str | None:
    """`ip:port` a traced DNAT rule sent the packet to (its comment `... -> ip:port`)."""
    for e in events:
        if " dnat " in f" {e.text} " and "->" in e.comment:
            return e.comment.rsplit("->", 1)[1].strip()
    return None


def seen_devices(events: Sequence[TraceEvent]) -> tuple[set[str], set[str]]:
    """The input and output devices the packet lines show."""
    return {e.iif for e in events if e.iif}, {e.oif for e in events if e.oif}


# -- the service table


def dnat_candidates(doc: Mapping[str, Any] | None, ip: str, protocol: str, port: int) -> dict[str, Any] | None:
    """{"chain", "frontend" (the map element's comment), "targets": ["ip:port", ...]} of
    the service port `ip . protocol . port` in `nft -j list table inet podnet-svc`;
    None when the table has no such frontend."""
    items = (doc or {}).get("nftables", [])
    chain = name = None
    for item in items:
        m = item.get("map")
        if not m or not str(m.get("name", "")).startswith("service-ips"):
            continue
        for key, verdict in m.get("elem", []):
            elem = key.get("elem", key)
            if _concat(elem.get("val", elem)) == [ip, protocol, port]:
                chain = next(iter(verdict.values())).get("target")
                name = elem.get("comment", "")
    if chain is None:
        return None
    targets = []
    for item in items:
        rule = item.get("rule")
        if rule and rule.get("chain") == chain:
            for expr in rule.get("expr", []):
                if "dnat" in expr:
                    d = expr["dnat"]
                    targets.append(f"{d.get('addr')}:{d.get('port')}" if d.get("port") else str(d.get("addr")))
    return {"chain": chain, "frontend": name, "targets": list(dict.fromkeys(targets))}


def _concat(value: Any) -> list[Any]:
    parts = value.get("concat", []) if isinstance(value, Mapping) else []
    return [p if not isinstance(p, str) or not p.isdigit() else int(p) for p in parts]


# -- the policy table


def rule_comment(rule: Mapping[str, Any] | None, direction: str, endpoint: str, isolated_by: str) -> str | None:
    """The comment policy/compile.py puts on the line that decides: the rule of a
    Decision (RuleRef as a dict), or the default deny of an isolated pod (`isolated_by`
    the policies' `ns/name`s, comma-joined). None: no line decides (not isolated)."""
    if rule is None:
        return nft_text(isolation_what(direction, endpoint, isolated_by), COMMENT_MAX) if isolated_by else None
    policy = str(rule["policy"])  # "ClusterPolicy/NAME" or "NetworkPolicy NS/NAME" (evaluate.py RuleRef)
    if policy.startswith("ClusterPolicy/"):
        name = policy.split("/", 1)[1]
        text = "ClusterPolicy " + cluster_rule_what(rule["tier"], name, direction, rule["index"], rule.get("name"))
    else:
        text = "NetworkPolicy " + np_rule_what(policy.split(" ", 1)[1], direction, rule["index"])
    return nft_text(text, COMMENT_MAX)


def isolating_policies(reason: str) -> str:
    """`a/x,b/y` out of evaluate.py's "default deny (isolated by NetworkPolicy a/x, b/y)"."""
    m = re.search(r"isolated by NetworkPolicy (.*)\)$", reason)
    return m[1].replace(", ", ",") if m else ""


# -- conntrack and routes


def conntrack_reply_source(line: str) -> str | None:
    """`ip:port` a connection's answers come from (the DNAT target), from one line of
    `conntrack -L`: the second src=/sport= pair is the reply direction's."""
    pairs = _CONNTRACK.findall(line)
    src = [v for k, v in pairs if k == "src"]
    sport = [v for k, v in pairs if k == "sport"]
    if len(src) < 2:
        return None
    return f"{src[1]}:{sport[1]}" if len(sport) > 1 else src[1]


def longest_match(routes: Iterable[Mapping[str, Any]], address: str) -> Mapping[str, Any] | None:
    """The route (dicts with "dst" as a CIDR) whose prefix holds `address`, longest first."""
    ip = ipaddress.ip_address(address)
    best: tuple[int, Mapping[str, Any]] | None = None
    for route in routes:
        net = ipaddress.ip_network(route["dst"], strict=False)
        if net.version == ip.version and ip in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, route)
    return best[1] if best else None


def protocol_name(number: int | None) -> str:
    return ROUTE_PROTOCOLS.get(number or 0, str(number))

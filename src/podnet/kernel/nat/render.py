"""The rules one attachment needs and the text of its nft transaction (pure, no I/O).

Decisions:
- DNAT targets the first container address of each family. A second DNAT rule for the
  same host port would never match (the first rule wins), so rendering it would only
  mislead CHECK.
- Connections from 127.0.0.0/8 are DNATed and masqueraded (needs route_localnet on the
  host-side interface). IPv6 has no route_localnet: the kernel drops ::1 on non-loopback
  devices, so `[::1]:hostPort` is not mapped.
- Hairpin (a container reaching itself through the host port) needs the masquerade
  here *and*, when br_netfilter is loaded with bridge-nf-call-iptables=1 (the default
  in every new namespace), hairpin mode on the container's bridge port: br_netfilter
  DNATs in the bridge path and sends the frame back out of the port it came from.
- The loopback guard (CVE-2020-8558): route_localnet on a bridge makes the kernel take
  packets for 127.0.0.0/8 from it, so a container routing 127.0.0.1 via its gateway
  (CAP_NET_ADMIN, or a raw socket) would reach services bound to the host's loopback.
  Every IPv4 script therefore (re)writes chain `input` of `ip podnet` with one rule:
  drop 127.0.0.0/8 that did not come in on lo and was not DNATed (`ct status dnat`:
  the answers to the host's own 127.0.0.1:hostPort connections carry it), as
  kube-proxy does. It is no attachment's rule: DEL, GC and resync leave it, like
  route_localnet itself; CHECK reports it missing. IPv6 needs none: the kernel drops
  ::1 arriving on any device but lo.
- Every variable token goes through kernel/nftsyntax.py (addresses without scope IDs,
  ports and handles as integers, fixed keywords, the quoted comment).
- Each change is one `nft -f -` transaction: `add table`/`add chain` are no-ops when
  present, so creating the layout and the rules cannot half-succeed. Re-ADD of the same
  attachment replaces its rules in the same transaction (idempotent ADD).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable

from podnet import addresses, naming
from podnet.kernel import nftsyntax as tok
from podnet.kernel.nat.parse import (
    FAMILIES,
    GUARD_CHAIN,
    GUARD_COMMENT,
    LOOPBACK4,
    NAT_CHAINS,
    PROTOCOLS,
    InstalledRule,
    IPAddress,
    IPInterface,
    PortMapping,
    Rule,
    check_attach_id,
    family_of,
    map_key,
    parse_port_mappings,
)

TABLE = "podnet"
CHAIN_SPECS = dict(zip(NAT_CHAINS, (
    "type nat hook prerouting priority dstnat; policy accept;",
    "type nat hook output priority -100; policy accept;",
    "type nat hook postrouting priority srcnat; policy accept;",
), strict=True))
GUARD_SPEC = "type filter hook input priority filter; policy accept;"
GUARD = Rule("ip", GUARD_CHAIN, f'iif != "lo" ip daddr {tok.network(LOOPBACK4)} ct status & dnat == 0 counter drop')
HANDLE_MAX = 2**64 - 1

_NO_MASQ = {"ip": "224.0.0.0/4", "ip6": "ff00::/8"}  # never masquerade multicast


def comment(network: str, attach: str) -> str:
    return f"podnet:{naming.net_id(network)}:{attach}"


def _target(addr: IPAddress, port: int) -> str:
    host = tok.address(addr)
    return f"[{host}]:{tok.port(port)}" if addr.version == 6 else f"{host}:{tok.port(port)}"


def _dnat_body(fam: str, m: PortMapping, cip: IPAddress) -> str:
    host = m.host_match()
    match = f"{fam} daddr {tok.address(host)}" if host is not None else "fib daddr type local"
    proto = tok.keyword(m.protocol, PROTOCOLS)
    return f"{match} {proto} dport {tok.port(m.host_port)} dnat to {_target(cip, m.container_port)}"


def _masq_body(fam: str, ip: IPInterface, excluded: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    skip = [tok.network(ip.network), _NO_MASQ[fam], *(tok.network(n) for n in excluded if family_of(n) == fam)]
    return f"{fam} saddr {tok.address(ip.ip)} " + "".join(f"{fam} daddr != {n} " for n in skip) + "masquerade"


def plan_rules(
    container_ips: Iterable[IPInterface],
    mappings: list[PortMapping],
    ip_masq: bool | Collection[str],
    masq_exclude: Iterable[str] = (),
) -> list[Rule]:
    """The rules one attachment needs, in install order (pure). `masq_exclude` are
    destinations ipMasq leaves alone (Flannel does not masquerade pod-to-pod traffic
    inside the cluster CIDR, so the far pod sees the real client address)."""
    masq_families = (FAMILIES if ip_masq else ()) if isinstance(ip_masq, bool) else tuple(ip_masq)
    ips = list(container_ips)
    excluded = [addresses.network(c, "ipMasqExclude", strict=False) for c in masq_exclude]
    rules: list[Rule] = []
    for fam in FAMILIES:
        fam_ips = [i for i in ips if family_of(i) == fam]
        if not fam_ips:
            continue
        cip = fam_ips[0]
        fam_maps = [m for m in mappings if m.applies_to(fam)]
        for m in fam_maps:
            body = _dnat_body(fam, m, cip.ip)
            rules.append(Rule(fam, "prerouting", body, map_key(m, fam)))
            rules.append(Rule(fam, "output", body))
        if fam_maps:
            dnat_tail = f"{fam} daddr {tok.address(cip.ip)} ct status dnat masquerade"
            rules.append(Rule(fam, "postrouting", f"{fam} saddr {tok.address(cip.ip)} {dnat_tail}"))
            if fam == "ip" and any(m.needs_localnet() for m in fam_maps):
                rules.append(Rule(fam, "postrouting", f"ip saddr {tok.network(LOOPBACK4)} {dnat_tail}"))
            if cip.network.prefixlen < cip.network.max_prefixlen:
                rules.append(Rule(fam, "postrouting", f"{fam} saddr {tok.network(cip.network)} {dnat_tail}"))
        if fam in masq_families:
            rules.extend(Rule(fam, "postrouting", _masq_body(fam, i, excluded)) for i in fam_ips)
    return rules


def render_rules(network: str, attach: str, rules: list[Rule]) -> str:
    """Layout (idempotent, the IPv4 loopback guard rewritten) plus `add rule` lines;
    "" when there are no rules."""
    if not rules:
        return ""
    check_attach_id(attach)
    tag = tok.comment(comment(network, attach))
    lines: list[str] = []
    for fam in FAMILIES:
        fam_rules = [r for r in rules if r.family == fam]
        if not fam_rules:
            continue
        lines.append(f"add table {fam} {TABLE}")
        lines.extend(f"add chain {fam} {TABLE} {name} {{ {spec} }}" for name, spec in CHAIN_SPECS.items())
        if fam == GUARD.family:
            lines.append(f"add chain {fam} {TABLE} {GUARD_CHAIN} {{ {GUARD_SPEC} }}")
            lines.append(f"flush chain {fam} {TABLE} {GUARD_CHAIN}")
            lines.append(f"add rule {fam} {TABLE} {GUARD_CHAIN} {GUARD.body} comment {tok.comment(GUARD_COMMENT)}")
        lines.extend(
            f"add rule {fam} {TABLE} {tok.keyword(r.chain, NAT_CHAINS)} {r.body} comment {tag}" for r in fam_rules
        )
    return "\n".join(lines) + "\n"


def render_add(
    network: str,
    attach_id: str,
    container_ips: list[IPInterface],
    port_mappings: list[dict],
    ip_masq: bool | Collection[str],
    masq_exclude: Iterable[str] = (),
) -> str:
    """The script of one transaction adding an attachment's NAT; "" if nothing to do."""
    check_attach_id(attach_id)
    rules = plan_rules(container_ips, parse_port_mappings(port_mappings), ip_masq, masq_exclude)
    return render_rules(network, attach_id, rules)


def render_delete(rules: Iterable[InstalledRule]) -> str:
    """`delete rule ... handle N` lines: handles make deletion exact, never by pattern."""
    return "".join(
        f"delete rule {tok.keyword(r.family, FAMILIES)} {TABLE} {tok.keyword(r.chain, NAT_CHAINS)} "
        f"handle {tok.integer(r.handle, 1, HANDLE_MAX)}\n"
        for r in rules
    )

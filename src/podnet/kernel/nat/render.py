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
- Each change is one `nft -f -` transaction: `add table`/`add chain` are no-ops when
  present, so creating the layout and the rules cannot half-succeed. Re-ADD of the same
  attachment replaces its rules in the same transaction (idempotent ADD).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from podnet import naming
from podnet.kernel.nat.parse import (
    FAMILIES,
    LOOPBACK4,
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
CHAIN_SPECS = {
    "prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "output": "type nat hook output priority -100; policy accept;",
    "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
}

_NO_MASQ = {"ip": "224.0.0.0/4", "ip6": "ff00::/8"}  # never masquerade multicast


def comment(network: str, attach: str) -> str:
    return f"podnet:{naming.net_id(network)}:{attach}"


def _net_text(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """A network as nft prints it: a host route is a bare address, not a /32."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _target(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def plan_rules(
    container_ips: Iterable[IPInterface],
    mappings: list[PortMapping],
    ip_masq: bool,
    masq_exclude: Iterable[str] = (),
) -> list[Rule]:
    """The rules one attachment needs, in install order (pure). `masq_exclude` are
    destinations ipMasq leaves alone (Flannel does not masquerade pod-to-pod traffic
    inside the cluster CIDR, so the far pod sees the real client address)."""
    ips = list(container_ips)
    excluded = [ipaddress.ip_network(c) for c in masq_exclude]
    rules: list[Rule] = []
    for fam in FAMILIES:
        fam_ips = [i for i in ips if family_of(i) == fam]
        if not fam_ips:
            continue
        cip = fam_ips[0]
        fam_maps = [m for m in mappings if m.applies_to(fam)]
        for m in fam_maps:
            host = m.host_match()
            match = f"{fam} daddr {host}" if host is not None else "fib daddr type local"
            body = (
                f"{match} {m.protocol} dport {m.host_port} "
                f"dnat to {_target(cip.ip, m.container_port)}"
            )
            rules.append(Rule(fam, "prerouting", body, map_key(m, fam)))
            rules.append(Rule(fam, "output", body))
        if fam_maps:
            dnat_tail = f"{fam} daddr {cip.ip} ct status dnat masquerade"
            rules.append(Rule(fam, "postrouting", f"{fam} saddr {cip.ip} {dnat_tail}"))
            if fam == "ip" and any(m.needs_localnet() for m in fam_maps):
                rules.append(Rule(fam, "postrouting", f"ip saddr {LOOPBACK4} {dnat_tail}"))
            if cip.network.prefixlen < cip.network.max_prefixlen:
                subnet = _net_text(cip.network)
                rules.append(Rule(fam, "postrouting", f"{fam} saddr {subnet} {dnat_tail}"))
        if ip_masq:
            for i in fam_ips:
                rules.append(
                    Rule(
                        fam,
                        "postrouting",
                        f"{fam} saddr {i.ip} {fam} daddr != {_net_text(i.network)} "
                        f"{fam} daddr != {_NO_MASQ[fam]} "
                        + "".join(f"{fam} daddr != {_net_text(n)} " for n in excluded if family_of(n) == fam)
                        + "masquerade",
                    )
                )
    return rules


def render_rules(network: str, attach: str, rules: list[Rule]) -> str:
    """Layout (idempotent) plus `add rule` lines; "" when there are no rules."""
    if not rules:
        return ""
    tag = comment(network, attach)
    lines: list[str] = []
    for fam in FAMILIES:
        fam_rules = [r for r in rules if r.family == fam]
        if not fam_rules:
            continue
        lines.append(f"add table {fam} {TABLE}")
        lines.extend(
            f"add chain {fam} {TABLE} {name} {{ {spec} }}" for name, spec in CHAIN_SPECS.items()
        )
        lines.extend(
            f'add rule {fam} {TABLE} {r.chain} {r.body} comment "{tag}"' for r in fam_rules
        )
    return "\n".join(lines) + "\n"


def render_add(
    network: str,
    attach_id: str,
    container_ips: list[IPInterface],
    port_mappings: list[dict],
    ip_masq: bool,
    masq_exclude: Iterable[str] = (),
) -> str:
    """The script of one transaction adding an attachment's NAT; "" if nothing to do."""
    check_attach_id(attach_id)
    rules = plan_rules(container_ips, parse_port_mappings(port_mappings), ip_masq, masq_exclude)
    return render_rules(network, attach_id, rules)


def render_delete(rules: Iterable[InstalledRule]) -> str:
    """`delete rule ... handle N` lines: handles make deletion exact, never by pattern."""
    return "".join(f"delete rule {r.family} {TABLE} {r.chain} handle {r.handle}\n" for r in rules)

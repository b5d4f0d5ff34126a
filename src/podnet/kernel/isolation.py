"""Isolation between user-defined bridge networks, as Docker does it: one nftables
table (`inet podnet-iso`) with a forward chain, rendered purely from the networks.

Rules, each commented with the network it protects (so a dropped packet's rule names
its network in `nft list ruleset` or a trace):

    iifname BR_A oifname { BR_B, BR_C } drop   net A: isolated from other networks
    iifname BR_I oifname != BR_I drop          net I: internal, no traffic out
    oifname BR_I iifname != BR_I drop          net I: internal, no traffic in

Why keyed on bridge names: a packet routed between two networks crosses the forward
hook with iif/oif = the two bridges. A packet bridged inside one network reaches the
hook only through br_netfilter (bridge-nf-call-iptables=1, the default in every new
namespace), which reports the bridge as both iif and oif (its "logical device"), so
`iif BR oif != BR` never matches it: containers of one network always reach each
other (tests/ns/test_network_isolation.py checks both). Traffic to and from the host
itself (input/output, e.g. DNS on the gateway) is not forwarded and stays allowed.

macvlan networks bypass the host's forwarding entirely, so they get no rules; their
isolation is the parent network's business (as in Docker).

Every apply replaces the whole table in one `nft -f -` transaction (`add` makes the
delete safe when the table is absent), so no packet ever sees a half-built table; with
nothing to enforce, the table is removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from podnet.kernel.nft import NftPort

FAMILY = "inet"
TABLE = "podnet-iso"
CHAIN = "forward"
CHAIN_SPEC = "type filter hook forward priority filter; policy accept;"


class IsolatedNetwork(Protocol):
    """What rendering needs of a network (podnet.networks.model.Network has it)."""

    name: str
    driver: str
    bridge: str | None
    internal: bool


def _q(name: str) -> str:
    return f'"{name}"'


def rules(networks: Iterable[IsolatedNetwork]) -> list[str]:
    """The forward chain's rules, in a stable order (sorted by network name)."""
    bridged = sorted(
        (n for n in networks if n.driver == "bridge" and n.bridge), key=lambda n: n.name
    )
    out: list[str] = []
    for net in bridged:
        br = _q(str(net.bridge))
        others = [_q(str(o.bridge)) for o in bridged if o.bridge != net.bridge]
        if others:
            out.append(
                f"iifname {br} oifname {{ {', '.join(others)} }} drop "
                f'comment "net {net.name}: isolated from other networks"'
            )
        if net.internal:
            out.append(f'iifname {br} oifname != {br} drop comment "net {net.name}: internal, no traffic out"')
            out.append(f'oifname {br} iifname != {br} drop comment "net {net.name}: internal, no traffic in"')
    return out


def render(networks: Iterable[IsolatedNetwork]) -> str:
    """The script replacing the table's content in one transaction."""
    lines = [f"add table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}"]
    body = rules(networks)
    if body:
        lines.append(f"table {FAMILY} {TABLE} {{")
        lines.append(f"\tchain {CHAIN} {{")
        lines.append(f"\t\t{CHAIN_SPEC}")
        lines.extend(f"\t\t{rule}" for rule in body)
        lines.append("\t}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def apply(nft: NftPort, networks: Iterable[IsolatedNetwork]) -> list[str]:
    """Converge the calling thread's namespace; returns the rules now in force."""
    networks = list(networks)
    nft.apply(render(networks))
    return rules(networks)

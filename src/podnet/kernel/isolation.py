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

Names reach the script only as tokens of kernel/nftsyntax.py: a network whose name or
bridge cannot be one quoted nft string (a record read back from a store is checked by
NetworkRecord.from_json, but the kernel's interface-name rule still allows a quote or
a `*`, which nft reads as a wildcard) is refused with an InvalidConfig naming it, and
nothing is applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from podnet.errors import InvalidConfig
from podnet.kernel import nftsyntax as tok
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


class _Tokens:
    """One network's bridge and comments as nft tokens, or InvalidConfig naming it."""

    def __init__(self, net: IsolatedNetwork) -> None:
        try:
            if not tok.is_safe_text(net.name) or not net.name:
                raise InvalidConfig("its name is not printable ASCII without quote, backslash or ';'")
            self.name = net.name
            self.bridge = tok.ifname(str(net.bridge))
            self.internal = bool(net.internal)
        except InvalidConfig as exc:
            raise InvalidConfig(f"network {net.name!r} cannot be rendered into nft: {exc.msg}") from None

    def comment(self, why: str) -> str:
        return tok.comment(f"net {self.name}: {why}")


def rules(networks: Iterable[IsolatedNetwork]) -> list[str]:
    """The forward chain's rules, in a stable order (sorted by network name)."""
    bridged = [_Tokens(n) for n in networks if n.driver == "bridge" and n.bridge]
    bridged.sort(key=lambda n: n.name)
    out: list[str] = []
    for net in bridged:
        br = net.bridge
        others = [o.bridge for o in bridged if o.bridge != br]
        if others:
            out.append(f"iifname {br} oifname {tok.elements(others)} drop comment "
                       + net.comment("isolated from other networks"))
        if net.internal:
            out.append(f"iifname {br} oifname != {br} drop comment " + net.comment("internal, no traffic out"))
            out.append(f"oifname {br} iifname != {br} drop comment " + net.comment("internal, no traffic in"))
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

"""The tunnel's own packets skip conntrack: `inet podnet-fabric`, two raw-priority
chains in the node's namespace.

Why: the outer UDP packets of the VXLAN fabric (node to node, port 8472) crossed
conntrack twice, in the sender's output hook and the receiver's prerouting hook, as
soon as any nat or ct rule exists in the node's namespace (the services table and the
masquerade rules always do). Nothing ever NATs or judges them by state: the policy's
host endpoint chains accept them by port (policy/compile.py FAILSAFE_UDP), and the
inner packets, which services and policy do need, are still tracked. Measured on the
lab (issue 19, bench/README.md), CPU per byte against a bare tunnel: a tunnel between
two lab nodes 1.18x -> 1.06x, pods on the eBPF fast path 1.28x -> 1.20x; on the kernel
path alone within the noise (the inner packets' netfilter dominates there).

Scope: only UDP to the fabric's port on the underlay interface, in both directions;
the rules are rewritten whole in one transaction (idempotent).
"""

from __future__ import annotations

from podnet.kernel import nftsyntax as tok
from podnet.kernel.nft import Nft, NftPort

TABLE = "podnet-fabric"


def script(underlay: str, port: int) -> str:
    """The table's whole text: raw prerouting (in on the underlay) and raw output (out
    on it), each `udp dport PORT notrack`."""
    dev, dport = tok.ifname(underlay), tok.port(port)
    chains = (("prerouting", "prerouting", f"iifname {dev}"), ("output", "output", f"oifname {dev}"))
    lines = [f"add table inet {TABLE}"]
    for chain, hook, match in chains:
        lines += [
            f"add chain inet {TABLE} {chain} {{ type filter hook {hook} priority raw; policy accept; }}",
            f"flush chain inet {TABLE} {chain}",
            f"add rule inet {TABLE} {chain} {match} udp dport {dport} notrack "
            f"comment {tok.comment('podnet fabric: tunnel packets are not tracked')}",
        ]
    return "\n".join(lines) + "\n"


def ensure(underlay: str, port: int, nft: NftPort | None = None) -> None:
    """Make the calling thread's namespace hold exactly the table of `script`."""
    (nft or Nft()).apply(script(underlay, port))

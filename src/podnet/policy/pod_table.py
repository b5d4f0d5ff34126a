"""Policy for one macvlan pod -> an nftables table in the pod's own network namespace
(`inet podnet-pod-policy`), pure.

Why a table in the pod: a macvlan pod's packets leave and enter through the parent
interface's driver, never through the node's forward hook, so `inet podnet-policy`
(policy/compile.py) does not see them. The node agent programs this table inside the
pod's namespace instead: the same chains the node table would jump to for this pod
(the compiler's own `ChainBuilder.endpoint_chain`: tiers, NetworkPolicy allow chains, the
named default deny; the same sets, counters, comments and NFLOG prefixes, so `podnet
flows` and `trace` name the same rule), hooked where the pod's own traffic passes:

    table inet podnet-pod-policy
      chain ingress  hook input  prio 0   ct established,related accept; loopback accept;
                                          neighbour discovery accept; jump in_<ep>
      chain egress   hook output prio 0   the same, then jump out_<ep>
      chain in_<ep>, out_<ep>, np_*, *_t<k>, sets p<hash>: as in the node table

- A direction nothing judges gets no base chain (no hook, no per-packet cost).
- No table at all while nothing selects the pod (the script deletes any previous
  one), as a node keeps no table while no policy exists: an accept-all table would
  cost every packet two hook walks and decide nothing.
- Loopback is always allowed (evaluate.py: a pod reaching itself never leaves it),
  and so are IPv6 neighbour discovery and MLD reports: they never cross the node's
  forward hook either, and a default deny must not cut the pod's own link.
- Fail closed as the node's `unowned` check: while any policy exists, a pod whose
  addresses its record does not name (not registered yet, a recycled address, one
  two records claim) gets a drop in both directions under the same prefixes.
- The pod's own node is never judged (`node_ips`, the first address of each of its pod
  blocks: a macvlan node's shim, a bridge's gateway): traffic between a bridged pod and
  its node never crosses the forward hook either, and the node's readiness probes
  must reach an isolated pod (as Calico allows host to local workload).
- A multi-network pod's table judges all its links: traffic of a bridged one is then
  judged twice (here and at the node's forward hook) by the same lines, so with the
  same verdict; only its drops are logged twice.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Sequence

from podnet.errors import InvalidConfig
from podnet.policy.compile import IN, OUT, ChainBuilder, CompileCache, log_prefix
from podnet.policy.evaluate import Endpoint, World
from podnet.policy.table import FAMILY, GENERATION_SET, Compiled

POD_TABLE = "podnet-pod-policy"
# IPv6 link control a pod needs whatever its policy (never forwarded by a node)
LINK_CONTROL = ("icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
                "nd-neighbor-advert, mld-listener-report, mld2-listener-report } accept")
_HOOK = {IN: ("ingress", "input", "iifname"), OUT: ("egress", "output", "oifname")}


def removal_script(table: str = POD_TABLE) -> str:
    """The script leaving no policy table in the pod (works whether one exists or not)."""
    return f"table inet {table}\ndelete table inet {table}\n"


def _who(namespace: str, name: str) -> str:
    """A registered pod as `pod ns/name`; an attachment no pod record names as `name`."""
    return f"pod {namespace}/{name}" if namespace else name


def _addresses(namespace: str, name: str, ips: Sequence[str]) -> set[str]:
    out = set()
    for i, ip in enumerate(ips):
        try:
            out.add(str(ipaddress.ip_address(ip)))
        except ValueError:
            raise InvalidConfig(f"{_who(namespace, name)}: ips[{i}]: {ip!r} is not an IP address") from None
    return out


def _record(world: World, namespace: str, name: str) -> Endpoint | None:
    return next((ep for ep in world.endpoints if ep.identity == ("pod", namespace, name)), None)


def _node_lines(node_ips: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Per direction, the accept of the pod's own node (see the module's notes)."""
    found = _addresses("", "node_ips", node_ips)
    out: dict[str, tuple[str, ...]] = {IN: (), OUT: ()}
    for family, version in (("ip", 4), ("ip6", 6)):
        mine = sorted((a for a in found if ipaddress.ip_address(a).version == version), key=ipaddress.ip_address)
        if mine:
            for direction, side in ((IN, "saddr"), (OUT, "daddr")):
                out[direction] += (f'{family} {side} {{ {", ".join(mine)} }} accept comment "this node"',)
    return out


def compile_pod(world: World, namespace: str, name: str, ips: Sequence[str], *, log_allowed: bool = False,
                cache: CompileCache | None = None, node_ips: Sequence[str] = ()) -> Compiled | None:
    """The table enforcing `world`'s policy inside pod `namespace/name`, whose
    interfaces hold `ips`; None: nothing selects it (no table). `cache`: one per pod,
    kept by the caller between compiles, as compile_node's. An attachment no pod
    record names (namespace "") is unowned: `name` then says what it is. `node_ips`:
    the pod's node's own addresses, never judged (as for a bridged pod)."""
    own = _addresses(namespace, name, ips)
    node_lines = _node_lines(node_ips)
    if not world.network_policies and not world.cluster_policies:
        return None
    builder = ChainBuilder(world, "", log_allowed, cache)
    pod = _record(world, namespace, name)
    judged: dict[str, str] = {}
    for direction in (IN, OUT):
        if pod is None or not own <= set(pod.ips):
            what = f"unowned address of {_who(namespace, name)}"
            judged[direction] = builder.rule_line("", "drop", log_prefix("D", f"unowned {direction.lower()}"), what, True)
        elif chain := builder.endpoint_chain(pod, direction):
            judged[direction] = f"jump {chain}"
    builder.prune()
    if not judged:
        return None
    base: dict[str, tuple[str, ...]] = {}
    for direction, verdict in judged.items():
        chain, hook, meta = _HOOK[direction]
        base[chain] = (f"type filter hook {hook} priority 0; policy accept;",
                       "ct state established,related accept", f'meta {meta} "lo" accept',
                       LINK_CONTROL, *node_lines[direction], verdict)
    out = builder.out
    return Compiled(sets=out.sets, chains={**base, **out.chains}, rules=out.rules)


def compile_pod_table(world: World, namespace: str, name: str, ips: Sequence[str], *,
                      log_allowed: bool = False, cache: CompileCache | None = None) -> str:
    """The nft script taking the pod's namespace to its policy table: the whole table
    in one transaction, or the table's removal when nothing selects the pod."""
    compiled = compile_pod(world, namespace, name, ips, log_allowed=log_allowed, cache=cache)
    return removal_script() if compiled is None else compiled.render(POD_TABLE)


def stamped_script(compiled: Compiled | None) -> tuple[str, int]:
    """(script, generation): the transaction taking a pod to `compiled`, recording in the
    table's generation set a checksum of its text (0 and the removal: no table). The
    agent reads that one set back to skip a pod whose table is already exactly this,
    also after a restart."""
    if compiled is None:
        return removal_script(), 0
    script = compiled.render(POD_TABLE)
    generation = zlib.crc32(script.encode()) or 1
    return script + f"add element {FAMILY} {POD_TABLE} {GENERATION_SET} {{ {generation} }}\n", generation

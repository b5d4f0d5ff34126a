"""`podnet doctor` on one node (op `node.doctor`): find common faults in the node's own
kernel state, say each with the fix, and with `fix` have the node repair what is safe.

Checks (each a pure judgement over what `examine` reads):
- fabric: routes, neighbour and FDB entries the node's fabric wants but the kernel
  lacks, or holds but no lease wants (a stale entry of an expired peer): the fabric's
  own diff, dry (fabric/base.py `apply(dry_run=True)`). Fix: the node's repair pass,
  run now (the same code that runs every 3 s).
- mtu: pod host veths whose MTU is not the pod network's (the fabric's MTU over the
  underlay's): big packets would be dropped silently. Explained only: a pod's MTU is
  set at its ADD; re-create the pod. Also the underlay's MTU now against the one the
  agent sized the pod network from at start, and the fabric device and pod bridge
  against the pod network's MTU (explained: restart the agent). The reply carries the
  node's pod MTU and the biggest pod packet its underlay carries now, which the CLI
  compares across nodes (cli/doctor.py `mtu_mismatches`).
- conntrack: the table over 80% of nf_conntrack_max: new flows are about to be dropped.
- bgp: a BGP session that is not Established (the bgp fabric).
- orphans: pod host veths that no endpoint record of any store the agent knows claims
  (a pod torn down behind podnet's back); fix: delete them, as the agent's start-up
  sweep would (agent/resync.py), only when every store could be read.
- leaks: this node's ready reservations of the pod network with no endpoint record
  (an address no pod holds); fix: release them.
- nft: the policy and service tables against what their services applied
  (agent/doctor_tables.py); fix: the service re-applies its whole table.
- leases: routes to blocks no live lease in the store holds (agent/doctor_cluster.py);
  fix: the repair pass. (Named here, not again as stale fabric routes.)
- dns: the node's cluster DNS server, and the address pods are given, not answering
  one query (agent/doctor_cluster.py); explained only.
Nothing here changes the kernel or the store except what `fix` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from podnet.agent.doctor_finding import Finding

if TYPE_CHECKING:
    from podnet.agent.node_service import NodeService

HOST_VETH = re.compile(r"^pn[0-9a-f]{11}$")  # a pod's host veth (naming.py host_veth_name)
CONNTRACK_PRESSURE = 0.8
REPAIR_TIMEOUT = 10.0


def fabric_findings(missing: Iterable[str], stale: Iterable[str]) -> list[Finding]:
    fix = "the node's repair pass re-converges the fabric (podnet doctor --fix, or wait 3 s)"
    return ([Finding("fabric", f"missing {what}", fix, True) for what in missing]
            + [Finding("fabric", f"stale {what} (no lease wants it)", fix, True) for what in stale])


def mtu_findings(links: Mapping[str, int], want: int) -> list[Finding]:
    return [Finding("mtu", f"pod veth {name} has MTU {mtu}, the pod network's is {want}: bigger packets are "
                           "dropped on the way", "re-create the pod (its MTU is set at ADD)")
            for name, mtu in sorted(links.items()) if mtu != want]


def link_mtu_findings(mtus: Mapping[str, int], underlay: str, sized_for: int, pod_mtu: int,
                      own: Iterable[str]) -> list[Finding]:
    """The underlay against the MTU the agent sized the pod network from at start, and
    the node's own devices (fabric device, pod bridge) against the pod network's MTU."""
    out = []
    now = mtus.get(underlay)
    if now is not None and now != sized_for:
        out.append(Finding("mtu", f"underlay {underlay} has MTU {now}, the agent sized the pod network ({pod_mtu}) "
                                  f"for {sized_for}: " + ("big packets are dropped on the wire" if now < sized_for
                                                          else "pods use less than the wire carries"),
                           "the node's agent follows the underlay within a pass (agent/mtu_follow.py): if this "
                           "stays, its agent is not running the node loop; `podnet status` names pods it could "
                           "not resize"))
    for name in own:
        mtu = mtus.get(name)
        if mtu is not None and mtu != pod_mtu:
            out.append(Finding("mtu", f"{name} has MTU {mtu}, the pod network's is {pod_mtu}: "
                                      + ("big packets are dropped on the way" if mtu < pod_mtu else "it may pass "
                                         "packets the next hop drops"),
                               "restart the node's agent (it sets its devices up at start)"))
    return out


def conntrack_findings(count: int | None, maximum: int | None) -> list[Finding]:
    if not count or not maximum or count < CONNTRACK_PRESSURE * maximum:
        return []
    return [Finding("conntrack", f"conntrack table at {count}/{maximum} ({100 * count // maximum}%): new flows "
                                 "will be dropped when it is full", "raise net.netfilter.nf_conntrack_max, or "
                                                                    "find the flood (podnet flows)")]


def orphan_findings(veths: Iterable[str], claimed: set[str] | None) -> list[Finding]:
    """`claimed` None: a store could not be read, so nothing can be judged an orphan."""
    if claimed is None:
        return []
    return [Finding("orphans", f"host veth {name} belongs to no endpoint", "delete it (podnet doctor --fix)", True,
                    (name,)) for name in sorted(set(veths) - claimed)]


def leak_findings(held: Iterable[tuple[str, str, str]], records: set[tuple[str, str]]) -> list[Finding]:
    """`held`: (address, container ID, ifname) of this node's ready reservations."""
    return [Finding("leaks", f"address {address} is reserved for {cid}/{ifname}, which has no endpoint",
                    "release it (podnet doctor --fix)", True, (cid, ifname))
            for address, cid, ifname in sorted(held) if (cid, ifname) not in records]


def bgp_findings(sessions: Iterable[Mapping[str, Any]]) -> list[Finding]:
    return [Finding("bgp", f"BGP session {s.get('name')} with {s.get('neighbor')} is {s.get('state')}"
                           + (f" ({s['last_error']})" if s.get("last_error") else ""),
                    "check the peer's BIRD and the path to it (podnet bgp status)")
            for s in sessions if s.get("state") != "Established"]


# ------------------------------------------------------------------- reading the node


def examine(node: NodeService, fix: bool = False) -> dict[str, Any]:
    """Every check on this node; with `fix`, what it can fix repaired (orphans deleted,
    leaks released, the repair pass run), then every check again (what is left is what
    `fix` could not repair)."""
    findings, mtus = _findings(node)
    fixed: list[dict[str, Any]] = []
    if fix and any(f.fixable for f in findings):
        _remove_orphans_and_leaks(node, findings)
        from podnet.agent.doctor_tables import reapply_tables

        reapply_tables(node, findings)
        if not node.request_repair(REPAIR_TIMEOUT):
            return {"node": node.name, "findings": [f.to_json() for f in findings], "fixed": [],
                    "error": f"the repair pass did not run within {REPAIR_TIMEOUT:g} s"}
        before, (findings, mtus) = findings, _findings(node)
        fixed = [f.to_json() for f in before if f.fixable and f not in findings]
    return {"node": node.name, "findings": [f.to_json() for f in findings], "fixed": fixed,
            "mtu": _mtu(node, mtus)}


def _mtu(node: NodeService, mtus: Mapping[str, int]) -> dict[str, int] | None:
    """The pod network's MTU on this node, and the biggest pod packet its underlay
    carries now (`mtus`: the links' MTUs the checks read; the CLI compares these
    across nodes: cli/doctor.py)."""
    fabric, ctx = node.fabric, node.ctx
    if fabric is None or ctx is None:
        return None
    now = mtus.get(ctx.own.underlay_if, ctx.underlay_mtu)
    return {"pods": fabric.mtu(ctx.underlay_mtu), "carried": fabric.mtu(now)}


def _findings(node: NodeService) -> tuple[list[Finding], dict[str, int]]:
    """Every check's findings, and the MTU of every link of the node (read once)."""
    from pyroute2 import IPRoute

    from podnet.agent.doctor_cluster import cluster_dns_findings, lease_findings
    from podnet.agent.doctor_tables import nft_findings
    from podnet.fabric.bgp import BgpFabric

    fabric, ctx = node.fabric, node.ctx
    if fabric is None or ctx is None:
        return [], {}
    with IPRoute() as ipr:  # this op's own socket: the node loop's IPRoute is its thread's
        want = fabric.desired(ctx, node.peers.values(), node.claims)
        drift = fabric.apply(ipr, want, dry_run=True)
        mtus = {str(msg.get("IFLA_IFNAME")): int(msg.get("IFLA_MTU") or 0) for msg in ipr.get_links()}
    links = {name: mtu for name, mtu in mtus.items() if HOST_VETH.match(name)}
    expired = lease_findings(node)
    gone = {f"route {f.target[0]}" for f in expired}  # named once, as an expired lease
    out = fabric_findings(drift.added, [r for r in drift.removed if r not in gone])
    pod_mtu = fabric.mtu(ctx.underlay_mtu)
    out += mtu_findings(links, pod_mtu)
    bridge = node.pod_bridge
    if bridge and links and mtus.get(bridge) == min(links.values()):
        bridge = None  # a bridge takes its smallest port's MTU: the veth named above is the cause
    own = [d for d in (*fabric.devices, bridge) if d]
    out += link_mtu_findings(mtus, ctx.own.underlay_if, ctx.underlay_mtu, pod_mtu, own)
    out += conntrack_findings(_read_int("/proc/sys/net/netfilter/nf_conntrack_count"),
                              _read_int("/proc/sys/net/netfilter/nf_conntrack_max"))
    if isinstance(fabric, BgpFabric):
        out += bgp_findings(fabric.status().get("sessions") or [])
    claimed, records, held = _endpoints(node)
    out += orphan_findings(links, claimed)
    out += leak_findings(held, records)
    return out + expired + nft_findings(node) + cluster_dns_findings(node), mtus


def _endpoints(node: NodeService) -> tuple[set[str] | None, set[tuple[str, str]], list[tuple[str, str, str]]]:
    """The host links every known store's records claim (None: a store could not be
    read), the pod network's endpoint attachments, and this node's ready reservations."""
    from podnet import keys
    from podnet.agent.resync import links_claimed
    from podnet.cluster.leases import CLUSTER_NETWORK
    from podnet.endpoints.service import read_record
    from podnet.errors import PodnetError
    from podnet.ipam.service import IpamService
    from podnet.model.ipam import READY
    from podnet.naming import attach_id

    service = node.agent.service
    claimed: set[str] | None = set()
    for path in service.known_stores():
        try:
            entries = service.store(path).list(keys.endpoints())
        except (PodnetError, OSError):
            claimed = None
            break
        for entry in entries:
            network, cid, ifname = keys.parse_endpoint(entry.key)
            record = read_record(entry.value)
            claimed.update(links_claimed(record, record.attach_id if record else attach_id(network, cid, ifname)))
    store = node.agent.service.store(node.agent.store_path)
    records = {keys.parse_endpoint(e.key)[1:] for e in store.list(keys.endpoints(CLUSTER_NETWORK))}
    ipam = IpamService(store, identity=service.identity)
    held = [(r.address, r.container_id, r.ifname) for r in ipam.reservations(CLUSTER_NETWORK)
            if r.state == READY and service.identity.owns(r.node)]
    return claimed, records, held


def _remove_orphans_and_leaks(node: NodeService, findings: list[Finding]) -> None:
    """`--fix` for what no repair pass does: orphan veths deleted, leaked reservations
    released (what each finding names in its `target`)."""
    from pyroute2 import IPRoute

    from podnet.cluster.leases import CLUSTER_NETWORK
    from podnet.ipam.service import IpamService
    from podnet.kernel import links

    with IPRoute() as ipr:
        for f in findings:
            if f.check == "orphans":
                links.delete_link(ipr, f.target[0])
    store = node.agent.service.store(node.agent.store_path)
    ipam = IpamService(store, identity=node.agent.service.identity)
    for f in findings:
        if f.check == "leaks":
            ipam.release(CLUSTER_NETWORK, *f.target)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None

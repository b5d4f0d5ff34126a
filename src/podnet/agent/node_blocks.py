"""The node service's share of block IPAM (ipam/blocks.py): a bridge's gateway per
block, what a departed peer's blocks and borrowed addresses leave behind, and which
store events change what a bgp node announces.

Why apart from node_service.py: these are decisions about blocks, each testable with
a store and a lease, while the node service is the loop that runs them.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from podnet import keys
from podnet.cluster import leases
from podnet.cluster.dualstack import Pools
from podnet.cluster.leases import CLUSTER_NETWORK
from podnet.model.cluster import NodeLease
from podnet.model.ipam import Reservation
from podnet.store.base import DELETE, Entry, Event, Store

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from podnet.fabric.base import FabricContext

log = logging.getLogger("podnet.agent.node")

RESERVATIONS = keys.ipam_addresses(CLUSTER_NETWORK)


def held(store: Store, node: str) -> set[str]:
    """The blocks `node`'s claims hold now."""
    return {block for block, owner in leases.list_claims(store).items() if owner == node}


def sync_bridge_gateways(ipr: IPRoute, bridge: str, mtu: int, blocks: Iterable[str],
                         cluster: ipaddress.IPv4Network, claims_now: Callable[[], set[str]],
                         pools: Pools | None = None) -> None:
    """`bridge` with the gateway (first address) of each of `blocks`, and of each one's
    IPv6 twin in a dual-stack cluster (`pools`): ADD adds a new block's at once, this
    drops a released or former block's. The claims are read again (`claims_now`)
    before a gateway goes: an ADD may have grown into its block since `blocks` was read."""
    from podnet.cluster.dualstack import gateway6_of
    from podnet.kernel import links

    index = links.ensure_bridge(ipr, bridge, mtu)
    wanted: dict[ipaddress.IPv4Interface | ipaddress.IPv6Interface, str] = {}  # gateway -> its IPv4 block
    for b in blocks:
        net = ipaddress.IPv4Network(b)
        wanted[ipaddress.IPv4Interface(f"{leases.gateway_of(net)}/{net.prefixlen}")] = str(net)
        twin = pools.twin(net) if pools is not None else None
        if twin is not None:
            wanted[ipaddress.IPv6Interface(f"{gateway6_of(twin)}/{twin.prefixlen}")] = str(net)
    pool6 = pools.v6 if pools is not None else None
    stale = []
    for msg in ipr.get_addr(index=index):
        addr = ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
        inside = addr.ip in cluster if addr.version == 4 else (pool6 is not None and addr.ip in pool6)
        if addr not in wanted and inside:
            stale.append(addr)
    if stale:
        holding = claims_now()
        for addr in stale:
            if _block_of_gateway(addr, pools) not in holding:
                ipr.addr("del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
    for gateway in sorted(wanted, key=lambda a: (a.version, a)):
        links.ensure_address(ipr, index, gateway, nodad=True)


def _block_of_gateway(addr: ipaddress.IPv4Interface | ipaddress.IPv6Interface, pools: Pools | None) -> str | None:
    """The IPv4 block whose claim a bridge gateway stands for (an IPv6 one: its twin's)."""
    if addr.version == 4:
        return str(addr.network)
    block = pools.block_of_twin(addr.network) if pools is not None else None
    return str(block) if block is not None else None


def reclaim(store: Store, ctx: FabricContext | None, gone: NodeLease, claims: Mapping[str, str]) -> None:
    """A peer's lease vanished: release each of its blocks (`claims`: as last read) and,
    once a block is unclaimed, free the reservations and endpoint records in it; then
    free the addresses its pods borrowed in live blocks. Nothing for a lease that was
    refused (a forged 10.0.0.0/8 must not free this node's pods)."""
    from podnet.fabric.base import block_problem

    def problem(block: ipaddress.IPv4Network) -> str | None:
        return None if ctx is None else block_problem(ctx, block)

    if (refused := problem(gone.network)) is not None:
        log.info("peer %s left; its lease was refused (%s): nothing freed", gone.name, refused)
        return
    extra = [b for b, n in claims.items() if n == gone.name and b != gone.block
             and problem(ipaddress.IPv4Network(b)) is None]
    for block in (gone.block, *sorted(extra, key=ipaddress.IPv4Network)):
        released = leases.release_block(store, gone.name, block)
        owner = leases.block_owner(store, block)
        if owner is not None:  # back already, or re-claimed (a new owner frees it itself)
            log.info("peer %s left; block %s is claimed by %s: nothing freed", gone.name, block, owner)
            continue
        freed = leases.free_block_addresses(store, block)
        log.info("peer %s left: block %s %s, %d address(es) freed", gone.name, block,
                 "released" if released else "already free", len(freed))
    if store.get(gone.key) is None:  # its addresses borrowed from live blocks go with it
        lent = leases.free_node_addresses(store, gone.name)
        if lent:
            log.info("peer %s left: %d borrowed address(es) freed", gone.name, len(lent))


def in_blocks(key: str, blocks: Iterable[str]) -> bool:
    """Whether a reservation key of the cluster network lies in one of `blocks`."""
    if not key.startswith(RESERVATIONS):
        return False
    try:
        address = ipaddress.ip_address(key.rsplit("/", 1)[1])
        return any(address in ipaddress.ip_network(b) for b in blocks)
    except ValueError:
        return False


def borrowing_event(event: Event, node: str, blocks: Iterable[str], announced: Iterable[str]) -> bool:
    """A reservation of `node`'s outside its `blocks` came, or one it `announced` went:
    the bgp fabric announces borrowed addresses as /32s. A put names the node in its
    owner tag; any other node's pod coming or going is none of this node's business."""
    if not event.key.startswith(RESERVATIONS):
        return False
    address = event.key.rsplit("/", 1)[1]
    if event.value is None or event.kind == DELETE:
        return address in set(announced)
    try:
        inside = any(ipaddress.IPv4Address(address) in ipaddress.IPv4Network(b) for b in blocks)
    except ValueError:
        return False
    return not inside and Reservation.from_entry(Entry(event.key, event.value, event.revision, event.revision)).node == node


def ring_block(store: Store, node: str, hint: str | None) -> str:
    """The gossip fabric's lease block: `hint` (the last one) if the ring still gives
    it to `node`, else its lowest; PodnetError while the ring gives it none (the node
    service retries: the ring comes with the gossip)."""
    from podnet.errors import PodnetError

    mine = sorted((b for b, owner in leases.list_claims(store).items() if owner == node), key=ipaddress.IPv4Network)
    if not mine:
        raise PodnetError(f"node {node} owns no block of the ring yet (waiting for the gossip)")
    return hint if hint in mine else mine[0]


def in_use(store: Store, blocks: Iterable[str], ctx: FabricContext) -> tuple[str, ...]:
    """`blocks` that hold a reservation, and the lease's: a gossip node owns a large
    part of the ring, and its bridge carries a gateway only for the blocks its pods use
    (an ADD adds a new block's gateway itself)."""
    from podnet.ipam.blocks import occupied_blocks
    from podnet.ipam.config import BlockAffinity

    used = {str(b) for b in occupied_blocks(store, CLUSTER_NETWORK,
                                            BlockAffinity(ctx.own.name, ctx.cluster, ctx.block_prefix))}
    return tuple(b for b in blocks if b == ctx.own.block or b in used)

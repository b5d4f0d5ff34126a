"""`host join` and `host leave` in the store: the hosts block, the address, the record.

Design notes:
- The address is an IPAM reservation of the pod network (`ipam/cluster/ip/<address>`,
  keys.ipam_address), created by compare-and-put (expected revision 0): of two joins
  racing for one address exactly one wins, the other takes the next. Reusing the IPAM
  family means everything that counts or frees pod addresses sees it taken (the
  allocator, `occupied_blocks`, `podnet status`), and no new key family is needed.
  Its id names the host (`@host:<name>`), its owner tag is `@hosts`, so no node's GC or
  resync ever judges it (they look at their own node's tags and their own blocks), and
  its state is ready (no rollback of a pending one).
- The block is the one kept for hosts (`leases.keep_for_hosts`: a claim without TTL);
  a host join claims the lowest free block when there is none.
- A re-join of the same name finds its reservation by id and keeps its address.
- `hosts/<name>` (HostRecord) carries the podnet address; the lab's record of the
  host's rack is kept. Leave deletes the reservation and the record.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from podnet import keys
from podnet.cluster.leases import (
    CLUSTER_NETWORK,
    HOSTS_OWNER,
    keep_for_hosts,
    list_claims,
    list_leases,
)
from podnet.hostjoin.plan import HostNet, JoinError, JoinPlan, block_for_hosts, free_addresses, plan
from podnet.model.base import CorruptRecord
from podnet.model.cluster import HostRecord, NodeLease
from podnet.model.ipam import READY, Reservation
from podnet.store.base import Store

HOST_ID_PREFIX = "@host:"  # a reservation held by a joined host: `@host:<name>` (no container ID has "@")
HOST_IFNAME = "host"


@dataclass(frozen=True)
class Joined:
    """What `host join` did: the record written and the plan for the host."""

    record: HostRecord
    plan: JoinPlan
    block: str
    reused: bool  # the host had this address already (a re-join)


def reservation_id(name: str) -> str:
    return HOST_ID_PREFIX + name


def read_host(store: Store, name: str) -> HostRecord | None:
    raw = store.get_json(keys.host(name))
    if raw is None:
        return None
    try:
        return HostRecord.from_json(raw, keys.host(name))
    except CorruptRecord:
        return None


def list_hosts(store: Store) -> dict[str, HostRecord]:
    """Every readable `hosts/<name>` record by name (a corrupt one is skipped)."""
    out = {}
    for entry in store.list(keys.HOSTS):
        try:
            out[keys.object_ref(keys.HOSTS, entry.key)] = HostRecord.from_json(entry.json(), entry.key)
        except (CorruptRecord, ValueError):
            continue
    return out


def block_prefix_of(leases: list[NodeLease], default: int) -> int:
    """The cluster's block size, as the nodes' leases show it."""
    return min((lease.network.prefixlen for lease in leases), default=default)


def hosts_block(store: Store, cluster: ipaddress.IPv4Network, prefix: int) -> ipaddress.IPv4Network:
    """The block kept for hosts, claimed now if there is none (a node racing for the
    same block wins it: then the next one)."""
    for _attempt in range(8):
        block, unclaimed = block_for_hosts(list_claims(store), cluster, prefix)
        if not unclaimed or keep_for_hosts(store, block) == HOSTS_OWNER:
            return block
    raise JoinError(f"cannot claim a block of {cluster} for hosts: nodes keep taking them", "try again")


def _reservations(store: Store) -> list[Reservation]:
    out = []
    for entry in store.list(keys.ipam_addresses(CLUSTER_NETWORK)):
        try:
            out.append(Reservation.from_entry(entry))
        except CorruptRecord:
            continue
    return out


def reserve(store: Store, name: str, block: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Address, bool]:
    """The host's address: the one it holds already (by id, anywhere), else the
    lowest free one of `block`, created by CAS. (address, reused)."""
    held = _reservations(store)
    mine = [r for r in held if r.container_id == reservation_id(name)]
    if mine:
        return ipaddress.IPv4Address(min(mine, key=lambda r: ipaddress.IPv4Address(r.address)).address), True
    for address in free_addresses(block, (r.address for r in held)):
        value = Reservation(CLUSTER_NETWORK, str(address), reservation_id(name), HOST_IFNAME, READY,
                            HOSTS_OWNER, time.time())
        if store.compare_and_put(value.key, value.encode(), 0) is not None:
            return address, False
    raise JoinError(f"the hosts block {block} has no free address left for host {name}",
                    "leave a host that is gone: podnet host leave NAME")


def join(store: Store, name: str, host: HostNet, cluster: ipaddress.IPv4Network, default_prefix: int,
         rack: int | None = None) -> Joined:
    """Reserve the host's address, write its record, and plan its routes."""
    keys.segment(name, "host name")
    leases = list_leases(store)
    if any(lease.fabric == "gossip" for lease in leases):
        raise JoinError("the gossip fabric's ring hands the whole cluster CIDR to its peers: no block is left "
                        "to keep for plain hosts",
                        "run the agent on the host instead (podnet agent --fabric gossip --peer ...), as "
                        "Weave's hosts run weave")
    block = hosts_block(store, cluster, block_prefix_of(leases, default_prefix))
    address, reused = reserve(store, name, block)
    old = read_host(store, name)
    record = HostRecord(str(host.address.ip), rack if rack is not None else (old.rack if old else 0), str(address))
    store.put(keys.host(name), record.encode())
    return Joined(record, plan(name, address, host, leases, list_claims(store), cluster), str(block), reused)


def leave(store: Store, name: str) -> tuple[HostRecord | None, list[str]]:
    """Free the host's address(es) and delete its record: (the record it had, or
    None; the addresses freed)."""
    keys.segment(name, "host name")
    old = read_host(store, name)
    freed = [res.address for res in _reservations(store)
             if res.container_id == reservation_id(name) and store.delete(res.key, expected_revision=res.revision)]
    store.delete(keys.host(name))
    return old, freed

"""Node ports and published host ports share one claim per (protocol, port).

A NodePort answers on every node; a published port (CNI `portMappings`, docker's
`-p`) on the node of its endpoint. Both are DNAT rules on the same destination port,
so where both exist one silently wins. So a host port inside the cluster's node-port
range is claimed under the node port's own key (keys.node_port) before the kernel is
programmed, and the claim (model/service.PortClaim) names either the service or every
endpoint publishing the port: two nodes may publish the same host port, but a node
port excludes every node's host port of that number.

Decisions:
- **Compare-and-put, no lock.** The CNI ADD changes the claim with compare_and_put
  against the revision it read, retried when another writer moved it. `podnet apply`
  reads and writes the same key inside its transaction (services/allocate.py), which
  SQLite serialises and etcd guards by the revisions it read: of an apply and an ADD
  racing for one port, exactly one wins.
- **A holder is alive while its endpoint record exists.** The ADD writes its pending
  endpoint record before it claims, and DEL releases before it deletes the record, so
  a holder whose record is gone is garbage, whatever node wrote it (a crash between
  the two steps, a dead node whose records a peer freed, a rollback by the agent).
  Every write of a claim drops such holders, `apply` ignores them, and GC and the
  agent's start-up resync `prune` them: no claim outlives its endpoints.
- **Only cluster stores.** The claim needs the cluster's node-port range: the ADD
  claims only in a store the config names (the cluster conflist's shared store) that
  holds `settings/services`; docker-style networks keep their own per-host ports.
- **Refused ADDs get the generic error (999)**, not "try again later": a node port
  stays until its service changes, retrying cannot help.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress

from podnet import keys
from podnet.errors import PodnetError, TryAgainLater
from podnet.model.base import CorruptRecord, parse_json
from podnet.model.service import PortClaim, PortHolder, ServiceSettings
from podnet.store.base import Entry, Store

CAS_RETRIES = 32
PROTOCOLS = ("tcp", "udp")  # what a node port can be; an SCTP host port claims nothing

Port = tuple[str, int]  # (protocol in lower case, port)


class NodePortTaken(PodnetError):
    """A host port is the node port of a service (generic code: retrying cannot help)."""


def node_port_range(store: Store) -> tuple[int, int]:
    """The cluster's node-port range: its settings', else the default that `apply`
    allocates from too (a cluster made without `settings/services` still has node
    ports, so its host ports must be claimed against them)."""
    entry = store.get(keys.SERVICE_SETTINGS)
    return ServiceSettings().node_ports if entry is None else ServiceSettings.from_json(entry.json(), entry.key).node_ports


def in_range(ports: Iterable[Port], span: tuple[int, int]) -> list[Port]:
    """The (protocol, port) pairs a node port could also be, sorted, each once."""
    low, high = span
    return sorted({(proto, port) for proto, port in ports if proto in PROTOCOLS and low <= port <= high})


def decode(entry: Entry) -> PortClaim:
    """A stored claim, checked (CorruptRecord otherwise)."""
    return PortClaim.from_json(parse_json(entry.value, entry.key), entry.key)


def read(entry: Entry | None) -> PortClaim | None:
    return None if entry is None else decode(entry)


def alive(store: Store, holders: Iterable[PortHolder]) -> tuple[PortHolder, ...]:
    """The holders whose endpoint record still exists."""
    return tuple(h for h in holders if store.get(keys.endpoint(*h.endpoint)) is not None)


def describe(holders: Iterable[PortHolder]) -> str:
    return ", ".join(str(h) for h in holders)


def claim(store: Store, ports: Iterable[Port], holder: PortHolder) -> list[Port]:
    """Add `holder` to the claim of every port; NodePortTaken when one is a service's
    node port (what was added before is released again). Returns the ports the holder
    did not hold already: what its undo must release."""
    added: list[Port] = []
    try:
        for proto, port in ports:
            before, _after = _change(store, keys.node_port(proto, port),
                                     lambda current, p=(proto, port): _with(store, current, holder, p))
            if holder.endpoint not in _endpoints(before):
                added.append((proto, port))
    except BaseException:
        release(store, added, holder)
        raise
    return added


def release(store: Store, ports: Iterable[Port], holder: PortHolder) -> None:
    """Drop `holder` (by its endpoint) from the claims of `ports`; a claim left without
    a holder is deleted. Idempotent."""
    for proto, port in ports:
        with suppress(CorruptRecord):  # a damaged claim is left alone (prune skips it too)
            _change(store, keys.node_port(proto, port), lambda current: _without(store, current, holder))


def prune(store: Store) -> list[str]:
    """Drop every holder whose endpoint record is gone, on every node; returns the
    keys changed. A claim that cannot be read is left alone (its service or holders
    would be guessed)."""
    changed = []
    for entry in store.list(keys.NODE_PORTS):
        try:
            if decode(entry).service:
                continue  # a service's: written in one transaction with its manifest
            before, after = _change(store, entry.key, lambda current: _without(store, current, None))
        except CorruptRecord:
            continue
        if before != after:
            changed.append(entry.key)
    return changed


def _with(store: Store, current: PortClaim | None, holder: PortHolder, port: Port) -> PortClaim | None:
    """`current` with `holder` added and the dead holders dropped."""
    if current is not None and current.service:
        proto, number = port
        raise NodePortTaken(f"hostPort {number}/{proto.upper()} is the node port of service {current.service}",
                            "publish a host port outside the cluster's node port range, or change the service")
    held = current.holders if current is not None else ()
    kept = [h for h in held if h.endpoint == holder.endpoint or alive(store, (h,))]
    if holder.endpoint not in _endpoints(current):
        kept.append(holder)
    return PortClaim(holders=tuple(kept))


def _without(store: Store, current: PortClaim | None, holder: PortHolder | None) -> PortClaim | None:
    """`current` without `holder` (None: only without the dead holders)."""
    if current is None or current.service:
        return current
    kept = alive(store, (h for h in current.holders if holder is None or h.endpoint != holder.endpoint))
    return PortClaim(holders=kept) if kept else None


def _change(store: Store, key: str,
            change: Callable[[PortClaim | None], PortClaim | None]) -> tuple[PortClaim | None, PortClaim | None]:
    """Apply `change` to the claim at `key` by compare-and-put (a None result deletes
    it), reading again when another writer moved it; (before, after)."""
    for _ in range(CAS_RETRIES):
        entry = store.get(key)
        current = read(entry)
        new = change(current)
        if new == current:
            return current, new
        if new is None:
            assert entry is not None
            done = store.delete(key, expected_revision=entry.revision)
        else:
            done = store.compare_and_put(key, new.encode(), entry.revision if entry else 0) is not None
        if done:
            return current, new
    raise TryAgainLater(f"the claim {key} kept changing in {CAS_RETRIES} attempts")


def _endpoints(claim: PortClaim | None) -> set[tuple[str, str, str]]:
    return {h.endpoint for h in claim.holders} if claim is not None else set()

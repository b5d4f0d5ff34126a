"""ClusterIPs and node ports: what the API server hands out when a Service is applied.

Each address and port is claimed under its own key (keys.cluster_ip, keys.node_port)
in the same store transaction that writes the Service, so two applies racing for one
address cannot both win (SQLite serialises; etcd's transaction compares revisions and
one side retries). A node port's key is also where a CNI ADD claims a host port of
the node-port range (services/ports.py): a port that an endpoint still publishes, on
any node, is refused with the holder named, and random allocation skips it. The
stored manifest carries what was given, so re-applying a file without `clusterIP`
keeps the address, and a changed one is refused (immutable, as in Kubernetes). Deleting a service, or a port or type change that drops a node port,
frees the claims in the same transaction.

Dual stack: services/families.py settles a service's families against the cluster's
service CIDRs (one per family, settings/services); each family gets one ClusterIP from
its own CIDR, claimed under its own key. A service raised from SingleStack to
PreferDualStack/RequireDualStack gets its second address here; set back to SingleStack
it drops the secondary, whose claim is freed with the rest of what it no longer holds.

Dynamic ClusterIPs come from above the static band (the lowest min(max(16, n/16), 256)
addresses, as Kubernetes keeps them for services that ask for an address, such as
the DNS service's .10), chosen at random and probed, then by a scan when the range
is nearly full.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Collection
from typing import Any

from podnet import keys
from podnet.errors import ObjectError
from podnet.model.service import PortClaim, ServiceClaim, ServiceSettings
from podnet.services import families, ports
from podnet.services.objects import HEADLESS, Service
from podnet.store.base import Entry, Store

RANDOM_PROBES = 64


def settings(store: Store) -> ServiceSettings:
    entry = store.get(keys.SERVICE_SETTINGS)
    return ServiceSettings() if entry is None else ServiceSettings.from_json(entry.json(), entry.key)


def _service_of(entry: Entry) -> str:
    """The service a claim names ("" for a host port's claim)."""
    if entry.key.startswith(keys.NODE_PORTS):
        return ports.decode(entry).service
    return ServiceClaim.from_json(entry.json(), entry.key).service


def _owner(store: Store, key: str) -> str | None:
    entry = store.get(key)
    return None if entry is None else _service_of(entry)


def _claim(store: Store, key: str, svc: Service, what: str, where: str) -> None:
    owner = _owner(store, key)
    if owner is not None and owner != svc.ref:
        raise ObjectError(f"Service {svc.ref}: {where}: {what} is already allocated to service {owner}")
    if owner is None:
        store.put(key, ServiceClaim(svc.ref).encode())


def _claim_port(store: Store, key: str, svc: Service, what: str, where: str) -> None:
    """A node port's claim: refused while an endpoint on any node publishes it as a
    host port; the claim of endpoints that are all gone is taken over."""
    claim = ports.read(store.get(key))
    if claim is not None and claim.service:
        if claim.service != svc.ref:
            raise ObjectError(f"Service {svc.ref}: {where}: {what} is already allocated to service {claim.service}")
        return
    holders = ports.alive(store, claim.holders) if claim is not None else ()
    if holders:
        raise ObjectError(f"Service {svc.ref}: {where}: {what} is published as a host port by "
                          f"{ports.describe(holders)}", "choose another nodePort, or leave it out to get a free one")
    store.put(key, PortClaim(svc.ref).encode())


def _static_band(size: int) -> int:
    return min(max(16, size // 16), 256)


def _pick(store: Store, ranges: list[range], key: Callable[[int], str], prefix: str,
          skip: Collection[int] = ()) -> int | None:
    """A number whose claim `key(n)` is free: random draws from the first range
    (probed with a get each), then a scan of every range against one listing of
    `prefix` when the space is nearly full; None when nothing is free."""
    for _ in range(RANDOM_PROBES if ranges[0] else 0):
        n = random.choice(ranges[0])
        if n not in skip and store.get(key(n)) is None:
            return n
    claimed = {e.key for e in store.list(prefix)}
    return next((n for r in ranges for n in r if n not in skip and key(n) not in claimed), None)


def _pick_address(store: Store, net: ipaddress.IPv4Network | ipaddress.IPv6Network, ref: str) -> str:
    first, last = _static_band(net.num_addresses), net.num_addresses - 2  # no network or broadcast address
    if first > last:
        first = 1
    offset = _pick(store, [range(first, last + 1), range(1, first)],
                   lambda n: keys.cluster_ip(str(net.network_address + n)), keys.CLUSTER_IPS)
    if offset is None:
        raise ObjectError(f"Service {ref}: the service CIDR {net} is full", "delete services or widen the range")
    return str(net.network_address + offset)


def _requested_address(svc: Service, ip_text: str, net: Any, where: str) -> str:
    ip = ipaddress.ip_address(ip_text)
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        raise ObjectError(f"Service {svc.ref}: {where}: {ip} is not a usable address of the "
                          f"service CIDR {net}")
    return str(ip)


def _cluster_ips(store: Store, svc: Service, old: Service | None, conf: ServiceSettings) -> tuple[str, ...]:
    """One address per family of the service (families.resolve settled them): those it
    keeps or asked for, checked against their family's CIDR, the rest picked; each claimed.
    `svc` is resolved already."""
    if svc.headless:
        return svc.cluster_ips
    kept = set(old.virtual_ips) if old is not None else set()
    out: list[str] = []
    for i, family in enumerate(svc.ip_families):
        net = conf.network_of(family)
        given = svc.cluster_ips[i] if i < len(svc.cluster_ips) else ""
        where = "spec.clusterIP" if i == 0 and len(svc.cluster_ips) <= 1 else f"spec.clusterIPs[{i}]"
        if given in kept:  # held already (and perhaps from a range since changed)
            out.append(given)
            continue
        if net is None:  # resolve refuses a family the cluster lacks; a kept address needs none
            raise ObjectError(f"Service {svc.ref}: spec.ipFamilies[{i}]: {family} is not configured on this cluster")
        address = _requested_address(svc, given, net, where) if given else _pick_address(store, net, svc.ref)
        _claim(store, keys.cluster_ip(address), svc, f"clusterIP {address}", where)
        out.append(address)
    return tuple(out)


def _node_ports(store: Store, svc: Service, old: Service | None,
                span: tuple[int, int]) -> dict[tuple[int, str], int]:
    if not svc.uses_node_ports:
        return {}
    kept = {(p.port, p.protocol): p.node_port for p in (old.ports if old else ()) if p.node_port is not None}
    low, high = span
    out: dict[tuple[int, str], int] = {}
    taken: set[tuple[str, int]] = set()
    for i, port in enumerate(svc.ports):
        where = f"spec.ports[{i}].nodePort"
        number = port.node_port or kept.get((port.port, port.protocol))
        if number is not None and not low <= number <= high:
            raise ObjectError(f"Service {svc.ref}: {where}: {number} is outside the node port range {low}-{high}")
        if number is None:
            number = _pick_port(store, port.protocol.lower(), span, taken, svc.ref)
        if (port.protocol, number) in taken:
            raise ObjectError(f"Service {svc.ref}: {where}: {number}/{port.protocol} is used twice")
        taken.add((port.protocol, number))
        _claim_port(store, keys.node_port(port.protocol.lower(), number), svc,
                    f"node port {number}/{port.protocol}", where)
        out[(port.port, port.protocol)] = number
    return out


def _pick_port(store: Store, protocol: str, span: tuple[int, int], taken: set[tuple[str, int]], ref: str) -> int:
    low, high = span
    number = _pick(store, [range(low, high + 1)], lambda n: keys.node_port(protocol, n), keys.NODE_PORTS,
                   {n for proto, n in taken if proto == protocol.upper()})
    if number is None:
        raise ObjectError(f"Service {ref}: every node port of {low}-{high} is taken")
    return number


def _claims(svc: Service) -> set[str]:
    out = {keys.node_port(p.protocol.lower(), p.node_port) for p in svc.ports if p.node_port is not None}
    return out | {keys.cluster_ip(ip) for ip in svc.cluster_ips if ip and ip != HEADLESS}


def _free(store: Store, svc: Service, claims: set[str]) -> None:
    for key in sorted(claims):
        if _owner(store, key) == svc.ref:
            store.delete(key)


def admit(store: Store, svc: Service, old: Service | None) -> Service:
    """`svc` with its ClusterIP and node ports given and claimed; what `old` held and
    `svc` no longer does is freed. Runs inside the caller's transaction."""
    conf = settings(store)
    resolved = families.resolve(svc, old, conf.families)
    allocated = resolved.with_allocation(_cluster_ips(store, resolved, old, conf),
                                         _node_ports(store, svc, old, conf.node_ports))
    if old is not None:
        _free(store, old, _claims(old) - _claims(allocated))
    return allocated


def release(store: Store, old: Service) -> None:
    """Free everything a deleted service held."""
    _free(store, old, _claims(old))


def release_owned(store: Store, ref: str) -> None:
    """Free every claim of service `ref` (found by scanning: for a manifest that can
    no longer be read)."""
    for prefix in (keys.CLUSTER_IPS, keys.NODE_PORTS):
        for entry in store.list(prefix):
            if _service_of(entry) == ref:
                store.delete(entry.key)

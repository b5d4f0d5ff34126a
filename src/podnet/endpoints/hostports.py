"""The CNI side of services/ports.py: host ports that a cluster's node port could be.

ADD claims them after its pending endpoint record is written and before the kernel is
programmed (a service's node port refuses the ADD, and its ExitStack undoes the
reservation and the record); DEL releases them before it deletes the record; GC and
the agent's resync prune the holders of endpoints that are gone. Only for a store the
config names (the cluster conflist's shared store), with the node-port range of its
service settings (else the default range, which `apply` uses then too): a docker-style
network's ports, in a store of its own, stay per host, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import ExitStack, suppress

from podnet.cni.config import HOST_ROUTED_MODES, CniCall, parse_conf
from podnet.errors import PodnetError
from podnet.kernel.nat.parse import parse_port_mappings
from podnet.model.endpoint import EndpointRecord
from podnet.model.service import PortHolder
from podnet.services import ports
from podnet.store.base import Store


def _span(call: CniCall, store: Store) -> tuple[int, int] | None:
    if not call.shared_store or call.conf.mode not in HOST_ROUTED_MODES:
        return None
    return ports.node_port_range(store)


def _ports(mappings: Iterable[Mapping], span: tuple[int, int]) -> list[ports.Port]:
    return ports.in_range(((m.protocol, m.host_port) for m in parse_port_mappings(mappings)), span)


def _holder(call: CniCall, node: str) -> PortHolder:
    return PortHolder(node, call.conf.name, call.request.container_id, call.request.ifname)


def claim(call: CniCall, store: Store, node: str, undo: ExitStack) -> None:
    """Claim the call's host ports of the node-port range for its endpoint (written
    by `node`); the undo releases what this call added."""
    if not call.conf.port_mappings:
        return
    span = _span(call, store)
    if span is None:
        return
    wanted = _ports(call.conf.port_mappings, span)
    if wanted:
        holder = _holder(call, node)
        undo.callback(ports.release, store, ports.claim(store, wanted, holder), holder)


def release(call: CniCall, store: Store, record: EndpointRecord | None) -> None:
    """DEL: release the host ports the endpoint published (those of its ADD's config,
    as recorded, and those of the DEL's); a holder missed here is pruned once its
    record is gone. An endpoint that published nothing costs no store read."""
    sources = [call.conf.port_mappings]
    if record is not None and record.config:
        with suppress(PodnetError):
            sources.append(parse_conf(record.config).port_mappings)
    span = _span(call, store) if any(sources) else None
    if span is None:
        return
    wanted: set[ports.Port] = set()
    for mappings in sources:
        with suppress(PodnetError):  # mappings that never passed an ADD claimed nothing
            wanted.update(_ports(mappings, span))
    ports.release(store, sorted(wanted), _holder(call, ""))


def prune(call: CniCall, store: Store) -> list[str]:
    """GC: drop the holders of endpoints that are gone (any node's: a holder without
    its endpoint record is garbage, services/ports.py says why)."""
    return ports.prune(store) if call.shared_store else []

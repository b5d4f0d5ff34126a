"""Agent start-up resync: make the kernel agree with the store, in the agent's own
network namespace, before serving anything.

1. Roll back ADDs whose owner died mid-way (pending endpoint records and pending IPAM
   reservations of dead processes): their links, rules and addresses go.
2. Repair ready endpoints: a missing bridge, gateway address, routed pod's host route or
   NAT rule is re-created.
3. Remove orphans: podnet host veths and NAT rules that no endpoint of any known store
   claims (endpoints/stores.py: the agent's store, the stores networks pointed it at,
   and those the plugin's fallback noted while no agent ran), and the tombstones of
   veth pairs whose DEL answered but whose deletion an agent that died never did
   (kernel/tombstone.py: a veth named "pnz" + 12 hex with podnet's alias, nobody's
   claim; swept even when a store cannot be read).

Steps 1 and 2 judge only this node's records built in this namespace (podnet/
identity.py): a store may be shared by machines whose root namespaces all look alike,
and another node's pods are its own agent's to repair or roll back. Step 3 counts every
record as a claim, this node's or not, readable or not; and when a known store cannot
be read, it removes nothing at all (what that store claims is unknown).

Everything that is already right is left untouched, so a restart of a healthy agent
changes nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from contextlib import suppress
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from podnet import keys
from podnet.attach import routed
from podnet.cni.config import CniCall, PodnetConf, parse_call
from podnet.endpoints.ipam import ipam_for
from podnet.endpoints.service import CniService, read_record, retry_conflicts, teardown_request
from podnet.errors import PodnetError
from podnet.ipam.result import parse_addresses
from podnet.ipam.service import IpamService
from podnet.kernel import links, netns, tombstone
from podnet.model.endpoint import EndpointRecord
from podnet.naming import attach_id, host_veth_name, net_id
from podnet.services import ports
from podnet.store.base import Store

log = logging.getLogger("podnet.resync")
HOST_VETH = re.compile(r"^pn[0-9a-f]{11}$")


@dataclass
class ResyncReport:
    rolled_back: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    orphan_links: list[str] = field(default_factory=list)
    orphan_rules: list[str] = field(default_factory=list)

    def changed(self) -> bool:
        return any(vars(self).values())


def resync(service: CniService) -> ResyncReport:
    """Resync every store the agent knows, then sweep orphans once (host veths and
    NAT rules not when a store other than the agent's own could not be read, its own
    failing fails the start; tombstones always: nothing claims them)."""
    report = ResyncReport()
    claimed_links: set[str] = set()
    claimed_rules: set[tuple[str, str]] = set()
    host_fd = netns.current_netns_fd()
    complete = True
    try:
        for path in service.known_stores():
            try:
                _resync_store(service, service.store(path), host_fd, report, claimed_links, claimed_rules)
            except (PodnetError, OSError) as exc:
                if path == service.default_store:
                    raise
                complete = False
                log.error("cannot resync store %s (%s): no orphan is removed until it can be read", path, exc)
        report.orphan_links = _remove_orphan_links(host_fd, claimed_links if complete else None)
        if complete:
            with netns.entered(host_fd):
                report.orphan_rules = sorted(service.nat().remove_unclaimed(claimed_rules))
    finally:
        os.close(host_fd)
    return report


def _resync_store(
    service: CniService,
    store: Store,
    host_fd: int,
    report: ResyncReport,
    claimed_links: set[str],
    claimed_rules: set[tuple[str, str]],
) -> None:
    me = service.host_netns(host_fd)
    for entry in store.list(keys.endpoints()):
        network, cid, ifname = keys.parse_endpoint(entry.key)
        record = read_record(entry.value)
        if record is None:
            log.warning("skipping unreadable endpoint record %s", entry.key)
        elif service.owns(record, me) and _resync_endpoint(service, store, entry.key, record, host_fd, report):
            continue  # rolled back: it claims nothing any more
        # Another node's, built for a caller in another namespace, or unreadable: not
        # ours to judge, but nobody's orphan either.
        aid = record.attach_id if record is not None else attach_id(network, cid, ifname)
        claimed_links.update(links_claimed(record, aid))
        claimed_rules.add((net_id(network), aid))
    # Second net: reservations whose ADD died before its endpoint record was written
    # (a veth it built is claimed by nobody: the orphan sweep removes it).
    for reservation in retry_conflicts(IpamService(store, identity=service.identity).rollback_dead_pending):
        report.released.append(f"{reservation.network}/{reservation.address}")
    # Host ports claimed by endpoints that are gone (rolled back above, or freed with
    # a dead node's block): their claims must not keep a node port from a service.
    report.released.extend(ports.prune(store))  # their claim keys


def links_claimed(record: EndpointRecord | None, aid: str) -> tuple[str, ...]:
    """The host links an endpoint record keeps from the orphan sweep: those it names,
    else (pending, or unreadable) the host veth its attachment would have."""
    return tuple((record.host_links if record is not None else ()) or [host_veth_name(aid)])


def _resync_endpoint(service: CniService, store: Store, key: str, record: EndpointRecord, host_fd: int,
                     report: ResyncReport) -> bool:
    """One endpoint of this node and namespace: roll it back if its ADD died (True),
    else repair it if it is ready."""
    network, cid, ifname = keys.parse_endpoint(key)
    try:
        call = parse_call(teardown_request(cid, ifname, record, record.cni_path, record.config),
                          service.default_store)
    except PodnetError as exc:
        log.warning("skipping unparsable endpoint %s: %s", key, exc.msg)
        return False
    if record.pending and not service.identity.owner_alive(record.owner):
        _roll_back(service, store, call, record, host_fd)
        store.delete(key)
        report.rolled_back.append(f"{network}/{cid}/{ifname}")
        return True
    if not record.pending:  # an ADD in flight elsewhere is left alone
        report.repaired.extend(_repair(service, call.conf, record, host_fd))
    return False


def _roll_back(service: CniService, store: Store, call: CniCall, record: EndpointRecord, host_fd: int) -> None:
    req = call.request
    container_fd = None
    with suppress(PodnetError):
        container_fd = netns.open_netns(req.netns) if req.netns else None
    try:
        with suppress(PodnetError):
            service.teardown(call.conf, req, record, host_fd, container_fd)
        with suppress(PodnetError):
            ipam_for(call, store, service.identity).release()
    finally:
        if container_fd is not None:
            os.close(container_fd)


def _repair(service: CniService, conf: PodnetConf, record: EndpointRecord, host_fd: int) -> list[str]:
    """Re-create missing host-side state of a ready bridge or routed endpoint."""
    if conf.mode == "routed":
        fixed = routed.repair(host_fd, record.attach_id, [ipaddress.ip_interface(a) for a in record.ips])
        host_if = record.host_links[0] if record.host_links else None
    elif conf.mode == "bridge":
        fixed, host_if = _repair_bridge(conf, record, host_fd), conf.bridge
    else:
        return []
    if record.nat:
        ips = [ipaddress.ip_interface(a) for a in record.ips]
        with netns.entered(host_fd):
            manager = service.nat()
            missing = manager.check(conf.name, record.attach_id, ips, list(conf.port_mappings), conf.masq_families,
                                    conf.ip_masq_exclude)
            if missing:
                manager.add(conf.name, record.attach_id, ips, list(conf.port_mappings), conf.masq_families, host_if,
                            conf.ip_masq_exclude)
                fixed.append(f"{len(missing)} NAT rule(s) of {record.attach_id}")
    return fixed


def _repair_bridge(conf: PodnetConf, record: EndpointRecord, host_fd: int) -> list[str]:
    """A bridge endpoint's bridge, gateway address and bridge port."""
    fixed: list[str] = []
    with netns.entered(host_fd), IPRoute() as ipr:
        if links.link_index(ipr, conf.bridge) is None:
            fixed.append(f"bridge {conf.bridge}")
        bridge = links.ensure_bridge(ipr, conf.bridge, conf.mtu)
        have = links.addresses(ipr, bridge)
        for ip in parse_addresses(record.result, "endpoint result"):
            if conf.is_gateway and ip.gateway is not None:
                gateway = f"{ip.gateway}/{ip.subnet.prefixlen}"
                if gateway not in have:
                    links.ensure_address(ipr, bridge, ipaddress.ip_interface(gateway), nodad=True)
                    fixed.append(f"gateway {gateway} on {conf.bridge}")
        for name in record.host_links:
            index = links.link_index(ipr, name)
            if index is not None and links.link_attr(ipr, index, "IFLA_MASTER") != bridge:
                links.attach_to_bridge(ipr, index, bridge, conf.hairpin_mode)
                fixed.append(f"{name} re-attached to {conf.bridge}")
    return fixed


def _remove_orphan_links(host_fd: int, claimed: set[str] | None) -> list[str]:
    """Host veths no endpoint claims (None: the claims are unknown, none is removed),
    and the tombstones of veth pairs whose DEL answered but whose agent died before
    deleting them (kernel/tombstone.py: never anybody's claim)."""
    removed = []
    with netns.entered(host_fd), IPRoute() as ipr:
        names = links.links_with_prefix(ipr, "pn")
        for name in names:
            if claimed is not None and HOST_VETH.match(name) and name not in claimed:
                index = links.link_index(ipr, name)
                if index is not None and links.link_kind(ipr, index) == "veth":
                    links.delete_link(ipr, name)
                    removed.append(name)
    return removed + tombstone.sweep(host_fd, names)

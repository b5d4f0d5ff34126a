"""Agent start-up resync: make the kernel agree with the store, in the agent's own
network namespace, before serving anything.

1. Roll back ADDs whose owner died mid-way (pending endpoint records and pending IPAM
   reservations of dead processes): their links, rules and addresses go.
2. Repair ready endpoints: a missing bridge, gateway address or NAT rule is re-created.
3. Remove orphans: podnet host veths and NAT rules that no endpoint claims.

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

from podnet import keys, procs
from podnet.cni.config import CniCall, PodnetConf, parse_call
from podnet.endpoints.ipam import ipam_for
from podnet.endpoints.service import CniService, read_record, retry_conflicts, teardown_request
from podnet.errors import PodnetError
from podnet.ipam.result import parse_addresses
from podnet.ipam.service import IpamService
from podnet.kernel import links, netns
from podnet.model.endpoint import EndpointRecord
from podnet.naming import attach_id, host_veth_name, net_id
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
    """Resync every store the agent knows, then sweep orphans once."""
    report = ResyncReport()
    claimed_links: set[str] = set()
    claimed_rules: set[tuple[str, str]] = set()
    host_fd = netns.current_netns_fd()
    try:
        for path in service.known_stores():
            _resync_store(service, service.store(path), host_fd, report, claimed_links, claimed_rules)
        report.orphan_links = _remove_orphan_links(host_fd, claimed_links)
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
    me = netns.identity(host_fd)
    for entry in store.list(keys.endpoints()):
        record = read_record(entry.value)
        if record is None:
            log.warning("skipping unreadable endpoint record %s", entry.key)
            continue
        if record.host_netns != me:
            continue  # built for a caller in another namespace: not ours to judge
        network, cid, ifname = keys.parse_endpoint(entry.key)
        try:
            call = parse_call(teardown_request(cid, ifname, record, record.cni_path, record.config),
                              service.default_store)
        except PodnetError as exc:
            log.warning("skipping unparsable endpoint %s: %s", entry.key, exc.msg)
            continue
        if record.pending and not procs.owner_alive(record.owner):
            _roll_back(service, store, call, record, host_fd)
            store.delete(entry.key)
            report.rolled_back.append(f"{network}/{cid}/{ifname}")
            continue
        claimed_links.update(record.host_links or [host_veth_name(record.attach_id)])
        claimed_rules.add((net_id(call.conf.name), record.attach_id))
        if not record.pending:  # an ADD in flight elsewhere is left alone
            report.repaired.extend(_repair(service, call.conf, record, host_fd))
    # Second net: reservations whose ADD died before its endpoint record was written.
    for reservation in retry_conflicts(IpamService(store).rollback_dead_pending):
        aid = attach_id(reservation.network, reservation.container_id, reservation.ifname)
        report.released.append(f"{reservation.network}/{reservation.address}")
        if host_veth_name(aid) not in claimed_links:
            with netns.entered(host_fd), IPRoute() as ipr:
                links.delete_link(ipr, host_veth_name(aid))


def _roll_back(service: CniService, store: Store, call: CniCall, record: EndpointRecord, host_fd: int) -> None:
    req = call.request
    container_fd = None
    with suppress(PodnetError):
        container_fd = netns.open_netns(req.netns) if req.netns else None
    try:
        with suppress(PodnetError):
            service.teardown(call.conf, req, record, host_fd, container_fd)
        with suppress(PodnetError):
            ipam_for(call, store).release()
    finally:
        if container_fd is not None:
            os.close(container_fd)


def _repair(service: CniService, conf: PodnetConf, record: EndpointRecord, host_fd: int) -> list[str]:
    """Re-create missing host-side state of a ready bridge endpoint."""
    if conf.mode != "bridge":
        return []
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
    if record.nat:
        ips = [ipaddress.ip_interface(a) for a in record.ips]
        with netns.entered(host_fd):
            manager = service.nat()
            missing = manager.check(conf.name, record.attach_id, ips, list(conf.port_mappings), conf.ip_masq,
                                    conf.ip_masq_exclude)
            if missing:
                manager.add(conf.name, record.attach_id, ips, list(conf.port_mappings), conf.ip_masq, conf.bridge,
                            conf.ip_masq_exclude)
                fixed.append(f"{len(missing)} NAT rule(s) of {record.attach_id}")
    return fixed


def _remove_orphan_links(host_fd: int, claimed: set[str]) -> list[str]:
    removed = []
    with netns.entered(host_fd), IPRoute() as ipr:
        for name in links.links_with_prefix(ipr, "pn"):
            if HOST_VETH.match(name) and name not in claimed:
                index = links.link_index(ipr, name)
                if index is not None and links.link_kind(ipr, index) == "veth":
                    links.delete_link(ipr, name)
                    removed.append(name)
    return removed

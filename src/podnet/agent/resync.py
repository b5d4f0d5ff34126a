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
import json
import logging
import os
import re
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from podnet import procs
from podnet.agent.cni_service import ENDPOINT_PREFIX, CniService, retry_conflicts
from podnet.cni.config import parse_conf
from podnet.cni.skel import CniRequest
from podnet.errors import PodnetError
from podnet.ipam.service import IpamService
from podnet.kernel import links, netns
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


def _request_from(key: str, record: Mapping) -> CniRequest:
    network_cid_if = key[len(ENDPOINT_PREFIX) :]
    _network, cid, ifname = network_cid_if.split("/", 2)
    env = record.get("env", {})
    return CniRequest(
        command="DEL",
        container_id=cid,
        ifname=ifname,
        netns=record.get("netns", ""),
        path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
        config=record.get("config", {}),
    )


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
    me = list(netns.identity(host_fd))
    for entry in store.list(ENDPOINT_PREFIX):
        record = json.loads(entry.value)
        if record.get("host_netns") != me:
            continue  # built for a caller in another namespace: not ours to judge
        req = _request_from(entry.key, record)
        try:
            conf = parse_conf(req.config)
        except PodnetError as exc:
            log.warning("skipping unparsable endpoint %s: %s", entry.key, exc.msg)
            continue
        pending = record.get("state") == "pending"
        if pending and not procs.owner_alive(record.get("owner", "")):
            _roll_back(service, store, conf, req, record, host_fd)
            store.delete(entry.key)
            report.rolled_back.append(entry.key[len(ENDPOINT_PREFIX) :])
            continue
        claimed_links.update(record.get("host_links") or [host_veth_name(record["attach_id"])])
        claimed_rules.add((net_id(conf.name), record["attach_id"]))
        if not pending:  # an ADD in flight elsewhere is left alone
            report.repaired.extend(_repair(service, conf, record, host_fd))
    # Second net: reservations whose ADD died before its endpoint record was written.
    for reservation in retry_conflicts(IpamService(store).rollback_dead_pending):
        aid = attach_id(reservation.network, reservation.container_id, reservation.ifname)
        report.released.append(f"{reservation.network}/{reservation.address}")
        if host_veth_name(aid) not in claimed_links:
            with netns.entered(host_fd), IPRoute() as ipr:
                links.delete_link(ipr, host_veth_name(aid))


def _roll_back(service, store, conf, req: CniRequest, record: Mapping, host_fd: int) -> None:
    container_fd = None
    with suppress(PodnetError):
        container_fd = netns.open_netns(req.netns) if req.netns else None
    try:
        with suppress(PodnetError):
            service.teardown(conf, req, record, host_fd, container_fd)
        with suppress(PodnetError):
            service.ipam_release(req, conf, store)
    finally:
        if container_fd is not None:
            os.close(container_fd)


def _repair(service: CniService, conf, record: Mapping, host_fd: int) -> list[str]:
    """Re-create missing host-side state of a ready bridge endpoint."""
    if conf.mode != "bridge":
        return []
    fixed: list[str] = []
    result = record.get("result", {})
    with netns.entered(host_fd), IPRoute() as ipr:
        if links.link_index(ipr, conf.bridge) is None:
            fixed.append(f"bridge {conf.bridge}")
        bridge = links.ensure_bridge(ipr, conf.bridge, conf.mtu)
        have = links.addresses(ipr, bridge)
        for ip in result.get("ips", []):
            gw = ip.get("gateway")
            if conf.is_gateway and gw:
                prefix = ipaddress.ip_interface(ip["address"]).network.prefixlen
                if f"{gw}/{prefix}" not in have:
                    links.ensure_address(ipr, bridge, ipaddress.ip_interface(f"{gw}/{prefix}"), nodad=True)
                    fixed.append(f"gateway {gw}/{prefix} on {conf.bridge}")
        for name in record.get("host_links", []):
            index = links.link_index(ipr, name)
            if index is not None and links.link_attr(ipr, index, "IFLA_MASTER") != bridge:
                links.attach_to_bridge(ipr, index, bridge, conf.hairpin_mode)
                fixed.append(f"{name} re-attached to {conf.bridge}")
    if record.get("nat"):
        ips = [ipaddress.ip_interface(a) for a in record.get("ips", [])]
        with netns.entered(host_fd):
            manager = service.nat()
            missing = manager.check(conf.name, record["attach_id"], ips, list(conf.port_mappings), conf.ip_masq,
                                    conf.ip_masq_exclude)
            if missing:
                manager.add(conf.name, record["attach_id"], ips, list(conf.port_mappings), conf.ip_masq, conf.bridge,
                            conf.ip_masq_exclude)
                fixed.append(f"{len(missing)} NAT rule(s) of {record['attach_id']}")
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

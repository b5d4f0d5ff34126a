"""`podnet container connect|disconnect NET NAME`: a running container joins or
leaves a further network, as `docker network connect` does.

Each attachment is its own CNI ADD (own ifname, own IPAM reservation, own result
cache), made with the network's conflist as a secondary (no default route: it
stays on the primary network's eth0). Both run under the container's teardown lock,
so they never race each other, a `stop` or the agent's reaper; the record is updated
by compare-and-put after the kernel side is done, and a connect whose record update
fails is undone (DEL), so a failure leaves no interface and no reservation.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

from podnet.containers.lifecycle import Host, attach_network, locked
from podnet.containers.network import load_named_network
from podnet.containers.spec import ContainerError, check_name, next_ifname
from podnet.model.container import ContainerRecord


def _connectable(host: Host, name: str, network: str) -> ContainerRecord:
    """The running bridge-mode container `name`, with its namespace in place."""
    check_name(network, "network name")
    record = host.records.require(name)
    if record.network_mode != "bridge":
        raise ContainerError(f"container {name} uses --network {record.network_mode}: it has no networks to change",
                             "only containers on named networks can connect and disconnect")
    if record.state != "running" or not record.netns or not os.path.exists(record.netns):
        raise ContainerError(f"container {name} is not running (state {record.state})",
                             "networks can be connected to and disconnected from running containers only")
    return record


def connect(host: Host, network_name: str, name: str) -> ContainerRecord:
    """CNI ADD of `network_name` on the next free ethN; returns the updated record."""
    record = _connectable(host, name, network_name)
    files = host.files(record.id)
    with locked(files), ExitStack() as undo:
        record = host.records.require(name)
        if record.attachment(network_name) is not None:
            raise ContainerError(f"container {name} is already on network {network_name}",
                                 f"its networks: {', '.join(record.networks)}")
        network = load_named_network(host.store, host.paths, network_name).as_secondary()
        host.cni.ensure_installed()
        host.cni.check_versions(network.conflist)
        ifname = next_ifname([a.ifname for a in record.network_attachments])
        undo.callback(host.cni.detach, files, ifname)
        attached = attach_network(host, files, record.id, record.netns or "", network, ifname)

        def add(rec: ContainerRecord) -> ContainerRecord | None:
            if rec.state != "running" or rec.attachment(network_name) is not None:
                return None
            return rec.with_attachments((*rec.network_attachments, attached))

        updated = host.records.update(name, record.id, add)
        if updated is None:
            raise ContainerError(f"container {name} changed while connecting it to {network_name}",
                                 "it stopped or was removed; nothing was left attached")
        undo.pop_all()
    return updated


def disconnect(host: Host, network_name: str, name: str) -> ContainerRecord:
    """CNI DEL of one secondary attachment (its address is free again); the primary
    network stays (the container would lose its default route and its DNS)."""
    record = _connectable(host, name, network_name)
    files = host.files(record.id)
    with locked(files):
        record = host.records.require(name)
        attachment = record.attachment(network_name)
        if attachment is None:
            raise ContainerError(f"container {name} is not on network {network_name}",
                                 f"its networks: {', '.join(record.networks) or 'none'}")
        if record.networks[0] == network_name:
            raise ContainerError(f"network {network_name} is the primary network of container {name}"
                                 " and cannot be disconnected",
                                 "it holds eth0 and the default route; remove the container instead")
        host.cni.detach(files, attachment.ifname)
        updated = host.records.update(name, record.id, lambda rec: rec.with_attachments(
            tuple(a for a in rec.network_attachments if a.network != network_name)))
    return updated or host.records.require(name)


__all__ = ["connect", "disconnect"]

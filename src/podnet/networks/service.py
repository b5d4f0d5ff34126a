"""NetworkService: create, list, inspect and remove user-defined networks.

A network is one store record (`networks/<name>`, the source of truth the agent
watches) plus its rendered conflist (`<state>/net.d/<name>.conflist`, what a runtime
executes). Create checks everything first, then writes both inside one store
transaction, and removes the file again if the transaction fails: a failed create
leaves nothing behind. Remove deletes the conflist before the record: no runtime
attaches to a network whose isolation is going away. The isolation table is the
agent's job (it watches the store); `sync_isolation()` only asks it to converge now.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podnet import fileio, keys
from podnet.errors import InvalidConfig
from podnet.model.base import CorruptRecord
from podnet.model.container import ContainerRecord
from podnet.model.network import NAME_RE, NetworkRecord
from podnet.networks import conflist
from podnet.networks.errors import NetworkExists, NetworkInUse, NetworkNotFound
from podnet.networks.plan import NetworkRequest, plan_network
from podnet.state import StatePaths, agent_socket
from podnet.store import Store, open_store
from podnet.store.base import dumps

SYNC_OP = "network.sync"  # the isolation service's op on the agent socket


@dataclass(frozen=True)
class Removal:
    """What `rm` did: the network, the containers that lost it, the bridge link."""

    network: NetworkRecord
    detached: list[dict[str, Any]] = field(default_factory=list)
    bridge_deleted: bool = False


class NetworkService:
    """Networks of one state directory. `socket_path` is the agent socket the conflists
    name (and `sync_isolation` calls); default $PODNET_AGENT_SOCKET or the standard one."""

    def __init__(
        self,
        paths: StatePaths,
        socket_path: str | None = None,
        store: Store | None = None,
        ipam_store: Store | None = None,
    ) -> None:
        # Pass `store`/`ipam_store` where the process already holds those files open
        # (the agent): one SqliteStore per file and process.
        self.paths = paths
        self.socket_path = agent_socket(socket_path)
        self._store = store
        self._own_store = store is None
        self._ipam_store = ipam_store

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(str(self.paths.store))
        return self._store

    def close(self) -> None:
        if self._own_store and self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> NetworkService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading

    def conflist_path(self, name: str) -> Path:
        if not NAME_RE.fullmatch(name):  # never build a path from an unchecked name
            raise InvalidConfig(f"invalid network name {name!r}")
        return self.paths.net_d / f"{name}.conflist"

    def list(self) -> list[NetworkRecord]:
        return [NetworkRecord.from_json(e.json()) for e in self.store.list(keys.NETWORKS)]

    def get(self, name: str) -> NetworkRecord:
        raw = self.store.get_json(keys.network(name)) if NAME_RE.fullmatch(name or "") else None
        if raw is None:
            raise NetworkNotFound(name)
        return NetworkRecord.from_json(raw)

    def containers_on(self, name: str) -> list[dict[str, Any]]:
        """Who is attached: podnet containers whose record names this network (in any
        state), plus CNI attachments of other runtimes that hold addresses in it. A
        container record that does not decode is passed over (`podnet container
        inspect` names its fault)."""
        attached: dict[str, dict[str, Any]] = {}
        for entry in self.store.list(keys.CONTAINERS):
            try:
                record = ContainerRecord.from_entry(entry)
            except CorruptRecord:
                continue
            attachment = record.attachment(name)
            if attachment is not None:
                attached[record.id or record.name] = {
                    "name": record.name, "id": record.id, "state": record.state, "ips": list(attachment.ips),
                }
        for cid, ips in self._cni_attachments(name).items():
            attached.setdefault(cid, {"name": None, "id": cid, "state": "attached (CNI)", "ips": ips})
        return sorted(attached.values(), key=lambda c: (c["name"] or "", c["id"] or ""))

    def _cni_attachments(self, name: str) -> dict[str, list[str]]:
        """container ID -> addresses reserved by podnet-ipam (the conflist's dataDir)."""
        from podnet.cni.config import store_path_for
        from podnet.ipam.service import IpamService

        ipam_store = self._ipam_store
        if ipam_store is None:
            path = store_path_for({"ipam": {"dataDir": str(self.paths.root)}})
            if not os.path.exists(path):  # never create a store just to read it
                return {}
            ipam_store = open_store(path)
        try:
            out: dict[str, list[str]] = {}
            for res in IpamService(ipam_store).reservations(name):
                out.setdefault(res.container_id, []).append(res.address)
            return out
        finally:
            if ipam_store is not self._ipam_store:
                ipam_store.close()

    # -- changing

    def create(
        self,
        name: str,
        *,
        driver: str = "bridge",
        subnets: Sequence[str] = (),
        gateways: Sequence[str] = (),
        ip_ranges: Sequence[str] = (),
        parent: str | None = None,
        mtu: int | None = None,
        internal: bool = False,
        labels: Mapping[str, str] | None = None,
        vlan: int | None = None,
    ) -> NetworkRecord:
        """Validate, then store the record and write the conflist (both or neither)."""
        req = NetworkRequest(
            name=name, driver=driver, subnets=tuple(subnets), gateways=tuple(gateways),
            ip_ranges=tuple(ip_ranges), parent=parent, mtu=mtu, internal=internal,
            labels=dict(labels or {}), vlan=vlan,
        )
        path: Path | None = None
        try:
            with self.store.transaction():
                existing = self.list()
                network = plan_network(req, existing, _new_id(existing), time.time())
                if network.parent is not None:
                    _check_parent(network.parent)
                document = conflist.render(network, self.socket_path, str(self.paths.root))
                conflist.validate(document)
                target = self.conflist_path(name)
                if target.exists():
                    raise NetworkExists(
                        f"network name {name!r} is already in use by {target}",
                        "that conflist was not written by `podnet network create`; move it away",
                    )
                if self.store.compare_and_put(network.key, dumps(network.to_json()), 0) is None:
                    raise NetworkExists(f"network name {name!r} is already in use")
                self.store.delete(keys.none_left("networks"))  # networks again (see remove)
                path = target  # from here on the file is ours to remove on failure
                target.parent.mkdir(parents=True, exist_ok=True)
                fileio.write_atomic(target, json.dumps(document, indent=2) + "\n")  # whole or none
        except BaseException:
            if path is not None:
                fileio.remove(path)
            raise
        return network

    def remove(self, name: str, force: bool = False) -> Removal:
        """Delete the conflist, the record and the bridge. Refuses while containers are
        attached unless `force`; then they keep running without this network.

        The conflist goes first (and durably), inside the transaction: from then on no
        runtime can attach, while the record, and so the agent's isolation of the
        network, stays until the delete commits. A crash or a failed delete leaves a
        record without a conflist (a second rm finishes), never a usable conflist
        without isolation."""
        with self.store.transaction():
            network = self.get(name)
            attached = self.containers_on(name)
            if attached and not force:
                who = ", ".join(c["name"] or c["id"] for c in attached)
                raise NetworkInUse(
                    f"network {name!r} has {len(attached)} attached container(s): {who}",
                    "stop and remove them first, or use --force",
                )
            fileio.remove(self.conflist_path(name))
            self.store.delete(network.key)
            if not self.store.list(keys.NETWORKS):  # the marker that lets the agent drop isolation
                self.store.put(keys.none_left("networks"), dumps({"deletedAt": time.time()}))
        deleted = network.bridge is not None and delete_bridge(network.bridge)
        return Removal(network, attached, deleted)

    def sync_isolation(self, timeout: float = 10.0) -> Any:
        """Ask the agent to apply the isolation table now; AgentUnavailable if none runs."""
        from podnet.rpc.client import call

        return call(self.socket_path, SYNC_OP, timeout=timeout)


def _new_id(existing: Sequence[NetworkRecord]) -> str:
    """A random 64-hex id whose bridge name (id[:10]) no other network uses."""
    taken = {n.id[:10] for n in existing}
    while True:
        network_id = secrets.token_hex(32)
        if network_id[:10] not in taken:
            return network_id


def _check_parent(parent: str) -> None:
    """The macvlan parent must exist in this (the caller's) network namespace.
    if_nametoindex asks the kernel through a socket, so it sees the thread's namespace
    (sysfs would show the namespace /sys was mounted in)."""
    try:
        socket.if_nametoindex(parent)
    except OSError:
        raise InvalidConfig(
            f"parent interface {parent!r} does not exist in this network namespace"
        ) from None


def delete_bridge(name: str) -> bool:
    """Delete the bridge `name` in the caller's namespace if it exists and is a bridge
    (a link of another kind with that name is not ours). pyroute2 is imported only
    when there is something to delete."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    from pyroute2 import IPRoute

    from podnet.kernel import links

    with IPRoute() as ipr:
        index = links.link_index(ipr, name)
        if index is None or links.link_kind(ipr, index) != "bridge":
            return False
        return links.delete_link(ipr, name)

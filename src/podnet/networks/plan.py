"""From a `network create` request to a Network record (pure): every check that needs
no kernel and no file, so a bad request fails before anything is written."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from podnet.errors import InvalidConfig
from podnet.model.network import DRIVERS, NetworkRecord, bridge_name, check_name
from podnet.naming import is_ifname
from podnet.networks.errors import NetworkExists
from podnet.networks.subnets import DEFAULT_POOL, IPNetwork, plan_subnets

MTU_MIN = {4: 68, 6: 1280}  # IPv6 needs 1280 on every link (RFC 8200)
MTU_MAX = 65535
_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class NetworkRequest:
    """What `podnet network create` was asked for, before validation."""

    name: str
    driver: str = "bridge"
    subnets: Sequence[str] = ()
    gateways: Sequence[str] = ()
    ip_ranges: Sequence[str] = ()
    parent: str | None = None
    mtu: int | None = None
    internal: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


def _check_driver(req: NetworkRequest) -> None:
    if req.driver not in DRIVERS:
        raise InvalidConfig(f"unknown driver {req.driver!r}", f"podnet supports: {', '.join(DRIVERS)}")
    if req.driver == "bridge" and req.parent is not None:
        raise InvalidConfig("--parent is only for macvlan networks")
    if req.driver == "macvlan":
        if not req.parent:
            raise InvalidConfig(
                "macvlan networks need --parent", "the host interface the containers attach to, e.g. eth0"
            )
        if not is_ifname(req.parent):
            raise InvalidConfig(f"invalid --parent {req.parent!r}: not an interface name")


def _check_mtu(mtu: int | None, versions: set[int]) -> None:
    if mtu is None:
        return
    low = max(MTU_MIN[v] for v in versions)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not low <= mtu <= MTU_MAX:
        raise InvalidConfig(
            f"invalid --mtu {mtu!r}",
            f"must be an integer from {low} to {MTU_MAX}" + (" (the network has IPv6)" if 6 in versions else ""),
        )


def plan_network(
    req: NetworkRequest,
    existing: Sequence[NetworkRecord],
    network_id: str,
    created: float,
    pool: IPNetwork = DEFAULT_POOL,
) -> NetworkRecord:
    """The record to store; raises InvalidConfig or NetworkExists naming the problem."""
    check_name(req.name)
    if any(n.name == req.name for n in existing):
        raise NetworkExists(f"network name {req.name!r} is already in use")
    _check_driver(req)
    if not _ID.fullmatch(network_id):
        raise InvalidConfig(f"invalid network id {network_id!r}: want 64 hex digits")
    subnets = plan_subnets(req.subnets, req.gateways, req.ip_ranges, existing, pool)
    _check_mtu(req.mtu, {s.version for s in subnets})
    for label in req.labels:
        if not label or "=" in label:
            raise InvalidConfig(f"invalid label key {label!r}")
    return NetworkRecord(
        name=req.name,
        id=network_id,
        driver=req.driver,
        subnets=subnets,
        internal=req.internal,
        parent=req.parent if req.driver == "macvlan" else None,
        mtu=req.mtu,
        bridge=bridge_name(network_id) if req.driver == "bridge" else None,
        created=created,
        labels=dict(req.labels),
    )

"""From a `network create` request to a Network record (pure): every check that needs
no kernel and no file, so a bad request fails before anything is written."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from podnet.errors import InvalidConfig
from podnet.model.network import DRIVERS, VLAN_MAX, VLAN_MIN, NetworkRecord, bridge_name, check_name
from podnet.naming import is_ifname
from podnet.networks.errors import NetworkExists
from podnet.networks.subnets import DEFAULT_POOL, IPNetwork, plan_subnets

MTU_MIN = {4: 68, 6: 1280}  # IPv6 needs 1280 on every link (RFC 8200)
MTU_MAX = 65535
_ID = re.compile(r"^[0-9a-f]{64}$")
_DOTTED_PARENT = re.compile(r"^(?P<parent>.+)\.(?P<vlan>[0-9]+)$")  # Docker's `-o parent=eth0.10`


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
    vlan: int | None = None  # macvlan on the 802.1Q sub-interface <parent>.<vlan>


def split_parent(parent: str | None, vlan: int | None) -> tuple[str | None, int | None]:
    """Docker's form `--parent eth0.10` is parent eth0 on VLAN 10; with `--vlan` as
    well, both must name the same VLAN. A parent without a numeric suffix is kept."""
    match = _DOTTED_PARENT.fullmatch(parent or "")
    if match is None:
        return parent, vlan
    dotted = int(match["vlan"])
    if vlan is not None and vlan != dotted:
        raise InvalidConfig(f"--parent {parent} names VLAN {dotted} but --vlan is {vlan}",
                            f"give the VLAN once: --parent {match['parent']} --vlan {vlan}")
    return match["parent"], dotted


def _check_vlan(req: NetworkRequest) -> None:
    if req.vlan is None:
        return
    if req.driver != "macvlan":
        raise InvalidConfig("--vlan is only for macvlan networks")
    if isinstance(req.vlan, bool) or not isinstance(req.vlan, int) or not VLAN_MIN <= req.vlan <= VLAN_MAX:
        raise InvalidConfig(f"invalid --vlan {req.vlan!r}",
                            f"a VLAN id is an integer from {VLAN_MIN} to {VLAN_MAX} (0 and 4095 are reserved)")
    if req.parent and not is_ifname(f"{req.parent}.{req.vlan}"):
        raise InvalidConfig(f"VLAN {req.vlan} on --parent {req.parent!r} would be named "
                            f"{req.parent}.{req.vlan}, longer than 15 bytes", "use a parent with a shorter name")


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
    if req.driver == "macvlan":
        parent, vlan = split_parent(req.parent, req.vlan)
        req = replace(req, parent=parent, vlan=vlan)
    _check_driver(req)
    _check_vlan(req)
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
        vlan=req.vlan,
    )

"""Extra pod networks of a lab topology, Multus-style (pure): the `networks:` a
topology declares and the ones each pod joins, by its `networks:` list or by Multus'
annotation `k8s.v1.cni.cncf.io/networks: "a,b"`. Errors are InvalidConfig naming the
field path (lab/topology.py turns them into TopologyError); lab/extra_networks.py
renders and attaches them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from podnet.cluster.leases import CLUSTER_NETWORK
from podnet.errors import InvalidConfig
from podnet.naming import is_ifname

TYPES = ("macvlan", "bridge")
MACVLAN_MODES = ("bridge", "private", "vepa")  # passthru would take the node's eth0 away
MAX_PER_POD = 4
BRIDGE_PREFIX = "pnx-"  # + the name: at most 15 bytes
NAME_MAX = 15 - len(BRIDGE_PREFIX)
MULTUS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class ExtraNetwork:
    name: str
    type: str  # macvlan | bridge
    subnet: str
    mode: str = "bridge"  # macvlan mode
    master: str = "eth0"  # macvlan: the node's interface

    @property
    def bridge(self) -> str:
        return BRIDGE_PREFIX + self.name


def ifname(position: int) -> str:
    """The pod's interface for its `position`-th extra network (0-based): eth1, eth2, ..."""
    return f"eth{position + 1}"


def parse_networks(items: list, reserved: Mapping[str, str]) -> tuple[ExtraNetwork, ...]:
    """The topology's `networks:`; every error names its field path. `reserved`: what
    no subnet may overlap (description -> CIDR: the lab's cluster, service, underlay)."""
    found: dict[str, ExtraNetwork] = {}
    subnets: dict[str, object] = {}
    for i, item in enumerate(items):
        where = f"networks[{i}]"
        if not isinstance(item, dict):
            raise InvalidConfig(f"{where} must be a mapping, not {type(item).__name__}")
        unknown = sorted(set(map(str, item)) - {"name", "type", "subnet", "mode", "master"})
        if unknown:
            raise InvalidConfig(f"{where}: unknown field(s) {', '.join(unknown)}",
                                "allowed: master, mode, name, subnet, type")
        name = _network_name(item.get("name"), f"{where}.name")
        if name in found:
            raise InvalidConfig(f"{where}.name: network {name!r} is declared twice")
        kind = item.get("type")
        if kind not in TYPES:
            raise InvalidConfig(f"{where}.type must be {' or '.join(TYPES)}, not {kind!r}")
        subnet = _subnet(item.get("subnet"), f"{where}.subnet", {**reserved, **subnets})
        subnets[f"network {name!r}"] = subnet
        found[name] = ExtraNetwork(name, kind, str(subnet), *_macvlan_fields(item, kind, where))
    return tuple(found.values())


def _network_name(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > NAME_MAX or not _DNS_LABEL.fullmatch(value):
        raise InvalidConfig(f"{where}: invalid network name {value!r}",
                            f"a DNS label of 1-{NAME_MAX} lowercase letters, digits or '-' "
                            f"(the node's bridge is {BRIDGE_PREFIX}<name>)")
    if value == CLUSTER_NETWORK:
        raise InvalidConfig(f"{where}: {value!r} is the primary pod network's name")
    return value


def _subnet(value: object, where: str, taken: Mapping[str, object]) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        subnet = ipaddress.ip_network(str(value), strict=True) if isinstance(value, str) else None
    except ValueError as exc:
        raise InvalidConfig(f"{where}: {exc}") from None
    if subnet is None or "/" not in str(value):
        raise InvalidConfig(f"{where} must be a CIDR such as 192.168.50.0/24, not {value!r}")
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise InvalidConfig(f"{where}: {subnet} is too small (no room for a gateway and a pod)")
    for what, cidr in taken.items():
        if subnet.overlaps(ipaddress.ip_network(str(cidr))):
            raise InvalidConfig(f"{where}: {subnet} overlaps {what} ({cidr})")
    return subnet


def _macvlan_fields(item: Mapping, kind: str, where: str) -> tuple[str, str]:
    if kind != "macvlan":
        for key in ("mode", "master"):
            if key in item:
                raise InvalidConfig(f"{where}.{key} applies to macvlan networks only")
        return "bridge", "eth0"
    mode = item.get("mode", "bridge")
    if mode not in MACVLAN_MODES:
        raise InvalidConfig(f"{where}.mode must be one of {', '.join(MACVLAN_MODES)}, not {mode!r}")
    master = item.get("master", "eth0")
    if not isinstance(master, str) or not is_ifname(master):
        raise InvalidConfig(f"{where}.master: {master!r} is not an interface name")
    return mode, master


def pod_networks(raw: Mapping, where: str, declared: Sequence[ExtraNetwork]) -> tuple[str, ...]:
    """A pod's extra networks, from `networks:` or Multus' annotation (not both), in
    order; each declared, none twice, at most MAX_PER_POD."""
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in annotations.items()):
        raise InvalidConfig(f"{where}.annotations must map strings to strings")
    if MULTUS_ANNOTATION in annotations:
        if raw.get("networks") is not None:
            raise InvalidConfig(f"{where}: give the extra networks once, as networks or as the "
                                f"{MULTUS_ANNOTATION} annotation, not both")
        field = f"{where}.annotations[{MULTUS_ANNOTATION}]"
        names = _multus_names(annotations[MULTUS_ANNOTATION], field)
    else:
        field = f"{where}.networks"
        names = raw.get("networks") or []
        if not isinstance(names, list):
            raise InvalidConfig(f"{field} must be a list of network names, not {type(names).__name__}")
    known = {n.name for n in declared}
    for name in names:
        if not isinstance(name, str) or name not in known:
            raise InvalidConfig(f"{field}: unknown network {name!r}",
                                f"declared under networks: {', '.join(sorted(known)) or 'none'}")
    if len(set(names)) != len(names):
        raise InvalidConfig(f"{field}: a network is listed twice")
    if len(names) > MAX_PER_POD:
        raise InvalidConfig(f"{field}: at most {MAX_PER_POD} extra networks per pod, not {len(names)}")
    return tuple(names)


def _multus_names(text: str, field: str) -> list[str]:
    """Multus' short form, `a,b`: names of networks of the lab (no namespace/ or @ifname:
    the lab's networks have no namespace, and interfaces are eth1, eth2, ... in order)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if "/" in name or "@" in name or name.startswith(("[", "{")):
            raise InvalidConfig(f"{field}: {name!r} is not supported here",
                                "write network names separated by commas, e.g. \"storage,backup\"")
    return names

"""What a network's DNS server answers, computed from the store's records (pure).

Docker's embedded DNS semantics: on a user-defined network every *running* container
attached to it is known by its name, each of its aliases and its short ID (the first
12 characters of its ID), bare or qualified with the network's name
(`web` and `web.mynet`); a shared alias answers every holder. Containers of other
networks are invisible, so separate networks stay as isolated by name as by packets.
Reverse lookups (PTR) of a container's address give `<name>.<network>`.

Names compare case-insensitively (ASCII only, RFC 4343) and without the trailing dot.
Inputs are the typed records other modules write (`networks/<name>`,
`containers/<name>`); a record that does not decode never gets here (the agent's
DNS service skips it). What a valid record may still hold is skipped, never raised:
a name that cannot be asked for, an address that does not parse or lies outside the
network's subnets.
"""

from __future__ import annotations

import ipaddress
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from podnet.model.container import ContainerRecord
from podnet.model.network import NetworkRecord

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SHORT_ID_LEN = 12
MAX_NAME = 253
MAX_LABEL = 63
# Modes whose container has no address of its own on the network (Docker does not
# register them either: a `container:` joiner is reached through its host's name).
UNREGISTERED_MODES = frozenset({"host", "none", "container"})

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_HEX = frozenset(string.hexdigits)


def fold(name: str) -> str:
    """The comparison form of a name: ASCII-lowercased, one trailing dot removed."""
    if name.endswith("."):
        name = name[:-1]
    return name.translate(_ASCII_LOWER)


def valid_name(name: str) -> bool:
    """A name that can be asked for: printable ASCII without spaces, dot-separated
    labels of 1..63 bytes, 253 bytes in all. Others could never match a query."""
    if not name or len(name) > MAX_NAME or not name.isascii():
        return False
    if any(not ch.isprintable() or ch.isspace() for ch in name):
        return False
    return all(0 < len(label) <= MAX_LABEL for label in name.split("."))


def reverse_address(name: str) -> IPAddress | None:
    """The address a full reverse name stands for (`4.3.2.1.in-addr.arpa` ->
    1.2.3.4, 32 nibbles under `ip6.arpa`), else None (partial names included)."""
    labels = fold(name).split(".")
    try:
        if len(labels) == 6 and labels[4:] == ["in-addr", "arpa"]:
            return ipaddress.IPv4Address(".".join(reversed(labels[:4])))
        if len(labels) == 34 and labels[32:] == ["ip6", "arpa"]:
            nibbles = labels[:32]
            if all(len(n) == 1 and n in _HEX for n in nibbles):
                return ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16))
    except ValueError:
        return None
    return None


@dataclass(frozen=True)
class Zone:
    """One network's names. `lookup` follows the server's contract: a list of
    answers (empty: the name exists without data of that type), None: no such name
    here. `is_local` says which names belong to this zone at all (an unknown local
    name is NXDOMAIN, anything else may be forwarded or refused)."""

    network: str
    domain: str
    hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    pointers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    subnets: tuple[IPNetwork, ...] = ()

    def lookup(self, qname: str, qtype: str) -> list[str] | None:
        name = fold(qname)
        addresses = self.hosts.get(name)
        if qtype == "PTR":
            names = self.pointers.get(name)
            if names is not None:
                return list(names)
            return [] if addresses is not None else None
        if addresses is None:
            return [] if name in self.pointers else None
        if qtype == "A":
            return [a for a in addresses if ":" not in a]
        if qtype == "AAAA":
            return [a for a in addresses if ":" in a]
        if qtype == "ANY":
            return list(addresses)
        return []

    def is_local(self, qname: str) -> bool:
        name = fold(qname)
        if not name:
            return False
        if "." not in name or name == self.domain or name.endswith("." + self.domain):
            return True
        address = reverse_address(name)
        return address is not None and any(address in net for net in self.subnets)

    def allows(self, client: str) -> bool:
        """Whether a query from this source address may be answered: only from inside
        the network's subnets (see dns/server.py, `allow`)."""
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.subnets)

    def names(self) -> list[str]:
        """Every forward name the zone answers, sorted (for diagnostics)."""
        return sorted(self.hosts)


def container_labels(container: ContainerRecord) -> list[str]:
    """The names one container answers to: its name, aliases and short ID."""
    labels = [container.name, *container.aliases]
    if len(container.id) >= SHORT_ID_LEN:
        labels.append(container.id[:SHORT_ID_LEN])
    out: list[str] = []
    for label in map(fold, labels):
        if valid_name(label) and label not in out:
            out.append(label)
    return out


def container_addresses(container: ContainerRecord, subnets: tuple[IPNetwork, ...]) -> list[IPAddress]:
    """The container's addresses (CIDR or bare), only those inside the network's
    subnets when the network names any: a stale record cannot leak a foreign one."""
    out: list[IPAddress] = []
    for text in container.ips:
        try:
            address = ipaddress.ip_interface(text).ip
        except ValueError:
            continue
        if subnets and not any(address in net for net in subnets):
            continue
        if address not in out:
            out.append(address)
    return sorted(out, key=lambda a: (a.version, int(a)))


def attached(container: ContainerRecord, network: str) -> bool:
    """Running, on this network, with addresses of its own."""
    return (
        container.state == "running"
        and network in container.networks
        and container.network_mode not in UNREGISTERED_MODES
    )


def build_zone(network: NetworkRecord, containers: Iterable[ContainerRecord]) -> Zone:
    """The zone of one network from its record and (any superset of) its
    containers' records."""
    domain = fold(network.name)
    subnets = tuple(s.subnet for s in network.subnets)
    hosts: dict[str, list[str]] = defaultdict(list)
    pointers: dict[str, list[str]] = defaultdict(list)
    for container in containers:
        if not attached(container, network.name):
            continue
        labels = container_labels(container)
        addresses = container_addresses(container, subnets)
        if not labels or not addresses:
            continue
        for label in labels:
            for key in (label, f"{label}.{domain}"):
                if not valid_name(key):
                    continue
                for address in addresses:
                    if str(address) not in hosts[key]:
                        hosts[key].append(str(address))
        for address in addresses:
            pointers[address.reverse_pointer].append(f"{labels[0]}.{domain}")
    return Zone(
        network=network.name,
        domain=domain,
        hosts={k: tuple(_sorted_addresses(v)) for k, v in hosts.items()},
        pointers={k: tuple(sorted(set(v))) for k, v in pointers.items()},
        subnets=subnets,
    )


def build_zones(networks: Iterable[NetworkRecord], containers: Iterable[ContainerRecord]) -> dict[str, Zone]:
    """network name -> Zone, grouping containers once (not networks x containers)."""
    by_network: dict[str, list[ContainerRecord]] = defaultdict(list)
    for container in containers:
        for network in container.networks:  # a multi-network container is in each zone
            by_network[network].append(container)
    return {network.name: build_zone(network, by_network.get(network.name, [])) for network in networks}


def _sorted_addresses(addresses: list[str]) -> list[str]:
    parsed = [ipaddress.ip_address(a) for a in addresses]
    return [str(a) for a in sorted(parsed, key=lambda a: (a.version, int(a)))]

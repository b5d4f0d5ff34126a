"""What cluster members publish in the shared store: node leases, block claims, hosts.

- `nodes/<name>` -> NodeLease: the node's block, underlay address and interface,
  fabric and opaque backend data (e.g. the VTEP MAC), and its labels (what BGPPeer
  selectors match, `rack: r0`); written with a TTL and renewed.
- `blocks/<address>-<prefixlen>` -> BlockClaim: which node owns a block of the
  cluster CIDR, taken by compare-and-put so two nodes never share one; same TTL.
- `hosts/<name>` -> HostRecord: a plain (non-node) machine on the underlay, as the lab
  registers it or `podnet host join` writes it (with its podnet address), so policy
  can find a host endpoint's addresses and nodes route back to a joined host.

Names and addresses are checked when read back: they become routes and nft elements.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from podnet import addresses, keys
from podnet.errors import InvalidConfig
from podnet.model.base import CorruptRecord, Fields
from podnet.schema.fields import label_key_problem, label_value_problem
from podnet.store.base import dumps


def _address(f: Fields, name: str) -> str:
    try:
        return str(addresses.address(f.text(name), ""))
    except InvalidConfig as exc:
        raise f.error(name, exc.msg.strip()) from None


def _address6(f: Fields, name: str) -> str | None:
    if f.raw.get(name) is None:
        return None
    value = _address(f, name)
    if ipaddress.ip_address(value).version != 6:
        raise f.error(name, f"is not an IPv6 address: {value!r}")
    return value


def _block(f: Fields, name: str) -> str:
    value = f.text(name)
    try:
        return str(ipaddress.IPv4Network(value))
    except ValueError:
        raise f.error(name, f"is not an IPv4 network: {value!r}") from None


def _block6(f: Fields, name: str) -> str | None:
    value = f.raw.get(name)
    if value is None:
        return None
    try:
        return str(ipaddress.IPv6Network(f.text(name)))
    except ValueError:
        raise f.error(name, f"is not an IPv6 network: {value!r}") from None


def _labels(f: Fields, name: str) -> dict[str, str]:
    """Label keys and values by Kubernetes' rules: selectors match them."""
    labels = f.labels(name)
    for key, value in labels.items():
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            raise f.error(name, problem)
    return dict(sorted(labels.items()))


@functools.lru_cache(maxsize=4096)
def block_network(block: str) -> ipaddress.IPv4Network:
    """A block's network, parsed once: a node's pass looks at every peer's block a few
    times, and a 100-node lab's agents each did a pass per join (ValueError as ever)."""
    return ipaddress.IPv4Network(block)


@dataclass(frozen=True)
class NodeLease:
    """What one node publishes about itself (`nodes/<name>`)."""

    name: str
    block: str
    underlay_ip: str
    underlay_if: str
    fabric: str
    backend: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)  # absent in leases before issue 12: {}
    block6: str | None = None  # a dual-stack node's IPv6 block, its IPv4 block's twin (cluster/dualstack.py)
    underlay_ip6: str | None = None  # the underlay's IPv6 address, when it has one

    @property
    def key(self) -> str:
        return keys.node(self.name)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return block_network(self.block)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "block": self.block,
            "underlay_ip": self.underlay_ip,
            "underlay_if": self.underlay_if,
            "fabric": self.fabric,
            "backend": dict(self.backend),
            "started": self.started,
            **({"labels": dict(sorted(self.labels.items()))} if self.labels else {}),
            **({"block6": self.block6} if self.block6 else {}),
            **({"underlay_ip6": self.underlay_ip6} if self.underlay_ip6 else {}),
        }

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "node lease") -> NodeLease:
        f = Fields(raw, what)
        name = f.text("name")
        keys.segment(name, "node name")
        return cls(
            name=name,
            block=_block(f, "block"),
            underlay_ip=_address(f, "underlay_ip"),
            underlay_if=f.text("underlay_if", ""),
            fabric=f.text("fabric", ""),
            backend=f.mapping("backend"),
            started=f.number("started"),
            labels=_labels(f, "labels"),
            block6=_block6(f, "block6"),
            underlay_ip6=_address6(f, "underlay_ip6"),
        )


def block_key(block: str | ipaddress.IPv4Network) -> str:
    """The claim's key of a block (`10.244.3.0/24` -> `blocks/10.244.3.0-24`)."""
    net = ipaddress.IPv4Network(block)
    return keys.block(str(net.network_address), net.prefixlen)


@dataclass(frozen=True)
class BlockClaim:
    """`blocks/<address>-<prefixlen>`: `node` owns `block` while the claim lives."""

    node: str
    block: str

    @property
    def key(self) -> str:
        return block_key(self.block)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "block": self.block}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "block claim") -> BlockClaim:
        f = Fields(raw, what)
        return cls(node=f.text("node"), block=_block(f, "block"))


@dataclass(frozen=True)
class HostRecord:
    """`hosts/<name>`: a plain machine on the underlay (rack, address), and its podnet
    address once `podnet host join` gave it one (`pod_ip`; "" = not joined: such a
    record encodes exactly as before the field existed)."""

    underlay_ip: str
    rack: int = 0
    pod_ip: str = ""

    @property
    def joined(self) -> bool:
        return bool(self.pod_ip)

    def to_json(self) -> dict[str, Any]:
        return {"underlay_ip": self.underlay_ip, "rack": self.rack, **({"pod_ip": self.pod_ip} if self.pod_ip else {})}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "host record") -> HostRecord:
        f = Fields(raw, what)
        rack = f.integer("rack", 0)
        if rack is None or rack < 0:
            raise CorruptRecord(f"{what}: field 'rack' must be a non-negative integer")
        pod_ip = _address(f, "pod_ip") if f.raw.get("pod_ip") else ""
        return cls(underlay_ip=_address(f, "underlay_ip"), rack=rack, pod_ip=pod_ip)

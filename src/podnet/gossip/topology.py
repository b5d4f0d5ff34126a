"""Who is connected to whom, as the gossip agrees it, and the first hop to every peer.

Design notes (Weave's topology gossip, router/peers.go, re-thought):
- Each peer publishes one entry about itself: its established connections (peer name ->
  the address it dials or saw that peer at, so others learn where to dial) and a version.
  Only the peer itself writes its entry, so merging is per peer: the higher version wins.
  The edge takes versions from a clock it never lets go backwards (`next_version`), so a
  restarted peer's entries win over the ones its former self left in the mesh.
- A link counts only when both ends report it (Weave's rule): a peer that lost a
  connection stops reporting it at once, while the other end may not have noticed yet.
- `next_hops` is a breadth-first search from this peer over those links, neighbours in
  name order, so every equal-length choice resolves the same way on every run: the
  path chosen is the smallest by names, hence the smallest first hop. Peers with no path
  are absent.
- `prune` forgets entries no longer reachable from this peer (Weave's peer GC); a peer
  that comes back publishes a new version anyway.

Pure: no clock, no sockets. Every field from the wire passes `PeerEntry.from_json`.
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PEER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PEER_NAME_MAX = 63
MAX_CONNECTIONS = 1024  # per entry: more than any mesh podnet runs
MAX_VERSION = 2**63 - 1


class TopologyError(ValueError):
    """A peer entry that does not hold (its message names the field)."""


def check_peer_name(name: object, what: str = "peer name") -> str:
    if not isinstance(name, str) or len(name) > PEER_NAME_MAX or not PEER_NAME_RE.fullmatch(name):
        raise TopologyError(f"{what}: not a peer name (letters, digits, '_.-', at most "
                            f"{PEER_NAME_MAX}): {str(name)[:80]!r}")
    return name


def check_address(text: object, what: str = "address") -> tuple[str, int]:
    """'host:port' (IPv6 as '[addr]:port') -> (host, port); host must be an IP address."""
    if not isinstance(text, str) or len(text) > 64:
        raise TopologyError(f"{what}: not an address text: {str(text)[:80]!r}")
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
        number = int(port) if sep and port.isdigit() else -1
    except ValueError:
        raise TopologyError(f"{what}: not 'ip:port': {text!r}") from None
    if not 0 < number < 65536:
        raise TopologyError(f"{what}: port out of range: {text!r}")
    return str(ip), number


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class PeerEntry:
    """What one peer publishes about itself."""

    name: str
    version: int
    connections: Mapping[str, str] = field(default_factory=dict)  # peer -> "ip:port"

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "connections": dict(sorted(self.connections.items()))}

    @classmethod
    def from_json(cls, raw: object) -> PeerEntry:
        if not isinstance(raw, dict):
            raise TopologyError("peer entry: not an object")
        name = check_peer_name(raw.get("name"), "peer entry name")
        version = raw.get("version")
        if type(version) is not int or not 0 <= version <= MAX_VERSION:
            raise TopologyError(f"peer entry {name}: version: not an integer in range")
        links = raw.get("connections")
        if not isinstance(links, dict) or len(links) > MAX_CONNECTIONS:
            raise TopologyError(f"peer entry {name}: connections: not an object of at most {MAX_CONNECTIONS}")
        for peer, address in links.items():
            check_peer_name(peer, f"peer entry {name}: connection")
            check_address(address, f"peer entry {name}: connection {peer}")
        return cls(name, version, dict(links))


Topology = Mapping[str, PeerEntry]


def merge(local: Topology, remote: Iterable[PeerEntry]) -> tuple[dict[str, PeerEntry], set[str]]:
    """Per peer, the higher version wins. Returns the merged map and the names that changed.

    Commutative, associative and idempotent: equal versions keep the local entry (a
    peer never publishes two entries with one version)."""
    merged = dict(local)
    changed: set[str] = set()
    for entry in remote:
        mine = merged.get(entry.name)
        if mine is None or entry.version > mine.version:
            merged[entry.name] = entry
            changed.add(entry.name)
    return merged, changed


def links(topology: Topology) -> dict[str, set[str]]:
    """The links both ends report: peer -> its neighbours."""
    both: dict[str, set[str]] = {}
    for name, entry in topology.items():
        for peer in entry.connections:
            other = topology.get(peer)
            if peer != name and other is not None and name in other.connections:
                both.setdefault(name, set()).add(peer)
    return both


def next_hops(topology: Topology, self_name: str) -> dict[str, str]:
    """peer -> the first hop on the shortest path to it (the peer itself: direct).

    Breadth-first from `self_name`, neighbours in name order: ties resolve to the path
    smallest by names. Unreachable peers (and `self_name`) are absent."""
    neighbours = links(topology)
    via: dict[str, str] = {}
    queue = deque()
    for peer in sorted(neighbours.get(self_name, ())):
        via[peer] = peer
        queue.append(peer)
    while queue:
        here = queue.popleft()
        for peer in sorted(neighbours.get(here, ())):
            if peer != self_name and peer not in via:
                via[peer] = via[here]
                queue.append(peer)
    return via


def prune(topology: Topology, self_name: str) -> dict[str, PeerEntry]:
    """Only this peer's entry and the entries of peers it can reach."""
    reachable = next_hops(topology, self_name)
    return {name: entry for name, entry in topology.items() if name == self_name or name in reachable}


def dial_addresses(topology: Topology, peer: str) -> list[str]:
    """Where others reach `peer` ("ip:port"), most reported first, then by text."""
    counts: dict[str, int] = {}
    for name, entry in topology.items():
        address = entry.connections.get(peer)
        if address is not None and name != peer:
            counts[address] = counts.get(address, 0) + 1
    return sorted(counts, key=lambda a: (-counts[a], a))


def to_dial(topology: Topology, self_name: str, connected: Iterable[str]) -> dict[str, list[str]]:
    """Every peer the topology names that this peer holds no connection to -> where
    others reach it (empty: nobody says; it cannot be dialed yet)."""
    known = set(topology) | {peer for entry in topology.values() for peer in entry.connections}
    return {peer: dial_addresses(topology, peer) for peer in sorted(known - set(connected) - {self_name})}


def keeps_first(self_name: str, peer: str, first_outbound: bool, second_outbound: bool) -> bool:
    """Two connections to one peer: keep the first one? When both ends dialed, the one
    the smaller name dialed stays, decided alike at both ends; when one side dialed
    twice, the newer stays (the peer restarted and the old one is dead)."""
    if first_outbound == second_outbound:
        return False
    first_dialer = self_name if first_outbound else peer
    return first_dialer == min(self_name, peer)


def next_version(current: int, now_ns: int) -> int:
    """A version above `current`, near the wall clock so a restart starts above its past."""
    return min(MAX_VERSION, max(current + 1, now_ns))

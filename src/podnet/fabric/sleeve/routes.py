"""Which peer an inner packet goes to: a table of destination prefix -> peer name,
set by the fabric, longest prefix first, cached per destination address (the sleeve
looks up one destination per super-packet, so the cache makes it one dict get).
Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CACHE_LIMIT = 4096


class RouteError(ValueError):
    """A route the table cannot take."""


def inner_destination(packet, offset: int = 0) -> bytes | None:
    """The destination address (4 or 16 bytes) of the IP packet at `offset`."""
    if len(packet) <= offset:
        return None
    version = packet[offset] >> 4
    if version == 4 and len(packet) >= offset + 20:
        return bytes(packet[offset + 16 : offset + 20])
    if version == 6 and len(packet) >= offset + 40:
        return bytes(packet[offset + 24 : offset + 40])
    return None


class RouteTable:
    def __init__(self, routes: Mapping[str, str] | None = None) -> None:
        self._routes: list[tuple[Network, str]] = []
        self._cache: dict[bytes, str | None] = {}
        self.replace(routes or {})

    def replace(self, routes: Mapping[str, str]) -> None:
        """Swap in a new table at once (a reader sees the old or the new one)."""
        parsed = []
        for prefix, peer in routes.items():
            try:
                network = ipaddress.ip_network(prefix, strict=True)
            except ValueError as exc:
                raise RouteError(f"route {prefix!r}: {exc}") from None
            if not peer:
                raise RouteError(f"route {prefix!r}: peer name is empty")
            parsed.append((network, peer))
        parsed.sort(key=lambda item: item[0].prefixlen, reverse=True)
        self._routes, self._cache = parsed, {}

    def lookup(self, destination: bytes) -> str | None:
        try:
            return self._cache[destination]
        except KeyError:
            pass
        address = ipaddress.ip_address(destination)
        peer = next(
            (p for net, p in self._routes if net.version == address.version and address in net),
            None,
        )
        cache = self._cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[destination] = peer
        return peer

    def as_dict(self) -> dict[str, str]:
        return {str(net): peer for net, peer in self._routes}

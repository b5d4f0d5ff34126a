"""The tokens of one service port, each checked once before any of it reaches an nft
script (pure): services/render.py builds the table from these, never from the plan's
raw values. Anything that cannot be one token (an address with a scope ID, a ref with
a quote, an id that is not [a-z0-9]{1,16}...) is one InvalidConfig naming the port.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from podnet.errors import InvalidConfig
from podnet.kernel import nftsyntax as tok
from podnet.services.plan import PROTOCOLS, Backend, ServicePort

FAMILIES = (4, 6)
MAX_AFFINITY = 86400  # seconds: Kubernetes' limit for sessionAffinityConfig.clientIP.timeoutSeconds
_ID = re.compile(r"[a-z0-9]{1,16}")


def address(text: object, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(text, str):
        raise InvalidConfig(f"{what}: {text!r} is not an IP address")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidConfig(f"{what}: {text!r} is not an IP address") from None
    tok.address(addr)  # refuses a scope ID
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast:
        raise InvalidConfig(f"{what}: {text} is an unspecified, loopback or multicast address")
    return addr


def by_family(values: Iterable[object], what: str) -> dict[int, list[str]]:
    """Address tokens of each family, sorted and without repeats."""
    found = {v: set() for v in FAMILIES}
    for value in values:
        addr = address(value, what)
        found[addr.version].add(addr)
    return {v: [tok.address(a) for a in sorted(addrs)] for v, addrs in found.items()}


@dataclass(frozen=True)
class BackendTokens:
    v: int
    addr: str  # nft token
    port: str
    local: bool

    @property
    def target(self) -> str:
        return f"[{self.addr}]:{self.port}" if self.v == 6 else f"{self.addr}:{self.port}"


def backend_tokens(values: Iterable[object]) -> list[BackendTokens]:
    """Backends once per ip:port (one endpoint in two slices is one backend; local wins)."""
    found: dict[tuple[int, str, str], bool] = {}
    for b in values:
        if not isinstance(b, Backend) or not isinstance(b.local, bool):
            raise InvalidConfig(f"backends: {b!r} is not a Backend")
        addr = address(b.ip, "backends")
        key = (addr.version, tok.address(addr), tok.port(b.port))
        found[key] = found.get(key, False) or b.local
    return [BackendTokens(v, a, p, local) for (v, a, p), local in sorted(found.items())]


class PortTokens:
    """One service port's tokens, checked once."""

    def __init__(self, sp: ServicePort) -> None:
        try:
            if not isinstance(sp, ServicePort):
                raise InvalidConfig(f"{sp!r} is not a ServicePort")
            if not isinstance(sp.id, str) or not _ID.fullmatch(sp.id):
                raise InvalidConfig(f"id {sp.id!r} must be 1-16 characters of a-z 0-9")
            self.id = sp.id
            self.ref = sp.ref
            self.comment = tok.comment(sp.ref)
            self.proto = tok.keyword(sp.protocol, PROTOCOLS)
            self.port = tok.port(sp.port)
            self.node_port = None if sp.node_port is None else tok.port(sp.node_port)
            self.cluster_ips = by_family(sp.cluster_ips, "cluster_ips")
            self.external_ips = by_family(sp.external_ips, "external_ips")
            self.backends = backend_tokens(sp.backends)
            self.affinity = None if sp.affinity_timeout is None else tok.integer(sp.affinity_timeout, 1, MAX_AFFINITY)
            if not isinstance(sp.external_local, bool) or not isinstance(sp.internal_local, bool):
                raise InvalidConfig("external_local and internal_local must be booleans")
            self.external_local = sp.external_local
            self.internal_local = sp.internal_local
        except InvalidConfig as exc:
            raise InvalidConfig(f"service port {getattr(sp, 'ref', sp)!r} cannot be rendered into nft: {exc.msg}",
                                exc.details) from None

    def name(self, kind: str) -> str:
        return tok.identifier(f"{kind}-{self.id}")

    def affinity_set(self, b: BackendTokens) -> str:
        return tok.identifier(f"aff-{self.id}-{_digest(b.addr, b.port, str(self.affinity))}")

    def note(self, text: str) -> str:
        return tok.comment(f"{self.ref} {text}")


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]

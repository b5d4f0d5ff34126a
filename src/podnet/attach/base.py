"""What every attachment kind gets and gives: the context of one (network, container,
ifname), and the interfaces it built for the CNI result."""

from __future__ import annotations

import ipaddress
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Protocol

from podnet.cni.config import PodnetConf

IPAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class AttachContext:
    conf: PodnetConf
    container_id: str
    ifname: str
    netns_path: str
    attach_id: str
    host_fd: int
    container_fd: int | None
    ips: tuple[IPAddr, ...] = ()
    gateways: tuple[str, ...] = ()
    routes: tuple[tuple[str, str | None], ...] = ()


@dataclass
class Attached:
    """The CNI `interfaces` list and the index of the container's interface in it."""

    interfaces: list[dict] = field(default_factory=list)
    container_index: int = 0
    host_if: str | None = None  # where NAT for published ports is anchored


class Attacher(Protocol):
    def add(self, ctx: AttachContext, undo: ExitStack) -> Attached: ...

    def delete(self, ctx: AttachContext) -> None: ...

    def check(self, ctx: AttachContext) -> None: ...

    def host_links(self, ctx: AttachContext) -> tuple[str, ...]: ...

"""What every attachment kind gets and gives: the context of one (network, container,
ifname), and the interfaces it built for the CNI result."""

from __future__ import annotations

import ipaddress
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Protocol

from podnet.cni.config import PodnetConf
from podnet.kernel.gso import GsoLimits
from podnet.kernel.tombstone import Reaper

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


def pod_end_gso(ctx: AttachContext, limits: GsoLimits) -> GsoLimits:
    """The limits of the pod's own end of its veth: `limits`, with IPv6 at most the
    config's `gsoMaxSizeIPv6` when the pod has an IPv6 address. A cluster node writes
    64 KiB there: the IPv6 BIG TCP packets a pod sends are refused by the node
    forwarding them (Ip6InTooBigErrors, measured at 0.01 Gbit/s), while IPv4 BIG TCP
    forwards. The host end keeps `limits` toward the pod. Given to the veth's one
    creating request: no extra round trip on ADD."""
    cap = ctx.conf.gso_max_size_ipv6
    if not cap or limits.ipv6 <= cap or not any(ip.version == 6 for ip in ctx.ips):
        return limits
    return GsoLimits(cap, limits.ipv4)


class Attacher(Protocol):
    def add(self, ctx: AttachContext, undo: ExitStack) -> Attached: ...

    def delete(self, ctx: AttachContext, reaper: Reaper | None = None) -> None:
        """Undo `add`; idempotent. With a `reaper` (the agent's DEL) a veth pair may be
        retired now and deleted just after (kernel/tombstone.py)."""

    def check(self, ctx: AttachContext) -> None: ...

    def host_links(self, ctx: AttachContext) -> tuple[str, ...]: ...

"""GSO/GRO size limits (BIG TCP): detected from the uplink, never typed.

Why: a TCP sender in a pod builds one GSO packet per `gso_max_size` bytes, and every
veth, bridge and routing step on the way costs per packet, not per byte. With the
classic 64 KiB limit a cross-node pod path (4 veths, 2 bridges, 2 forwards) reached
~0.72x of a plain veth pair; with 192 KiB packets it is at or above the pair. This is
Cilium's "BIG TCP", done the same way: pods get exactly what the node's uplink takes.

Why exactly the uplink's limit, never more: a forwarded GSO packet bigger than the
egress device's limit is segmented in software at that device, which overruns the
backlog and costs ~80% of throughput (measured: 3.4 Gbit/s instead of 17). So every
device a pod's packets leave through must take them; on a node whose NIC has the
legacy 64 KiB limit (most virtio NICs) nothing changes.

IPv4 has its own limit (IFLA_GSO_IPV4_MAX_SIZE, Linux 6.3+); on older kernels the
attribute is absent, reads as the legacy limit, and is ignored when set.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from podnet.errors import KernelError
from podnet.kernel import rtnl

LEGACY = 65536
BIG_TCP = 196608  # 192 KiB, the size Cilium uses for BIG TCP
IFLA_GSO_MAX_SIZE, IFLA_GRO_MAX_SIZE, IFLA_TSO_MAX_SIZE = 41, 58, 59
IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE = 63, 64


@dataclass(frozen=True)
class GsoLimits:
    """The biggest GSO (sent) and GRO (merged) packet a device takes, per family."""

    ipv6: int = LEGACY  # IFLA_GSO_MAX_SIZE: IPv6 and everything not IPv4
    ipv4: int = LEGACY

    @property
    def big(self) -> bool:
        return max(self.ipv6, self.ipv4) > LEGACY

    def capped(self, tso_max: int) -> GsoLimits:
        return GsoLimits(min(self.ipv6, tso_max), min(self.ipv4, tso_max))

    def attrs(self) -> bytes:
        """Packed IFLA attributes setting these limits (GSO and GRO alike)."""
        return b"".join(
            rtnl.attr(kind, rtnl.u32(value))
            for kind, value in (
                (IFLA_GSO_MAX_SIZE, self.ipv6), (IFLA_GRO_MAX_SIZE, self.ipv6),
                (IFLA_GSO_IPV4_MAX_SIZE, self.ipv4), (IFLA_GRO_IPV4_MAX_SIZE, self.ipv4),
            )
        )

    def link_attrs(self) -> bytes:
        """What a new link needs: nothing when the limits are the kernel's defaults
        (bigger for BIG TCP; smaller for an egress that takes less, e.g. a TUN)."""
        return b"" if self == DEFAULT else self.attrs()


DEFAULT = GsoLimits()


def _u32_attr(attrs: dict[int, bytes], kind: int) -> int | None:
    raw = attrs.get(kind)
    return struct.unpack_from("=I", raw)[0] if raw and len(raw) >= 4 else None


def read(sock: rtnl.RtnlSocket, index: int) -> tuple[GsoLimits, int] | None:
    """(limits, tso_max_size) of link `index`; None if it is gone."""
    attrs = sock.link_attrs(index)
    if attrs is None:
        return None
    ipv6 = _u32_attr(attrs, IFLA_GSO_MAX_SIZE) or LEGACY
    ipv4 = _u32_attr(attrs, IFLA_GSO_IPV4_MAX_SIZE) or min(ipv6, LEGACY)
    tso = _u32_attr(attrs, IFLA_TSO_MAX_SIZE) or max(ipv6, ipv4)
    return GsoLimits(ipv6, ipv4), tso


def limits_of(sock: rtnl.RtnlSocket, index: int | None) -> GsoLimits:
    """What link `index` takes; the legacy limits when there is no such link."""
    found = read(sock, index) if index else None
    return found[0] if found else DEFAULT


def ensure(sock: rtnl.RtnlSocket, index: int, wanted: GsoLimits) -> GsoLimits:
    """Give link `index` the limits `wanted` (capped at what the device can do); no
    request when it already has them. Returns what it has now."""
    found = read(sock, index)
    if found is None:
        raise KernelError(f"cannot set GSO limits: link {index} is gone")
    have, tso_max = found
    target = wanted.capped(tso_max)
    if have == target:
        return have
    code = sock.set_link_attrs(index, target.attrs())
    if code and code != errno.EOPNOTSUPP:
        raise KernelError(f"cannot set GSO limits on link {index}: {os.strerror(code)}")
    return target if not code else have

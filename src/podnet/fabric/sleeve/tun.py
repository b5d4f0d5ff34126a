"""The sleeve's TUN device, opened in the caller's network namespace.

Why these flags: with IFF_VNET_HDR and TUNSETOFFLOAD (checksum, TSO4/6, USO4/6 on
this kernel) the kernel hands the sleeve whole GSO super-packets (up to the device's
gso_max_size, 64 KB) with a 10-byte virtio-net header instead of MTU-sized packets,
and takes them back the same way: one read, one AEAD call and one datagram carry what
would otherwise be ~45 packets, which is what keeps Python off the per-byte path.
gso_max_size is capped so that a super-packet, sealed and cut into chunks of a
1500-byte underlay, still goes out in one UDP GSO send (chunks.py). IFF_MULTI_QUEUE gives one fd per
worker; the kernel keeps a flow on one queue (no reordering within a flow).
Non-persistent: the device vanishes with the process's last fd.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
from dataclasses import dataclass

PREFIX = "pnsl"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6
# A super-packet plus vnet header and tag, cut into chunks of a 1500-MTU underlay (1452
# bytes each after the IP, UDP and chunk headers), must fit one UDP GSO send (44 such
# segments <= 65507 bytes): <= 63862 bytes. Kept a little under.
GSO_MAX_SIZE = 62 * 1024
DEFAULT_MTU = 1420


class TunError(OSError):
    """The TUN device could not be opened or set up."""


@dataclass(frozen=True)
class TunOptions:
    queues: int = 1
    offload: bool = True  # vnet header + TSO/USO: GSO super-packets
    mtu: int = DEFAULT_MTU
    # GSO_MAX_SIZE: a sealed super-packet goes out in one UDP GSO send. Forwarded
    # traffic from pods that are not capped (64 KiB GSO) would be cut in software at
    # that limit, so a TUN carrying it takes 64 KiB and sends such a message in two.
    gso_max_size: int = GSO_MAX_SIZE


DEFAULT_OPTIONS = TunOptions()


def check_name(name: str) -> str:
    if not name.startswith(PREFIX) or len(name) > 15 or not name.isascii():
        raise TunError(f"tun name {name!r}: must start with {PREFIX!r}, at most 15 ASCII bytes")
    if not all(c.isalnum() or c in "-_" for c in name):
        raise TunError(f"tun name {name!r}: letters, digits, '-' and '_' only")
    return name


def _open_queue(name: str, options: TunOptions) -> int:
    flags = IFF_TUN | IFF_NO_PI
    flags |= IFF_MULTI_QUEUE if options.queues > 1 else 0
    flags |= IFF_VNET_HDR if options.offload else 0
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        if options.offload:
            fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
    except OSError as exc:
        os.close(fd)
        raise TunError(f"tun {name}: {exc.strerror}") from exc
    return fd


def open_tun(name: str, options: TunOptions = DEFAULT_OPTIONS) -> list[int]:
    """Create `name` with `options.queues` queues; return their fds (close all to
    remove the device)."""
    check_name(name)
    if not 1 <= options.queues <= 16:
        raise TunError(f"queues {options.queues}: must be 1..16")
    fds: list[int] = []
    try:
        for _ in range(options.queues):
            fds.append(_open_queue(name, options))
    except TunError:
        close_tun(fds)
        raise
    return fds


def close_tun(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise TunError(f"ip {' '.join(args)}: {out.stderr.strip()}")


def set_mtu(name: str, mtu: int) -> None:
    """A running TUN's MTU changed (the underlay's did), in the current namespace."""
    _ip("link", "set", "dev", name, "mtu", str(mtu))


def set_up(name: str, addresses: list[str], options: TunOptions = DEFAULT_OPTIONS) -> None:
    """MTU, GSO limit, addresses and link up, in the current namespace."""
    _ip("link", "set", "dev", name, "mtu", str(options.mtu))
    if options.offload:
        _ip("link", "set", "dev", name, "gso_max_size", str(options.gso_max_size))
    for address in addresses:
        _ip("address", "replace", address, "dev", name)
    _ip("link", "set", "dev", name, "up")

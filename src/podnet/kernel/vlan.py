"""VLAN sub-interfaces (`<parent>.<id>`, 802.1Q): a macvlan network with `vlan` sits
on one, as Docker's macvlan driver does with `parent=eth0.100`.

The kernel's vlan link type lives in the 8021q module. Without it the kernel answers
"Operation not supported" (iproute2 prints "Unknown device type"), which says nothing
about VLANs; `ensure_vlan` turns that into an error a user can act on.
"""

from __future__ import annotations

import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.errors import InvalidConfig, KernelError
from podnet.kernel import links
from podnet.naming import is_ifname


class VlanUnsupported(KernelError):
    """The running kernel has no 802.1Q support (CONFIG_VLAN_8021Q unset, or the
    8021q module cannot be loaded)."""


def vlan_ifname(parent: str, vlan_id: int) -> str:
    """`<parent>.<id>`, the name `ip link add link eth0 name eth0.100 type vlan` uses
    (the id itself is checked with the config, cni/config.py)."""
    name = f"{parent}.{vlan_id}"
    if not is_ifname(name):
        raise InvalidConfig(
            f"VLAN {vlan_id} on {parent!r} would be named {name!r}, longer than 15 bytes",
            "use a parent with a shorter name",
        )
    return name


def ensure_vlan(ipr: IPRoute, parent_index: int, parent: str, vlan_id: int) -> int:
    """The sub-interface for `vlan_id` on `parent`, created if missing and up; its
    index. It is shared by every container of the network and outlives them (as the
    parent does): DEL never removes it."""
    name = vlan_ifname(parent, vlan_id)
    index = links.link_index(ipr, name)
    if index is None:
        try:
            ipr.link("add", ifname=name, kind="vlan", link=parent_index, vlan_id=vlan_id)
        except NetlinkError as exc:
            if exc.code in (errno.EOPNOTSUPP, errno.ENOENT, errno.EAFNOSUPPORT):
                raise VlanUnsupported(
                    "VLAN sub-interfaces need the 8021q module, which this kernel does not have: "
                    f"cannot create {name} (VLAN {vlan_id} on parent {parent})",
                    "load 8021q (modprobe 8021q) or use a kernel built with CONFIG_VLAN_8021Q",
                ) from None
            if exc.code != errno.EEXIST:  # EEXIST: a concurrent ADD made it first
                raise KernelError(f"cannot create {name} (VLAN {vlan_id} on parent {parent}): {exc}") from None
        index = links.link_index(ipr, name)
        if index is None:  # pragma: no cover - deleted right after creation
            raise KernelError(f"{name} vanished while being created")
    kind = links.link_kind(ipr, index)
    if kind != "vlan":
        raise KernelError(f"interface {name} exists but is a {kind or 'non-vlan'} device, not VLAN {vlan_id}")
    ipr.link("set", index=index, state="up")
    return index

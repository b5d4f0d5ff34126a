"""kernel/rtnl_watch.relevant: which announcements make the node loop look again."""

from __future__ import annotations


def test_only_the_fabrics_kind_of_neighbour_counts_as_a_kernel_change() -> None:
    import struct

    from podnet.kernel.rtnl_watch import NUD_NOARP, RTM_DELNEIGH, RTM_NEWNEIGH, relevant

    def ndmsg(state: int) -> bytes:
        return struct.pack("=BxxxiHBB", 2, 5, state, 0, 1)

    assert not relevant(RTM_NEWNEIGH, ndmsg(0x02))  # REACHABLE: learned, ages
    assert relevant(RTM_NEWNEIGH, ndmsg(0x80))  # PERMANENT: the fabric's
    assert relevant(RTM_NEWNEIGH, ndmsg(NUD_NOARP))
    assert relevant(RTM_DELNEIGH, ndmsg(0x02))  # a deletion always
    assert relevant(24, b"")  # a new route


def test_links_count_when_new_deleted_or_changed_and_ignored_ones_never() -> None:
    import struct

    from podnet.kernel.rtnl import IFLA_IFNAME, IFLA_MTU, attr
    from podnet.kernel.rtnl_watch import (
        RTM_DELLINK,
        RTM_DELNEIGH,
        RTM_NEWLINK,
        RTM_NEWNEIGH,
        RTM_NEWROUTE,
        Relevance,
    )
    from podnet.naming import is_host_veth

    def link(index: int, name: str, flags: int = 1, mtu: int = 1500) -> bytes:
        return struct.pack("=BxHiII", 0, 1, index, flags, 0) + attr(IFLA_IFNAME, name.encode() + b"\0") + \
            attr(IFLA_MTU, struct.pack("=I", mtu))

    def route(oif: int) -> bytes:
        return struct.pack("=BBBBBBBBI", 10, 64, 0, 0, 254, 2, 0, 1, 0) + attr(4, struct.pack("=i", oif))

    relevant = Relevance(is_host_veth)
    assert relevant(RTM_NEWLINK, link(3, "pncl0"))  # first seen
    assert not relevant(RTM_NEWLINK, link(3, "pncl0"))  # announced again, unchanged (a port joined)
    assert relevant(RTM_NEWLINK, link(3, "pncl0", flags=0))  # went down
    assert relevant(RTM_NEWLINK, link(3, "pncl0", flags=0, mtu=1450))
    assert not relevant(RTM_NEWLINK, link(9, "pn0123456789a"))  # a pod's host veth
    assert not relevant(RTM_NEWROUTE, route(9))  # its link-local route
    assert not relevant(RTM_NEWNEIGH, struct.pack("=BxxxiHBB", 7, 9, 0x80, 0, 0))  # its bridge entry
    assert relevant(RTM_NEWROUTE, route(3))
    assert not relevant(RTM_DELLINK, link(9, "pn0123456789a"))
    assert relevant(RTM_DELLINK, link(3, "pncl0"))
    fdb = struct.pack("=BxxxiHBB", 7, 4, 0x80, 2, 0) + attr(1, bytes([172, 31, 0, 2]))  # a VTEP's, on pnvx0
    assert not relevant(RTM_NEWNEIGH, fdb)  # added: the fabric's own writes (VXLAN names no sender)
    assert relevant(RTM_DELNEIGH, fdb)  # gone: the repair pass puts it back

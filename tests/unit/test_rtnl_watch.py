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

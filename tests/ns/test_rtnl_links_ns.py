"""kernel/rtnl.py's lookups by name, against what ip(8) shows in a sandbox namespace."""

from __future__ import annotations

import os

import pytest

from podnet.kernel import netns, rtnl
from podnet.lab.sandbox import ip

pytestmark = pytest.mark.root


def test_link_mtu_and_index_by_name_match_ip_and_a_missing_link_is_none(sandbox):
    ns = sandbox.netns("links")
    ip("-n", ns, "link", "add", "pnr0", "mtu", "1377", "type", "veth", "peer", "name", "pnr1", "mtu", "9000")
    fd = netns.open_netns(sandbox.path(ns))
    try:
        with rtnl.RtnlSocket(fd) as sock:
            assert sock.link_mtu("pnr0") == 1377
            assert sock.link_mtu("pnr1") == 9000
            assert sock.link_mtu("lo") == 65536
            assert sock.link_mtu("pnr-none") is None
            shown = ip("-n", ns, "-o", "link", "show", "pnr1").stdout
            assert sock.link_index("pnr1") == int(shown.split(":", 1)[0])
            assert sock.link_index("pnr-none") is None
    finally:
        os.close(fd)

"""This node's BIRD as the agent runs it (bgp/bird.py), with the real daemon in a
namespace of the test's own: started once, reconfigured in place (same pid), a refused
configuration leaving the old one in force, adopted by a new agent, stopped by its
checked pid."""

from __future__ import annotations

import os
import shutil

import pytest

from podnet.bgp.bird import BirdDaemon, BirdDaemonError
from podnet.kernel import netns

pytestmark = pytest.mark.root

CONF = "router id 10.0.0.1;\nprotocol device {}\n"
MORE = "router id 10.0.0.1;\nprotocol device {}\nprotocol static s1 { ipv4; route 10.9.0.0/24 blackhole; }\n"


@pytest.fixture
def bird_ns(sandbox):
    if not shutil.which("bird"):
        pytest.skip("bird2 is not installed (make deps installs it)")
    return sandbox.path(sandbox.netns("bird"))


def test_started_once_reconfigured_in_place_refused_safely_adopted_and_stopped(bird_ns, tmp_path):
    fd = netns.open_netns(bird_ns)
    daemon = BirdDaemon(tmp_path / "bird")
    try:
        with netns.entered(fd):
            assert daemon.ensure(CONF) == "started"
        pid = daemon.pid()
        assert pid is not None and os.stat(f"/proc/{pid}/ns/net").st_ino == os.fstat(fd).st_ino  # in the test's netns
        assert daemon.ensure(CONF) == "unchanged"
        assert daemon.ensure(MORE) == "reconfigured" and daemon.pid() == pid
        assert "s1" in {row["name"] for row in daemon.control.protocols()}
        with pytest.raises(BirdDaemonError, match="refused"):
            daemon.ensure("router id 10.0.0.1;\nprotocol device { bogus }\n")
        assert daemon.pid() == pid and (tmp_path / "bird" / "bird.conf").read_text() == MORE  # the old one stays
        again = BirdDaemon(tmp_path / "bird")  # a restarted agent
        assert again.ensure(MORE) == "adopted" and again.pid() == pid
        assert again.ensure(MORE) == "unchanged"
        assert daemon.stop() and daemon.pid() is None
        assert not again.running()
    finally:
        daemon.stop()
        os.close(fd)

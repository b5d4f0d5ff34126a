"""kernel/netns.entered: per-thread namespace switching, nested, always returning."""

from __future__ import annotations

import os
import threading

import pytest

from podnet.kernel import netns

pytestmark = pytest.mark.root


def _where() -> tuple[int, int]:
    fd = netns.current_netns_fd()
    try:
        return netns.identity(fd)
    finally:
        os.close(fd)


def test_nested_entered_returns_to_the_enclosing_namespace(sandbox):
    a = netns.open_netns(sandbox.path(sandbox.netns("a")))
    b = netns.open_netns(sandbox.path(sandbox.netns("b")))
    home = _where()
    with netns.entered(a):
        assert _where() == netns.identity(a)
        with netns.entered(b):
            assert _where() == netns.identity(b)
        assert _where() == netns.identity(a)
    assert _where() == home


def test_entered_is_per_thread_and_survives_errors(sandbox):
    a = netns.open_netns(sandbox.path(sandbox.netns("a")))
    home = _where()
    seen = {}

    def worker():
        with pytest.raises(RuntimeError), netns.entered(a):
            seen["inside"] = _where()
            raise RuntimeError("boom")
        seen["after"] = _where()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"inside": netns.identity(a), "after": home}
    assert _where() == home  # the main thread never moved


def test_open_netns_refuses_what_is_not_a_namespace(tmp_path):
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(netns.InvalidNetNS):
        netns.open_netns(str(regular))
    with pytest.raises(netns.InvalidNetNS):
        netns.open_netns(str(tmp_path / "missing"))


def test_loopback_up_sets_lo_up_inside_and_nothing_here(sandbox):
    import json
    import socket
    import subprocess

    ns = sandbox.netns("lo")
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "down"], check=True)
    home = _where()
    netns.loopback_up(sandbox.path(ns))
    shown = json.loads(subprocess.run(["ip", "-n", ns, "-j", "link", "show", "lo"], capture_output=True,
                                      text=True, check=True).stdout)[0]
    assert "UP" in shown["flags"]
    fd = netns.open_netns(sandbox.path(ns))
    with netns.entered(fd), socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname(), timeout=2):  # loopback traffic works
        server.accept()[0].close()
    os.close(fd)
    assert _where() == home
    with pytest.raises(netns.InvalidNetNS):
        netns.loopback_up("/proc/self/status")  # not a namespace: refused before any setns

"""The WAN on a real kernel (lab/wan.py): two throwaway namespaces plugged into a WAN
ping each other over wan0; a leg unplugged is gone and comes back with its address;
`down` leaves no namespace, no link, no state, and can be run again; the CLI once.

Namespaces pn-test-wan-<hex>-a/b and the WAN t<hex> are removed also on failure.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from cniharness import podnet_cli
from podnet.cli import main
from podnet.errors import PodnetError
from podnet.lab import state as lab_state
from podnet.lab import wan

pytestmark = pytest.mark.root


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=15, check=check)


def namespaces() -> str:
    return sh("ip", "netns", "list").stdout


def has_link(netns: str, ifname: str) -> bool:
    return sh("ip", "-n", netns, "link", "show", "dev", ifname, check=False).returncode == 0


def pings(src: str, address: str) -> bool:
    target = address.split("/")[0]
    return sh("ip", "netns", "exec", src, "busybox", "ping", "-c", "1", "-W", "2", "-I", "wan0", target,
              check=False).returncode == 0


@pytest.fixture
def world() -> Iterator[dict]:
    """Two plain namespaces to plug in, and a WAN name; all removed afterwards."""
    tag = secrets.token_hex(4)
    made: list[str] = []
    name = f"t{tag}"
    try:
        for side in ("a", "b"):
            ns = f"pn-test-wan-{tag}-{side}"
            made.append(ns)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield {"name": name, "a": made[0], "b": made[1]}
    finally:
        problems = wan.wan_down(name)
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)
        assert problems == []
        assert f"pn-wan-{name}" not in namespaces() and f"pn-test-wan-{tag}" not in namespaces()


def test_plug_ping_unplug_replug_down(world):
    name = world["name"]
    state = wan.wan_up(name, "100.64.0.0/24")
    assert state["address"] == "100.64.0.1/24" and state["netns"] == f"pn-wan-{name}"
    assert wan.wan_up(name, "100.64.0.0/24") == state  # idempotent
    with pytest.raises(PodnetError, match="--cidr: .* is up with 100.64.0.0/24"):
        wan.wan_up(name, "100.65.0.0/24")

    addr_a = wan.plug(name, world["a"], "la/n0")
    addr_b = wan.plug(name, world["b"], "lb/n0")
    assert (addr_a, addr_b) == ("100.64.0.10/24", "100.64.0.11/24")
    assert wan.plug(name, world["a"], "la/n0") == addr_a  # idempotent
    assert pings(world["a"], addr_b) and pings(world["b"], addr_a)
    assert pings(world["a"], state["address"])  # the WAN's own address on br0

    with pytest.raises(PodnetError, match="ifname: wan0 already exists"):
        wan.plug(name, world["a"], "other/n9")

    assert wan.unplug(name, "la/n0") is True
    assert not has_link(world["a"], "wan0")
    assert not has_link(state["netns"], wan.leg_peer("la/n0"))
    assert wan.unplug(name, "la/n0") is False
    assert not pings(world["b"], addr_a)
    assert wan.plug(name, world["a"], "la/n0") == addr_a  # the lowest free host: the same one back

    # the leg's namespace side removed (as a lab's teardown does): "gone", then re-created with its address
    sh("ip", "-n", world["b"], "link", "del", "wan0")
    assert wan.wan_status(name)["legs"]["lb/n0"]["link"] == "gone"
    assert wan.plug(name, world["b"], "lb/n0") == addr_b
    status = wan.wan_status(name)
    assert {owner: leg["link"] for owner, leg in status["legs"].items()} == {"la/n0": "up", "lb/n0": "up"}
    assert pings(world["b"], addr_a)

    assert wan.wan_down(name) == []
    assert f"pn-wan-{name}" not in namespaces()
    assert not wan.state_path(name).exists() and name not in wan.list_wans()
    assert not has_link(world["a"], "wan0") and not has_link(world["b"], "wan0")
    assert wan.wan_down(name) == []  # again: nothing to do


def test_cli_up_plug_status_down(world, monkeypatch, tmp_path, capsys):
    name = world["name"]
    up = json.loads(podnet_cli("wan", "up", name, "--cidr", "100.64.8.0/29", "-o", "json").stdout)
    assert up["address"] == "100.64.8.1/29"
    # plug/unplug read the lab's state: a made-up lab whose node is namespace a (in-process, state dir moved)
    monkeypatch.setattr(lab_state, "RUN_DIR", tmp_path)
    lab = "l" + name[1:7]
    lab_state.LabState(lab, {"nodes": {"n0": {"netns": world["a"]}}}).save()
    assert main(["wan", "plug", name, "--lab", lab, "--node", "n0"]) == 0
    assert capsys.readouterr().out.strip() == "100.64.8.2/29"
    assert main(["wan", "plug", name, "--lab", lab, "--node", "n1"]) == 1
    assert "--node: no node 'n1'" in capsys.readouterr().err
    status = json.loads(podnet_cli("wan", "status", name, "-o", "json").stdout)
    assert status["cidr"] == "100.64.8.0/29" and status["present"] is True
    assert status["legs"][f"{lab}/n0"] == {"netns": world["a"], "ifname": "wan0", "peer": wan.leg_peer(f"{lab}/n0"),
                                          "address": "100.64.8.2/29", "link": "up"}
    assert main(["wan", "unplug", name, "--lab", lab, "--node", "n0"]) == 0
    assert not has_link(world["a"], "wan0")
    assert main(["wan", "unplug", name, "--lab", lab, "--node", "n0"]) == 1
    refused = podnet_cli("wan", "up", name, "--cidr", "100.64.9.0/29", check=False)
    assert refused.returncode == 1 and "--cidr" in refused.stderr
    assert "removed" in podnet_cli("wan", "down", name).stdout
    assert f"pn-wan-{name}" not in namespaces()
    assert podnet_cli("wan", "down", name).returncode == 0


def test_a_failed_build_leaves_nothing(world, monkeypatch):
    name = world["name"]
    real_ip = wan.ip

    def failing_ip(*args: str, check: bool = True):
        if "addr" in args:
            raise lab_state.LabError("ip addr add failed (injected)")
        return real_ip(*args, check=check)

    monkeypatch.setattr(wan, "ip", failing_ip)
    with pytest.raises(PodnetError, match="injected"):
        wan.wan_up(name)
    assert f"pn-wan-{name}" not in namespaces() and not wan.state_path(name).exists()

    monkeypatch.setattr(wan, "ip", real_ip)
    wan.wan_up(name)
    monkeypatch.setattr(wan, "ip", failing_ip)
    with pytest.raises(PodnetError, match="injected"):
        wan.plug(name, world["a"], "la/n0")
    assert not has_link(world["a"], "wan0") and wan.wan_status(name)["legs"] == {}

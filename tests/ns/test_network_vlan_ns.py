"""A macvlan network on a VLAN (`podnet network create -d macvlan --parent IF.N`), as a
user drives it in a host namespace the test made: on this kernel, which lacks 8021q,
`container run` on it fails with the clear message and leaves nothing behind (no
container, no sub-interface or macvlan, no address reserved, no container namespace)."""

from __future__ import annotations

import json
import os

import pytest
from test_macvlan_modes_ns import _kernel_vlan_config

from containerharness import ContainerEnv

pytestmark = pytest.mark.root

UPLINK = "pnvl0"


@pytest.fixture
def env(sandbox, tmp_path):
    if _kernel_vlan_config() in ("y", "m") or not os.path.exists("/proc/config.gz"):
        pytest.skip("cannot show the missing-8021q error: this kernel has 8021q, or its config is unknown")
    with ContainerEnv.create(sandbox, tmp_path) as e:
        e.in_host("ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "pnvl1")
        e.in_host("ip", "link", "set", UPLINK, "up")
        yield e


def container_namespaces() -> set[str]:
    return {n for n in os.listdir("/run/netns") if n.startswith("pnc-")} if os.path.isdir("/run/netns") else set()


def test_run_on_a_vlan_network_fails_clearly_and_leaves_nothing(env):
    net = json.loads(env.podnet("network", "create", "vl", "-d", "macvlan", "--parent", f"{UPLINK}.10",
                                "--subnet", "192.168.70.0/24", "-o", "json").stdout)
    assert (net["parent"], net["vlan"]) == (UPLINK, 10)
    before = container_namespaces()

    run = env.container("run", "--name", "c1", "--network", "vl", "--", "true", check=False)
    assert run.returncode == 125, (run.stdout, run.stderr)
    assert "VLAN sub-interfaces need the 8021q module, which this kernel does not have" in run.stderr, run.stderr
    assert f"{UPLINK}.10 (VLAN 10 on parent {UPLINK})" in run.stderr, run.stderr

    assert env.records() == [] and env.reservations("vl") == []
    links = env.in_host("ip", "-o", "link", "show").stdout
    assert f"{UPLINK}.10" not in links and "macvlan" not in env.in_host("ip", "-d", "-o", "link", "show").stdout
    assert container_namespaces() == before

    # the same parent without a VLAN works: the failure was the VLAN's, not the network's
    env.podnet("network", "create", "plain", "-d", "macvlan", "--parent", UPLINK, "--subnet", "192.168.71.0/24")
    ok = env.run_d("c2", "sleep", "30", opts=("--network", "plain"))
    assert [ip.split("/")[0] for ip in ok["ips"]] == ["192.168.71.2"]

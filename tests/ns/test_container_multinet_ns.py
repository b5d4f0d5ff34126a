"""Containers on several networks, as a user drives them: `run --network a --network
b`, `connect` and `disconnect`, on two networks made with `podnet network create`
in a host namespace the test made. Checked from inside the containers (interfaces,
default route, the source address a peer sees) and in the IPAM store (addresses
reserved and freed)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from containerharness import ContainerEnv

pytestmark = pytest.mark.root

NETS = {"neta": "10.89.11.0/24", "netb": "10.89.12.0/24"}

PEER_ECHO = (  # replies with the address it sees the client connect from
    "import socket\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 7000)); s.listen(8); print('ready', flush=True)\n"
    "while True:\n"
    "    c,a=s.accept(); c.sendall((a[0]+'\\n').encode()); c.close()\n"
)
PROBE = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1], 7000), timeout=3); print(s.recv(100).decode().strip())"
)


@pytest.fixture
def env(sandbox, tmp_path):
    with ContainerEnv.create(sandbox, tmp_path) as e:
        for name, subnet in NETS.items():
            e.podnet("network", "create", name, "--subnet", subnet)
        yield e


def bare(cidrs: list[str]) -> list[str]:
    return [c.split("/")[0] for c in cidrs]


def address_on(record: dict, network: str) -> str:
    """The container's address in `network` (from its record's attachments)."""
    attachment = next(a for a in record["attachments"] if a["network"] == network)
    return bare(attachment["ips"])[0]


def reserved(env: ContainerEnv, network: str, container_id: str) -> list[str]:
    return sorted(r.address.split("/")[0] for r in env.reservations(network) if r.container_id == container_id)


def in_container(env: ContainerEnv, name: str, *cmd: str, check: bool = True):
    return env.container("exec", name, "--", *cmd, check=check)


def links(env: ContainerEnv, name: str) -> list[str]:
    return in_container(env, name, "ls", "/sys/class/net").stdout.split()


def test_dual_homed_container_reaches_both_networks_with_each_source_address(env):
    peer_a = env.run_d("peer-a", sys.executable, "-c", PEER_ECHO, opts=("--network", "neta"))
    peer_b = env.run_d("peer-b", sys.executable, "-c", PEER_ECHO, opts=("--network", "netb"))
    dual = env.run_d("dual", "sleep", "300", opts=("--network", "neta", "--network", "netb"))
    assert dual["network"] == "neta" and [a["network"] for a in dual["attachments"]] == ["neta", "netb"]
    assert [a["ifname"] for a in dual["attachments"]] == ["eth0", "eth1"]
    mine_a, mine_b = address_on(dual, "neta"), address_on(dual, "netb")
    assert mine_a.startswith("10.89.11.") and mine_b.startswith("10.89.12.")
    assert sorted(bare(dual["ips"])) == sorted([mine_a, mine_b])
    assert f"{mine_a}/24" in in_container(env, "dual", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert f"{mine_b}/24" in in_container(env, "dual", "ip", "-o", "-4", "addr", "show", "eth1").stdout
    default = in_container(env, "dual", "ip", "-4", "route", "show", "default").stdout.strip().splitlines()
    assert len(default) == 1 and "via 10.89.11.1 dev eth0" in default[0], default
    via_b = in_container(env, "dual", "ip", "-4", "route", "get", bare(peer_b["ips"])[0]).stdout
    assert "dev eth1" in via_b and f"src {mine_b}" in via_b, via_b

    env.wait_log(peer_a, "ready")
    env.wait_log(peer_b, "ready")
    seen_by_b = in_container(env, "dual", sys.executable, "-c", PROBE, bare(peer_b["ips"])[0]).stdout.strip()
    seen_by_a = in_container(env, "dual", sys.executable, "-c", PROBE, bare(peer_a["ips"])[0]).stdout.strip()
    assert (seen_by_a, seen_by_b) == (mine_a, mine_b)

    assert reserved(env, "neta", dual["id"]) == [mine_a] and reserved(env, "netb", dual["id"]) == [mine_b]
    listed = json.loads(env.podnet("network", "inspect", "netb").stdout)["containers"]
    assert {"name": "dual", "ips": [f"{mine_b}/24"]}.items() <= next(c for c in listed if c["name"] == "dual").items()
    env.container("rm", "-f", "dual")
    assert reserved(env, "neta", dual["id"]) == [] and reserved(env, "netb", dual["id"]) == []


def test_connect_and_disconnect_free_the_address(env):
    web = env.run_d("web", "sleep", "300", opts=("--network", "neta"))
    assert links(env, "web") == ["eth0", "lo"]

    connected = json.loads(env.container("connect", "netb", "web", "-o", "json").stdout)
    assert connected["network"] == "neta" and [a["ifname"] for a in connected["attachments"]] == ["eth0", "eth1"]
    mine_b = address_on(connected, "netb")
    assert reserved(env, "netb", web["id"]) == [mine_b]
    assert links(env, "web") == ["eth0", "eth1", "lo"]
    assert f"{mine_b}/24" in in_container(env, "web", "ip", "-o", "-4", "addr", "show", "eth1").stdout
    default = in_container(env, "web", "ip", "-4", "route", "show", "default").stdout
    assert "dev eth0" in default and "eth1" not in default
    assert env.inspect("web")["attachments"] == connected["attachments"]

    again = env.container("connect", "netb", "web", check=False)
    assert again.returncode != 0 and "already on network netb" in again.stderr
    primary = env.container("disconnect", "neta", "web", check=False)
    assert primary.returncode != 0 and "neta is the primary network of container web" in primary.stderr
    unknown = env.container("disconnect", "nope", "web", check=False)
    assert unknown.returncode != 0 and "not on network nope" in unknown.stderr

    env.container("disconnect", "netb", "web")
    assert links(env, "web") == ["eth0", "lo"]
    assert reserved(env, "netb", web["id"]) == []
    after = env.inspect("web")
    assert "attachments" not in after and bare(after["ips"]) == [address_on(connected, "neta")]
    assert reserved(env, "neta", web["id"]) == [address_on(connected, "neta")]


def test_a_secondary_network_never_brings_a_default_route(env):
    """On a primary network with a default route the kernel would refuse a second
    one anyway; an internal primary has none, and the secondary must not add it."""
    env.podnet("network", "create", "inner", "--internal", "--subnet", "10.89.14.0/24")
    env.run_d("iso", "sleep", "300", opts=("--network", "inner", "--network", "netb"))
    env.run_d("iso2", "sleep", "300", opts=("--network", "inner"))
    env.container("connect", "netb", "iso2")
    for name in ("iso", "iso2"):
        assert in_container(env, name, "ip", "-4", "route", "show", "default").stdout.strip() == ""
        assert "dev eth1" in in_container(env, name, "ip", "-4", "route", "show", "10.89.12.0/24").stdout


def test_a_failed_connect_or_run_leaves_nothing(env):
    env.podnet("network", "create", "tiny", "--subnet", "10.89.13.0/24", "--ip-range", "10.89.13.8/32")
    holder = env.run_d("holder", "sleep", "300", opts=("--network", "tiny"))
    assert bare(holder["ips"]) == ["10.89.13.8"]
    web = env.run_d("web", "sleep", "300", opts=("--network", "neta"))

    full = env.container("connect", "tiny", "web", check=False)
    assert full.returncode != 0 and "cannot attach to network tiny" in full.stderr, full.stderr
    assert links(env, "web") == ["eth0", "lo"]
    assert [r.container_id for r in env.reservations("tiny")] == [holder["id"]]
    assert env.inspect("web")["ips"] == web["ips"]
    assert not any(p.startswith("cni-result-") for p in os.listdir(env.state_dir / "containers" / web["id"]))

    missing = env.container("run", "--name", "x", "--network", "neta", "--network", "nope", "--", "true",
                            check=False)
    assert missing.returncode == 125 and "network nope not found" in missing.stderr
    failed = env.container("run", "--name", "y", "--network", "neta", "--network", "tiny", "--", "true",
                           check=False)
    assert failed.returncode == 125 and "cannot attach to network tiny" in failed.stderr
    assert {r["name"] for r in env.records()} == {"holder", "web"}
    assert {r.container_id for r in env.reservations("neta")} == {web["id"]}

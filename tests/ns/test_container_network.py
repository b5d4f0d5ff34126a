"""The four network modes and published ports, seen from inside and outside the
containers: bridge (two containers by IP, --ip), -p from the host, from another
container and by hairpin, container:OTHER, none, host, and the UTS hostname."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from cniharness import ECHO_SERVER, needs_root, tcp_probe
from containerharness import GATEWAY, NETWORK, ContainerEnv
from podnet.lab.sandbox import Sandbox

pytestmark = pytest.mark.root

PROBE = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
    "s.sendall(b'ping\\n'); print(s.recv(100).decode().strip())"
)


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory):
    """One host namespace, agent and network for the module (ContainerEnv.fresh)."""
    needs_root()
    with Sandbox("pn-t-") as box, ContainerEnv.create(box, tmp_path_factory.mktemp("network")) as e:
        e.add_network()
        yield e


@pytest.fixture
def env(shared_env):
    with shared_env.fresh() as e:
        yield e


def echo(port: int, label: str, bind: str = "0.0.0.0") -> tuple[str, ...]:
    return (sys.executable, "-c", ECHO_SERVER, bind, str(port), label)


def ns_name(record: dict) -> str:
    return os.path.basename(record["netns"])


def address(record: dict) -> str:
    return record["ips"][0].split("/")[0]


def test_two_containers_talk_by_ip(env):
    web = env.run_d("web", *echo(80, "web"), opts=("--network", NETWORK))
    client = env.run_d("client", "sleep", "300", opts=("--network", NETWORK, "--ip", "10.89.1.50"))
    assert client["ips"] == ["10.89.1.50/24"]
    env.wait_log(web, "ready")
    out = env.container("exec", "client", "--", sys.executable, "-c", PROBE, address(web), "80")
    assert out.stdout.strip() == "hello from web"
    assert tcp_probe(env.sandbox, ns_name(web), "10.89.1.50", 9, timeout=1) is None  # nothing listens there


def test_published_port_from_host_other_container_and_hairpin(env):
    web = env.run_d("web", *echo(80, "web"), opts=("--network", NETWORK, "-p", "8080:80"))
    client = env.run_d("client", "sleep", "300", opts=("--network", NETWORK))
    env.wait_log(web, "ready")
    assert tcp_probe(env.sandbox, env.host, "127.0.0.1", 8080) == "hello from web"
    assert tcp_probe(env.sandbox, env.host, GATEWAY, 8080) == "hello from web"
    assert tcp_probe(env.sandbox, ns_name(client), GATEWAY, 8080) == "hello from web"
    assert tcp_probe(env.sandbox, ns_name(web), GATEWAY, 8080) == "hello from web"  # hairpin


def test_published_port_on_one_host_address(env):
    web = env.run_d("web", *echo(80, "web"), opts=("--network", NETWORK, "-p", "127.0.0.1:8090:80/tcp"))
    env.wait_log(web, "ready")
    assert web["ports"] == [{"hostIP": "127.0.0.1", "hostPort": 8090, "containerPort": 80, "protocol": "tcp"}]
    assert tcp_probe(env.sandbox, env.host, "127.0.0.1", 8090) == "hello from web"
    assert tcp_probe(env.sandbox, env.host, GATEWAY, 8090, timeout=1) is None


def test_container_mode_shares_the_network_stack(env):
    web = env.run_d("web", *echo(9000, "web", bind="127.0.0.1"), opts=("--network", NETWORK))
    env.wait_log(web, "ready")
    side = env.run_d("side", "sleep", "300", opts=("--network", "container:web"))
    assert side["network_mode"] == "container" and side["joined"] == "web" and side["netns"] == web["netns"]
    assert side["network"] is None and side["ips"] == []
    addr = env.container("exec", "side", "--", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert f"{address(web)}/24" in addr
    # A foreground joiner sees web's socket on 127.0.0.1, as in a pod.
    seen = env.container("run", "--rm", "--network", "container:web", "--", sys.executable, "-c", PROBE,
                         "127.0.0.1", "9000")
    assert seen.stdout.strip() == "hello from web"
    assert "container:web" in env.container("ls").stdout
    env.container("rm", "-f", "side")
    assert os.path.exists(web["netns"])  # the joiner never owned the namespace


def test_none_has_loopback_only(env):
    out = env.container("run", "--rm", "--network", "none", "--", "sh", "-c",
                        "ls /sys/class/net; ip -o link; cat /etc/resolv.conf")
    lines = out.stdout.split("\n")
    assert lines[0] == "lo"
    links = [line for line in lines if ": <" in line]
    assert len(links) == 1 and "lo:" in links[0] and "UP" in links[0]
    record = json.loads(env.container("run", "-o", "json", "--name", "n", "--network", "none", "--", "true").stdout)
    assert record["network_mode"] == "none" and record["ips"] == [] and record["netns"].startswith("/run/netns/pnc-")
    assert not os.path.exists(record["netns"])


def test_host_mode_sees_the_host_namespace(env):
    dummy = f"pntd-{env.sandbox.token}"  # a link only the host namespace has
    env.in_host("ip", "link", "add", dummy, "type", "bridge")
    out = env.container("run", "--rm", "--network", "host", "--", "ip", "-o", "link")
    assert dummy in out.stdout
    record = env.run_d("h", "sleep", "300", opts=("--network", "host"))
    assert record["netns"] is None and record["network"] is None
    assert dummy in env.container("exec", "h", "--", "ip", "-o", "link").stdout
    assert env.container("exec", "h", "--", "cat", "/etc/resolv.conf").stdout == Path("/etc/resolv.conf").read_text()


def test_hostname_is_set_in_its_own_uts_namespace(env):
    before = socket.gethostname()
    out = env.container("run", "--rm", "--network", NETWORK, "--hostname", "custom-1", "--", "hostname")
    assert out.stdout.strip() == "custom-1"
    env.run_d("named_app", "sleep", "300", opts=("--network", "none"))
    assert env.container("exec", "named_app", "--", "hostname").stdout.strip() == "named-app"
    assert socket.gethostname() == before

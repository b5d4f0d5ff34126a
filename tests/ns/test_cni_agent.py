"""The agent: crash consistency (kill -9 mid-ADD), resync, concurrency, and callers in
another namespace than the agent's."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cniharness import Agent, Cni, bridge_config, links, nft_rules, reservations

pytestmark = pytest.mark.root


def _network(sandbox, host_ns, cni_bin, data_dir, socket_path, **extra) -> Cni:
    return Cni(cni_bin, host_ns, bridge_config("t-net", data_dir, agentSocket=socket_path, **extra), sandbox)


def test_kill9_mid_add_then_restart_leaks_nothing(sandbox, host_ns, cni_bin, data_dir, socket_path, tmp_path):
    cni = _network(sandbox, host_ns, cni_bin, data_dir, socket_path, dataDir=data_dir)
    ports = {"portMappings": [{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}]}
    conf = {**cni.config, "runtimeConfig": ports}
    # The network keeps its state in its dataDir, apart from the agent's own store: the
    # agent must remember that store to find the half-built endpoint after a restart.
    agent_store = str(tmp_path / "agent.db")
    agent = Agent(sandbox, host_ns, socket_path, agent_store, env={"PODNET_FAULT": "after-attach:30"}).start()
    c1 = sandbox.netns("c1")
    result: dict = {}
    caller = threading.Thread(target=lambda: result.update(r=cni.call("ADD", c1, "c1", config=conf)))
    caller.start()
    deadline = time.monotonic() + 20
    while not links(sandbox, host_ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert links(sandbox, host_ns), "the ADD never built its veth"
    assert len(reservations(data_dir, "t-net")) == 1
    agent.kill9()
    caller.join(30)
    assert not result["r"].ok and result["r"].output["code"] == 11  # try again later
    Agent(sandbox, host_ns, socket_path, agent_store).start()
    assert reservations(data_dir, "t-net") == []
    assert links(sandbox, host_ns) == []
    assert links(sandbox, c1) == []
    assert "podnet:" not in nft_rules(sandbox, host_ns)
    # and the network still works afterwards
    assert cni.call("ADD", c1, "c1", config=conf).ok


def test_restart_changes_nothing_that_was_right_and_repairs_drift(
    sandbox, host_ns, cni_bin, data_dir, socket_path
):
    cni = _network(sandbox, host_ns, cni_bin, data_dir, socket_path)
    store = f"{data_dir}/podnet.db"
    agent = Agent(sandbox, host_ns, socket_path, store).start()
    ports = {"portMappings": [{"hostPort": 8082, "containerPort": 80, "protocol": "tcp"}]}
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    r1 = cni.add(c1, "c1", config={**cni.config, "runtimeConfig": ports})
    cni.add(c2, "c2")
    before_links = sorted(links(sandbox, host_ns))
    before_rules = nft_rules(sandbox, host_ns)
    log = agent.stop()
    agent = Agent(sandbox, host_ns, socket_path, store).start()
    log = agent.stop()
    assert "ResyncReport(rolled_back=[], released=[], repaired=[], orphan_links=[], orphan_rules=[])" in log
    assert sorted(links(sandbox, host_ns)) == before_links and nft_rules(sandbox, host_ns) == before_rules
    # drift: an orphan veth, a deleted rule table, a removed gateway address
    sandbox.exec(host_ns, ["ip", "link", "add", "pn0123456789a", "type", "veth", "peer", "name", "pntx"])
    sandbox.exec(host_ns, ["nft", "delete", "table", "ip", "podnet"])
    sandbox.exec(host_ns, ["ip", "addr", "flush", "dev", "pntbr0"])
    agent = Agent(sandbox, host_ns, socket_path, store).start()
    log = agent.stop()
    assert "pn0123456789a" in log and "NAT rule" in log and "gateway 10.80.0.1/24" in log
    assert sorted(links(sandbox, host_ns)) == before_links
    assert "dport 8082" in nft_rules(sandbox, host_ns)
    assert cni.call("CHECK", c1, "c1", config={**cni.config, "runtimeConfig": ports, "prevResult": r1}).ok


def test_100_parallel_adds_get_distinct_addresses(sandbox, host_ns, cni_bin, data_dir, socket_path, tmp_path):
    cni = _network(sandbox, host_ns, cni_bin, data_dir, socket_path, subnet="10.83.0.0/22")
    Agent(sandbox, host_ns, socket_path, str(tmp_path / "a.db")).start()
    namespaces = [sandbox.netns(f"p{i}") for i in range(100)]
    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(lambda i: cni.call("ADD", namespaces[i], f"par{i}"), range(100)))
    failures = [r.output for r in results if not r.ok]
    assert not failures, failures[:3]
    addresses = {ipaddress.ip_interface(r.output["ips"][0]["address"]) for r in results}
    assert len(addresses) == 100
    assert len(reservations(data_dir, "t-net")) == 100 and len(links(sandbox, host_ns)) == 100
    with ThreadPoolExecutor(max_workers=100) as pool:
        deleted = list(pool.map(lambda i: cni.call("DEL", namespaces[i], f"par{i}"), range(100)))
    assert all(r.ok for r in deleted)
    assert reservations(data_dir, "t-net") == [] and links(sandbox, host_ns) == []


def test_caller_in_another_namespace_than_the_agent(sandbox, cni_bin, data_dir, socket_path, tmp_path):
    """The agent lives in `node`; the runtime calls the plugin from `host`: the bridge
    and host veth must land in `host` (the caller's namespace, passed as an fd)."""
    node, host = sandbox.netns("node"), sandbox.netns("host")
    Agent(sandbox, node, socket_path, str(tmp_path / "a.db")).start()
    cni = _network(sandbox, host, cni_bin, data_dir, socket_path)
    c1 = sandbox.netns("c1")
    cni.add(c1, "c1")
    assert len(links(sandbox, host)) == 1 and links(sandbox, node) == []
    assert "pntbr0" in sandbox.exec(host, ["ip", "link"]).stdout
    cni.delete(c1, "c1")
    assert links(sandbox, host) == []


def test_agent_socket_is_root_only(sandbox, host_ns, socket_path, tmp_path):
    Agent(sandbox, host_ns, socket_path, str(tmp_path / "a.db")).start()
    assert oct(Path(socket_path).stat().st_mode & 0o777) == "0o600"
    ping = subprocess.run([sys.executable, "-m", "podnet.cli", "ping", "--socket", socket_path],
                          capture_output=True, text=True, check=False)
    assert ping.returncode == 0 and '"pid"' in ping.stdout
    as_nobody = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])", socket_path],
        capture_output=True, text=True, check=False,
    )
    assert as_nobody.returncode != 0 and "PermissionError" in as_nobody.stderr


def test_second_agent_on_same_socket_refuses(sandbox, host_ns, socket_path, tmp_path):
    Agent(sandbox, host_ns, socket_path, str(tmp_path / "a.db")).start()
    second = sandbox.spawn(host_ns, [sys.executable, "-m", "podnet.cli", "agent", "--socket", socket_path,
                                     "--store", str(tmp_path / "b.db"), "--init"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert second.wait(20) == 1
    assert b"already serving" in second.stdout.read()


def test_a_start_after_a_killed_agent_waits_for_the_new_one(sandbox, host_ns, socket_path, tmp_path):
    """An agent SIGKILLed leaves its socket file; the harness's next start must wait for
    the new agent's socket, not take the old file for it (else the new one is stopped
    before it has logged a line)."""
    store = str(tmp_path / "agent.db")
    first = Agent(sandbox, host_ns, socket_path, store).start()
    first.proc.kill()
    first.proc.wait(10)
    assert Path(socket_path).exists()  # the dead agent's
    log = Agent(sandbox, host_ns, socket_path, store).start().stop()
    assert "podnet agent serving" in log, log

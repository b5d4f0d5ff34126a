"""`podnet container` end to end: run -d, ls, inspect, logs, exec, stop, rm; a
foreground run; a container whose process dies; an agent that comes back after a
crash. Each check that something was freed looks at the kernel and the IPAM store."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from cniharness import ECHO_SERVER, links, tcp_probe
from containerharness import GATEWAY, NETWORK, ContainerEnv, kill_orphan, subreaper

pytestmark = pytest.mark.root


@pytest.fixture
def env(sandbox, tmp_path):
    with ContainerEnv.create(sandbox, tmp_path) as e:
        e.add_network()
        yield e


def echo(port: int, label: str) -> tuple[str, ...]:
    return (sys.executable, "-c", ECHO_SERVER, "0.0.0.0", str(port), label)


def assert_released(env: ContainerEnv, record: dict) -> None:
    assert env.reservations() == [], "the address is still reserved"
    assert env.nat_rules() == 0, "port rules are left"
    assert links(env.sandbox, env.host) == [], "a host veth is left"
    if record.get("netns"):
        assert not os.path.lexists(record["netns"]), f"{record['netns']} is left"


def test_detached_lifecycle(env):
    record = env.run_d("web", *echo(80, "web"), opts=("--network", NETWORK, "-p", "8080:80", "--alias", "www"))
    assert record["state"] == "running" and record["detached"] and record["pid"]
    assert record["network_mode"] == "bridge" and record["network"] == NETWORK
    assert record["ips"][0].startswith("10.89.1.") and record["mac"]
    assert record["netns"] == f"/run/netns/pnc-{record['id'][:12]}" and os.path.exists(record["netns"])
    assert record["ports"] == [{"hostIP": "", "hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    env.wait_log(record, "ready")

    listed = json.loads(env.container("ls", "-o", "json").stdout)
    assert [r["name"] for r in listed] == ["web"]
    table = env.container("ls").stdout
    assert "web" in table and record["id"][:8] in table and "running" in table
    assert env.inspect("web") == listed[0]

    assert env.container("exec", "web", "--", "hostname").stdout.strip() == "web"
    assert env.container("exec", "web", "--", "cat", "/etc/resolv.conf").stdout == f"nameserver {GATEWAY}\n"
    hosts = env.container("exec", "web", "--", "cat", "/etc/hosts").stdout
    assert f"{record['ips'][0].split('/')[0]}\tweb" in hosts
    assert env.container("exec", "web", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    done = json.loads(env.container("exec", "-o", "json", "web", "--", "ls", "/sys/class/net").stdout)
    assert done["exit_code"] == 0 and sorted(done["stdout"].split()) == ["eth0", "lo"]

    assert tcp_probe(env.sandbox, env.host, "127.0.0.1", 8080) == "hello from web"
    assert len(env.reservations()) == 1 and env.nat_rules() > 0
    assert "ready" in env.container("logs", "web").stdout
    assert "ready" in json.loads(env.container("logs", "web", "-o", "json").stdout)["log"]

    stopped = json.loads(env.container("stop", "web", "-t", "5", "-o", "json").stdout)
    assert stopped["state"] == "exited" and stopped["exit_code"] == 143  # SIGTERM
    assert_released(env, record)
    assert json.loads(env.container("ls", "-o", "json").stdout) == []
    assert [r["name"] for r in json.loads(env.container("ls", "-a", "-o", "json").stdout)] == ["web"]
    assert "ready" in env.container("logs", "web").stdout  # logs outlive the process

    removed = json.loads(env.container("rm", "web", "-o", "json").stdout)
    assert removed["name"] == "web" and removed["removed"] is True
    assert env.records() == []
    assert not (env.state_dir / "containers" / record["id"]).exists()


def test_stop_escalates_to_sigkill(env):
    ignore_term = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(300)"
    record = env.run_d("stubborn", sys.executable, "-c", ignore_term, opts=("--network", NETWORK))
    env.wait_log(record, "up")
    stopped = json.loads(env.container("stop", "stubborn", "-t", "0.5", "-o", "json").stdout)
    assert stopped["exit_code"] == 137
    assert_released(env, record)


def test_rm_force_removes_a_running_container(env):
    record = env.run_d("doomed", "sleep", "300", opts=("--network", NETWORK))
    env.container("rm", "-f", "doomed")
    assert env.records() == []
    assert_released(env, record)


def test_foreground_run(env):
    proc = env.container("run", "--name", "fg", "--network", NETWORK, "--",
                         "sh", "-c", "echo out; echo err >&2; hostname; exit 3", check=False)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.split() == ["out", "fg"] and proc.stderr.strip() == "err"
    record = env.inspect("fg")
    assert record["state"] == "exited" and record["exit_code"] == 3 and not record["detached"]
    assert sorted(env.container("logs", "fg").stdout.split()) == ["err", "fg", "out"]
    assert_released(env, record)

    done = env.container("run", "--rm", "--network", NETWORK, "-o", "json", "--", "true")
    assert json.loads(done.stdout)["exit_code"] == 0
    assert [r["name"] for r in env.records()] == ["fg"]  # --rm left nothing
    env.container("rm", "fg")


def test_foreground_run_without_agent(env):
    env.stop_agent()
    proc = env.container("run", "--name", "bare", "--network", NETWORK, "--", "sh", "-c", "exit 4", check=False)
    assert proc.returncode == 4, proc.stderr
    assert_released(env, env.inspect("bare"))


def test_killed_process_is_detected_and_cleaned(env):
    record = env.run_d("victim", "sleep", "300", opts=("--network", NETWORK, "-p", "8081:80"))
    assert len(env.reservations()) == 1
    os.kill(record["pid"], signal.SIGKILL)
    final = env.wait_state("victim", "exited")
    assert final["exit_code"] == 137
    assert_released(env, record)


def test_graceful_agent_stop_stops_its_containers(env):
    """Left running, they would be orphans of a PID 1 that reaps nobody."""
    record = env.run_d("child", "sleep", "300", opts=("--network", NETWORK, "-p", "8082:80"))
    env.stop_agent()  # SIGTERM by recorded pid
    final = env.inspect("child")
    assert final["state"] == "exited" and final["exit_code"] == 143
    assert_released(env, record)


def test_agent_restart_cleans_containers_that_died_meanwhile(env):
    """The agent crashes; its container dies while no agent runs; the next agent's
    start-up sweep finds it (pid gone) and frees everything."""
    with subreaper():
        record = env.run_d("orphan", "sleep", "300", opts=("--network", NETWORK))
        env.agent.kill()  # by its recorded pid: SIGKILL, no graceful stop
        env.agent.wait(10)
        env.stop_agent()
        kill_orphan(record["pid"])
    assert env.inspect("orphan")["state"] == "running"  # nobody noticed yet
    env.start_agent()
    final = env.wait_state("orphan", "exited")
    assert final["exit_code"] is None
    assert_released(env, record)


def test_foreground_container_of_a_killed_cli_is_swept(env):
    """The CLI of a foreground run is killed, then its container dies: the running
    agent's sweep notices that nobody is left to finish it."""
    with subreaper():
        cli = env.container_bg("run", "--name", "fg", "--network", NETWORK, "--", "sleep", "300")
        record = env.wait_running("fg")
        cli.kill()
        cli.wait(10)
        kill_orphan(record["pid"])
    final = env.wait_state("fg", "exited", timeout=10)
    assert final["exit_code"] is None
    assert_released(env, record)


def test_stop_a_foreground_container_from_another_cli(env):
    cli = env.container_bg("run", "--name", "fg", "--network", NETWORK, "--", "sleep", "300")
    record = env.wait_running("fg")
    stopped = json.loads(env.container("stop", "fg", "-o", "json").stdout)
    assert cli.wait(20) == 143  # the foreground CLI exits with its container's code
    assert stopped["state"] == "exited" and stopped["exit_code"] == 143
    assert_released(env, record)

"""Every refused `podnet container` command: a clear message on stderr, a non-zero
exit, and nothing half-built (no record, no directory, no address, no veth, no
rule, no namespace)."""

from __future__ import annotations

import os
import sys

import pytest

from cniharness import ECHO_SERVER, links, needs_root
from containerharness import NETWORK, ContainerEnv
from podnet.lab.sandbox import Sandbox

pytestmark = pytest.mark.root

RUN_FAILED = 125


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory):
    """One host namespace, agent and network for the module (ContainerEnv.fresh)."""
    needs_root()
    with Sandbox("pn-t-") as box, ContainerEnv.create(box, tmp_path_factory.mktemp("errors")) as e:
        e.add_network()
        yield e


@pytest.fixture
def env(shared_env):
    with shared_env.fresh() as e:
        yield e


def refused(env: ContainerEnv, *args: str, code: int = RUN_FAILED) -> str:
    proc = env.container(*args, check=False)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("podnet: "), proc.stderr
    return proc.stderr


def assert_nothing_built(env: ContainerEnv, keep: tuple[str, ...] = ()) -> None:
    records = env.records()
    assert sorted(r["name"] for r in records) == sorted(keep)
    dirs = os.listdir(env.state_dir / "containers") if (env.state_dir / "containers").exists() else []
    assert sorted(dirs) == sorted(r["id"] for r in records)
    attached = sum(1 for r in records if r["ips"] and r["state"] == "running")
    assert len(env.reservations()) == attached
    assert len(links(env.sandbox, env.host)) == attached


def test_unknown_network(env):
    assert "network nope not found" in refused(env, "run", "--network", "nope", "--", "true")
    assert_nothing_built(env)


def test_missing_default_network(env):
    err = refused(env, "run", "--", "true")
    assert "default network 'podnet' does not exist" in err and "podnet network create podnet" in err
    assert_nothing_built(env)


def test_host_port_already_published(env):
    env.run_d("web", sys.executable, "-c", ECHO_SERVER, "0.0.0.0", "80", "web", opts=("--network", NETWORK, "-p", "8080:80"))
    err = refused(env, "run", "-d", "--name", "web2", "--network", NETWORK, "-p", "8080:80", "--", "sleep", "300")
    assert "cannot attach to network tnet" in err and "8080" in err and "already" in err
    assert_nothing_built(env, keep=("web",))


def test_name_already_in_use(env):
    env.run_d("dup", "sleep", "300", opts=("--network", NETWORK))
    err = refused(env, "run", "-d", "--name", "dup", "--network", NETWORK, "--", "sleep", "300")
    assert "container name 'dup' is already in use" in err
    assert_nothing_built(env, keep=("dup",))


@pytest.mark.parametrize("port", ["80", "a:80", "8080:80/icmp", "70000:80", "1.2.3:8080:80"])
def test_bad_publish_syntax(env, port):
    err = refused(env, "run", "--network", NETWORK, "-p", port, "--", "true")
    assert "bad -p" in err or "protocol" in err
    assert "[IP:]HOSTPORT:CONTAINERPORT" in err
    assert_nothing_built(env)


def test_join_a_container_that_is_not_running(env):
    assert "no such container" in refused(env, "run", "--network", "container:ghost", "--", "true")
    env.container("run", "--name", "done", "--network", NETWORK, "--", "true")
    assert "cannot join container done: it is not running" in refused(
        env, "run", "--network", "container:done", "--", "true")
    assert_nothing_built(env, keep=("done",))


def test_ip_outside_the_network(env):
    err = refused(env, "run", "--network", NETWORK, "--ip", "10.99.0.5", "--", "true")
    assert "--ip 10.99.0.5 is outside network tnet" in err and "10.89.1.0/24" in err
    assert_nothing_built(env)


def test_ip_already_taken(env):
    env.run_d("first", "sleep", "300", opts=("--network", NETWORK, "--ip", "10.89.1.9"))
    err = refused(env, "run", "--network", NETWORK, "--ip", "10.89.1.9", "--", "true")
    assert "10.89.1.9" in err and "already allocated" in err
    assert_nothing_built(env, keep=("first",))


def test_options_that_need_a_network(env):
    assert "-p needs a network" in refused(env, "run", "--network", "host", "-p", "80:80", "--", "true")
    assert "invalid container name" in refused(env, "run", "--name", "bad/name", "--network", "none", "--", "true")
    assert "no command given" in refused(env, "run", "--network", "none")
    assert_nothing_built(env)


def test_detached_run_without_an_agent(env):
    env.stop_agent()
    err = refused(env, "run", "-d", "--network", NETWORK, "--", "sleep", "300")
    assert "needs the podnet agent" in err and "podnet agent --state-dir" in err
    assert_nothing_built(env)


def test_refusals_of_the_other_commands(env):
    env.run_d("busy", "sleep", "300", opts=("--network", "none"))
    assert "container busy is running" in refused(env, "rm", "busy", code=1)
    assert "no such container: ghost" in refused(env, "inspect", "ghost", code=1)
    assert "no such container: ghost" in refused(env, "logs", "ghost", code=1)
    env.container("stop", "busy", "-t", "1")
    assert "container busy is not running" in refused(env, "exec", "busy", "--", "true", code=1)
    env.container("rm", "busy")
    assert_nothing_built(env)

"""`podnet network ...` as a user runs it: the real command under `ip netns exec HOST`
(a namespace the test made), with its state dir in tmp and an agent in HOST.

Checks the tables and JSON, that the agent applies the isolation table when a network
is created or removed, and every error: its message on stderr, a non-zero exit, and
nothing written.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cniharness import Agent
from podnet.lab.sandbox import Sandbox
from podnet.networks.service import NetworkService
from podnet.state import StatePaths

pytestmark = pytest.mark.root


@dataclass
class Cli:
    """Runs `python -m podnet.cli network ...` in the host namespace."""

    sandbox: Sandbox
    ns: str
    paths: StatePaths
    socket: str

    def __call__(self, *args: str, check: bool | None = True):
        env = {**os.environ, "PODNET_STATE_DIR": str(self.paths.root), "PODNET_AGENT_SOCKET": self.socket,
               "COLUMNS": "200"}
        proc = self.sandbox.exec(self.ns, [sys.executable, "-m", "podnet.cli", "network", *args],
                                 check=False, env=env)
        if check is True:
            assert proc.returncode == 0, proc.stderr
        return proc

    def json(self, *args: str):
        return json.loads(self(*args, "-o", "json").stdout)

    def fails(self, *args: str, code: int = 1) -> str:
        """Run a command that must fail; return its stderr."""
        proc = self(*args, check=None)
        assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
        return proc.stderr

    def start_agent(self) -> Agent:
        """An agent in the same namespace, with the same state dir as the CLI."""
        env = {"PODNET_STATE_DIR": str(self.paths.root)}
        return Agent(self.sandbox, self.ns, self.socket, str(self.paths.store), env=env).start()

    def state(self) -> tuple[list[str], list[str]]:
        """(conflist files, stored network names): what "nothing written" compares."""
        files = sorted(p.name for p in self.paths.net_d.iterdir()) if self.paths.net_d.exists() else []
        with NetworkService(self.paths, self.socket) as svc:
            return files, [n.name for n in svc.list()]


@pytest.fixture
def paths(tmp_path) -> StatePaths:
    return StatePaths(tmp_path / "state")


@pytest.fixture
def cli(sandbox, host_ns, paths, socket_path) -> Cli:
    return Cli(sandbox, host_ns, paths, socket_path)


@pytest.fixture
def running_agent(cli) -> Agent:
    return cli.start_agent()


def table_rows(text: str) -> list[list[str]]:
    """The body cells of a rich table (one row per line: COLUMNS is wide)."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def iso_table(cli: Cli) -> str:
    proc = cli.sandbox.exec(cli.ns, ["nft", "list", "table", "inet", "podnet-iso"], check=False)
    return proc.stdout if proc.returncode == 0 else ""


def test_create_ls_inspect_rm_with_agent(cli, running_agent, paths):
    out = cli("create", "front", "--subnet", "10.31.0.0/24", "--label", "tier=web")
    assert "front" in out.stdout and "10.31.0.0/24" in out.stdout and "10.31.0.1" in out.stdout
    assert out.stderr == ""  # the agent answered: no warning

    back = cli.json("create", "back", "--internal", "--subnet", "10.32.0.0/24", "--subnet", "fd00:32::/64",
                    "--gateway", "fd00:32::fe")
    assert back["internal"] is True and back["bridge"] == "pnb" + back["id"][:10]
    assert [s["gateway"] for s in back["subnets"]] == ["10.32.0.1", "fd00:32::fe"]
    assert back["conflist"] == str(paths.net_d / "back.conflist") and back["containers"] == []

    table = cli("ls").stdout
    assert table.splitlines()[1].split() == ["┃", "NAME", "┃", "DRIVER", "┃", "SUBNETS", "┃", "GATEWAYS", "┃",
                                             "INTERNAL", "┃", "CONTAINERS", "┃"]
    assert table_rows(table) == [
        ["back", "bridge", "10.32.0.0/24, fd00:32::/64", "10.32.0.1, fd00:32::fe", "yes", "0"],
        ["front", "bridge", "10.31.0.0/24", "10.31.0.1", "no", "0"],
    ]
    listed = cli.json("ls")
    assert [n["name"] for n in listed] == ["back", "front"]
    assert listed[1]["labels"] == {"tier": "web"}

    inspected = json.loads(cli("inspect", "back").stdout)
    assert inspected == back
    conflist = json.loads(Path(inspected["conflist"]).read_text())
    assert conflist["plugins"][0]["bridge"] == back["bridge"]

    # The agent applied the table before `create` returned.
    rules = iso_table(cli)
    assert 'comment "net back: internal, no traffic out"' in rules
    assert 'comment "net front: isolated from other networks"' in rules

    removed = cli.json("rm", "back")
    assert removed == {"removed": [{"name": "back", "detached": [], "bridge_deleted": False}]}
    assert "net back" not in iso_table(cli)
    assert cli("rm", "front").stdout.strip() == "front"
    assert iso_table(cli) == ""  # nothing left to enforce: the table is gone
    assert cli.json("ls") == [] and cli.state() == ([], [])


def test_without_agent_create_warns_and_succeeds(cli):
    out = cli("create", "lonely")
    assert "no agent answers" in out.stderr and "isolation is applied when the agent runs" in out.stderr
    assert cli.state() == (["lonely.conflist"], ["lonely"])
    assert iso_table(cli) == ""
    cli("rm", "lonely")
    assert cli.state() == ([], [])


def test_rm_deletes_the_bridge_and_only_a_bridge(cli):
    net = cli.json("create", "br")
    cli.sandbox.exec(cli.ns, ["ip", "link", "add", net["bridge"], "type", "bridge"])
    assert cli.json("rm", "br")["removed"][0]["bridge_deleted"] is True
    assert cli.sandbox.exec(cli.ns, ["ip", "link", "show", net["bridge"]], check=False).returncode != 0

    other = cli.json("create", "vv")  # a link of another kind with the bridge's name stays
    cli.sandbox.exec(cli.ns, ["ip", "link", "add", other["bridge"], "type", "veth", "peer", "name", "pn-peer0"])
    assert cli.json("rm", "vv")["removed"][0]["bridge_deleted"] is False
    cli.sandbox.exec(cli.ns, ["ip", "link", "show", other["bridge"]])


def test_macvlan_parent_is_looked_up_in_the_callers_namespace(cli):
    cli.sandbox.exec(cli.ns, ["ip", "link", "add", "pn-up0", "type", "veth", "peer", "name", "pn-up1"])
    net = cli.json("create", "mv", "-d", "macvlan", "--parent", "pn-up0", "--subnet", "192.168.77.0/24")
    assert (net["driver"], net["parent"], net["bridge"]) == ("macvlan", "pn-up0", None)
    plugin = json.loads(Path(net["conflist"]).read_text())["plugins"][0]
    assert (plugin["mode"], plugin["master"]) == ("macvlan", "pn-up0")


def test_rm_refuses_while_containers_are_attached(cli, running_agent, paths):
    cli("create", "app")
    with NetworkService(paths) as svc:
        svc.store.put_json("containers/web1", {"name": "web1", "id": "a" * 64, "network_mode": "bridge",
                                               "network": "app", "ips": ["10.89.0.2"], "state": "exited"})
    assert cli.json("inspect", "app")["containers"][0]["name"] == "web1"
    assert cli.json("ls")[0]["containers"][0]["name"] == "web1"
    assert table_rows(cli("ls").stdout) == [["app", "bridge", "10.89.0.0/24", "10.89.0.1", "no", "1"]]
    err = cli.fails("rm", "app")
    assert "network 'app' has 1 attached container(s): web1" in err and "--force" in err
    assert cli.state() == (["app.conflist"], ["app"])
    out = cli("rm", "--force", "app")
    assert out.stdout.strip() == "app"
    assert "container web1 lost network app" in out.stderr
    assert cli.state() == ([], [])


CREATE_ERRORS = [
    (["--", "-bad"], 1, "invalid network name '-bad'"),
    ([], 2, "the following arguments are required: name"),
    (["bad/name"], 1, "invalid network name 'bad/name'"),
    (["host"], 1, "network name 'host' is reserved"),
    (["taken"], 1, "network name 'taken' is already in use"),
    (["n", "--subnet", "10.30.0.128/25"], 1, "subnet 10.30.0.128/25 overlaps subnet 10.30.0.0/24 of network 'taken'"),
    (["n", "--subnet", "10.40.0.0/24", "--gateway", "10.41.0.1"], 1, "gateway 10.41.0.1 is outside subnet 10.40.0.0/24"),
    (["n", "--subnet", "10.40.0.0/24", "--ip-range", "10.41.0.0/25"], 1, "ip-range 10.41.0.0/25 is outside subnet 10.40.0.0/24"),
    (["n", "--gateway", "10.89.5.1"], 1, "--gateway and --ip-range need an explicit --subnet"),
    (["n", "-d", "macvlan"], 1, "macvlan networks need --parent"),
    (["n", "-d", "macvlan", "--parent", "pn-missing0"], 1, "parent interface 'pn-missing0' does not exist in this network namespace"),
    (["n", "--parent", "pn-up0"], 1, "--parent is only for macvlan networks"),
    (["n", "-d", "overlay"], 2, "invalid choice: 'overlay'"),
    (["n", "--mtu", "50"], 1, "invalid --mtu 50"),
    (["n", "--mtu", "big"], 2, "invalid int value: 'big'"),
    (["n", "--subnet", "10.40.0.0/33"], 1, "invalid subnet '10.40.0.0/33': not a CIDR"),
    (["n", "--subnet", "10.40.0.9/24"], 1, "invalid subnet '10.40.0.9/24': host bits are set"),
    (["n", "--subnet", "10.40.0.0/31"], 1, "subnet 10.40.0.0/31 is too small"),
    (["n", "--label", "novalue"], 1, "invalid --label 'novalue': want KEY=VALUE"),
]


def test_create_errors(cli):
    cli("create", "taken", "--subnet", "10.30.0.0/24")
    before = cli.state()
    for args, code, message in CREATE_ERRORS:
        err = cli.fails("create", *args, code=code)
        assert message in err, (args, err)
        assert err.startswith(("podnet: ", "usage: ")), err
        assert cli.state() == before, args


def test_unknown_network_errors(cli):
    for args in (["inspect", "ghost"], ["rm", "ghost"], ["rm", "--force", "ghost"]):
        err = cli.fails(*args)
        assert "podnet: network 'ghost' not found" in err


def test_rm_several_reports_each_failure(cli):
    cli("create", "one")
    cli("create", "two")
    proc = cli("rm", "one", "ghost", "two", check=None)
    assert proc.returncode == 1
    assert proc.stdout.split() == ["one", "two"]
    assert "network 'ghost' not found" in proc.stderr
    assert cli.state() == ([], [])

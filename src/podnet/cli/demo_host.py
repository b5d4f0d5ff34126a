"""`podnet demo --host`: Docker's four network modes on one simulated host, live.

A sandbox namespace plays the host: the agent runs there, and every step is the
`podnet` command a user would type (run inside that namespace): a user-defined bridge
network, a web container publishing a port and a client container, then the checks a
Docker user relies on: name resolution (name and alias) through the agent's DNS,
direct access, the published port from the host, from another container and by
hairpin, a `container:` join sharing the web server's stack, and a `none` container
with loopback only. Then everything is removed (unless --keep) and the demo proves
nothing leaked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from podnet.lab.sandbox import Sandbox, wait_for_path

SUBNET = "10.88.7.0/24"
GATEWAY = "10.88.7.1"
NETWORK = "demo"
FETCH = (
    "import socket, sys, urllib.request;"
    "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())"
)
RESOLVE = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class DemoHost:
    """The simulated host: a namespace, its agent, and `podnet` run inside it.

    Everything enters the host namespace with `nsenter --net` (network namespace only),
    not `ip netns exec`, which gives each command a private mount namespace: the
    container namespaces the CLI creates must be visible to the agent.
    """

    def __init__(self, sandbox: Sandbox, work: Path) -> None:
        self.sandbox = sandbox
        self.work = work
        self.ns = sandbox.netns("host")
        self.socket = f"/run/podnet/demo-{sandbox.token}.sock"
        self.env = {**os.environ, "PODNET_STATE_DIR": str(work / "state"), "PODNET_AGENT_SOCKET": self.socket}

    @property
    def enter(self) -> list[str]:
        return ["nsenter", f"--net={self.sandbox.path(self.ns)}", "--"]

    def start_agent(self) -> None:
        log = self.sandbox.keep_open(open(self.work / "agent.log", "w"))  # noqa: SIM115 - lives with the agent
        agent = self.sandbox.spawn(
            None, [*self.enter, sys.executable, "-m", "podnet.cli", "agent", "--socket", self.socket],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for_path(self.socket, timeout=20, proc=agent)

    def podnet(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [*self.enter, sys.executable, "-m", "podnet.cli", *args]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"podnet {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def in_host(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter, *argv], env=self.env, capture_output=True, text=True,
                              timeout=60, check=False)


def _check(name: str, proc: subprocess.CompletedProcess, expect: str) -> Check:
    out = proc.stdout.strip()
    errors = proc.stderr.strip().splitlines()
    ok = proc.returncode == 0 and expect in out
    return Check(name, ok, (out or (errors[-1] if errors else ""))[:60])


def run_demo(keep: bool = False) -> int:
    if os.geteuid() != 0:
        print("podnet demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="pn-demo-"))
    sandbox = Sandbox("pn-demo-")
    ok = False
    try:
        host = DemoHost(sandbox, work)
        ok = _run(console, host, keep)
    finally:
        if not keep:
            sandbox.close()
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _run(console: Console, host: DemoHost, keep: bool) -> bool:
    console.print(f"[bold]podnet demo[/] - simulated host namespace [cyan]{host.ns}[/]")
    host.start_agent()
    host.podnet("network", "create", NETWORK, "--subnet", SUBNET)
    www = host.work / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from web\n")
    host.podnet("container", "run", "-d", "--name", "web", "--network", NETWORK, "--alias", "www",
                "-p", "8080:80", "--", sys.executable, "-m", "http.server", "80", "-d", str(www))
    host.podnet("container", "run", "-d", "--name", "client", "--network", NETWORK,
                "--", sys.executable, "-c", "import time; time.sleep(3600)")
    _wait(lambda: host.podnet("container", "exec", "web", "--", sys.executable, "-c", FETCH,
                              "http://127.0.0.1:80/", check=False).returncode == 0)
    _wait(lambda: host.podnet("container", "exec", "client", "--", sys.executable, "-c", RESOLVE, "web",
                              check=False).returncode == 0)
    web_ip = json.loads(host.podnet("container", "inspect", "web").stdout)["ips"][0].split("/")[0]

    def exec_in(name: str, *argv: str) -> subprocess.CompletedProcess:
        return host.podnet("container", "exec", name, "--", *argv, check=False)

    checks = [
        _check("client resolves web", exec_in("client", sys.executable, "-c", RESOLVE, "web"), web_ip),
        _check("client resolves alias www", exec_in("client", sys.executable, "-c", RESOLVE, "www"), web_ip),
        _check("client -> http://web/", exec_in("client", sys.executable, "-c", FETCH, "http://web:80/"), "hello"),
        _check("host -> 127.0.0.1:8080 (published)",
               host.in_host(sys.executable, "-c", FETCH, "http://127.0.0.1:8080/"), "hello"),
        _check(f"client -> {GATEWAY}:8080 (published)",
               exec_in("client", sys.executable, "-c", FETCH, f"http://{GATEWAY}:8080/"), "hello"),
        _check(f"web -> {GATEWAY}:8080 (hairpin)",
               exec_in("web", sys.executable, "-c", FETCH, f"http://{GATEWAY}:8080/"), "hello"),
        _check("container:web shares web's stack (127.0.0.1:80)",
               host.podnet("container", "run", "--rm", "--network", "container:web", "--",
                           sys.executable, "-c", FETCH, "http://127.0.0.1:80/", check=False), "hello"),
        _check("--network none has loopback only",
               host.podnet("container", "run", "--rm", "--network", "none", "--",
                           sys.executable, "-c", "import socket; print([n for _, n in socket.if_nameindex()])",
                           check=False), "['lo']"),
    ]
    _show_containers(console, host)
    if keep:
        _show_checks(console, checks)
        console.print("\nleft running (--keep). Try, inside the host namespace:")
        console.print(f"  ip netns exec {host.ns} env PODNET_STATE_DIR={host.env['PODNET_STATE_DIR']} "
                      f"PODNET_AGENT_SOCKET={host.socket} podnet container ls")
        console.print(f"tear down: podnet container rm -f web client; podnet network rm {NETWORK}; "
                      f"then stop the agent and `ip netns del {host.ns}`")
        return all(c.ok for c in checks)
    for name in ("web", "client"):
        host.podnet("container", "rm", "-f", name)
    host.podnet("network", "rm", NETWORK)
    leftovers = _leftovers(host)
    checks.append(Check("after rm: no container, address, veth or rule left", not leftovers, leftovers or "clean"))
    _show_checks(console, checks)
    return all(c.ok for c in checks)


def _wait(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo containers did not become ready")
        time.sleep(0.2)


def _leftovers(host: DemoHost) -> str:
    problems = []
    containers = json.loads(host.podnet("container", "ls", "-a", "-o", "json").stdout)
    if containers:
        problems.append(f"{len(containers)} container(s) left")
    links = host.in_host("ip", "-o", "link", "show", "type", "veth").stdout.strip()
    if links:
        problems.append(f"veths left: {links}")
    rules = host.in_host("nft", "list", "ruleset").stdout.count("podnet:")
    if rules:
        problems.append(f"{rules} nft rule(s) left")
    netns = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if n.startswith("pnc-")]
    if netns:
        problems.append(f"container namespaces left: {netns}")
    return "; ".join(problems)


def _show_containers(console: Console, host: DemoHost) -> None:
    rows = json.loads(host.podnet("container", "ls", "-o", "json").stdout)
    table = Table(title=f"containers on network {NETWORK} ({SUBNET})")
    for col in ("name", "address", "aliases", "published", "state"):
        table.add_column(col, no_wrap=True)
    for row in rows:
        ports = ", ".join(f"{p['hostPort']}->{p['containerPort']}/{p['protocol']}" for p in row.get("ports", []))
        table.add_row(row["name"], ", ".join(row.get("ips", [])), ", ".join(row.get("aliases", [])) or "-",
                      ports or "-", row.get("state", "?"))
    console.print(table)


def _show_checks(console: Console, checks: list[Check]) -> None:
    table = Table(title="live checks")
    for col in ("check", "result", "detail"):
        table.add_column(col, overflow="fold")
    for check in checks:
        table.add_row(check.name, "[green]pass[/]" if check.ok else "[red]FAIL[/]", check.detail)
    console.print(table)
    passed = sum(c.ok for c in checks)
    console.print(f"{passed} passed, {len(checks) - passed} failed")

"""`podnet demo`: podnet as a runtime sees it, live, in a sandbox namespace.

A simulated host namespace runs the agent; two container namespaces are attached
through the real CNI executables (as podman would call them), a web server publishes a
port, and every path a user relies on is checked: container to container, the
published port from the host (127.0.0.1 and the gateway), from the other container,
and hairpin. Then everything is deleted and the demo proves nothing leaked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from podnet.install import install_cni
from podnet.lab.sandbox import Sandbox, wait_for_path
from podnet.runtime.libcni import Conflist

STATE = Path("/run/podnet/demo.json")
SUBNET = "10.88.7.0/24"
GATEWAY = "10.88.7.1"
HTTP_GET = (
    "import sys, urllib.request;"
    "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())"
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def conflist(socket_path: str, data_dir: str) -> dict:
    return {
        "cniVersion": "1.1.0",
        "name": "demo",
        "plugins": [
            {
                "type": "podnet",
                "bridge": "pndemo0",
                "isDefaultGateway": True,
                "ipMasq": True,
                "agentSocket": socket_path,
                "capabilities": {"portMappings": True},
                "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": SUBNET}]], "dataDir": data_dir},
            }
        ],
    }


def _http(sandbox: Sandbox, ns: str, url: str) -> Check:
    proc = sandbox.exec(ns, [sys.executable, "-c", HTTP_GET, url], check=False, timeout=10)
    errors = proc.stderr.strip().splitlines()
    text = proc.stdout.strip() or (errors[-1] if errors else "")
    return Check(f"{ns.rsplit('-', 1)[-1]} -> {url}", proc.returncode == 0, text[:60])


def run_demo(keep: bool = False) -> int:
    if os.geteuid() != 0:
        print("podnet demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="pn-demo-"))
    sandbox = Sandbox("pn-demo-")
    ok = False
    try:
        ok = _run(console, sandbox, work, keep)
    finally:
        if not keep:
            sandbox.close()
            for path in sorted(work.rglob("*"), reverse=True):
                path.unlink() if not path.is_dir() else path.rmdir()
            work.rmdir()
    return 0 if ok else 1


def _run(console: Console, sandbox: Sandbox, work: Path, keep: bool) -> bool:
    bin_dir, data_dir = work / "bin", work / "data"
    install_cni(str(bin_dir))
    socket_path = f"/run/podnet/demo-{sandbox.token}.sock"
    host = sandbox.netns("host")
    console.print(f"[bold]podnet demo[/] - simulated host namespace [cyan]{host}[/]")
    log = sandbox.keep_open(open(work / "agent.log", "w"))  # noqa: SIM115 - lives with the agent
    agent = sandbox.spawn(
        host,
        [sys.executable, "-m", "podnet.cli", "agent", "--socket", socket_path,
         "--store", str(data_dir / "agent.db")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    wait_for_path(socket_path, proc=agent)
    net = Conflist(conflist(socket_path, str(data_dir)), [str(bin_dir), "/usr/lib/cni"], netns_exec=host)

    containers = {}
    for name, ports in (("web", [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]), ("client", [])):
        ns = sandbox.netns(name)
        started = time.perf_counter()
        result = net.add(f"demo-{name}", sandbox.path(ns), "eth0", {"portMappings": ports})
        containers[name] = (ns, result, (time.perf_counter() - started) * 1000, ports)

    table = Table(title="containers attached through CNI ADD")
    for col in ("container", "eth0 address", "mac", "published", "ADD ms"):
        table.add_column(col, no_wrap=True)
    for name, (_ns, result, ms, ports) in containers.items():
        iface = result["interfaces"][result["ips"][0]["interface"]]
        published = ", ".join(f"{p['hostPort']}->{p['containerPort']}/{p['protocol']}" for p in ports) or "-"
        table.add_row(name, result["ips"][0]["address"], iface["mac"], published, f"{ms:.0f}")
    console.print(table)

    web_ns = containers["web"][0]
    web_ip = containers["web"][1]["ips"][0]["address"].split("/")[0]
    (work / "www").mkdir()
    (work / "www" / "index.html").write_text("hello from the web container\n")
    server = sandbox.spawn(
        web_ns, [sys.executable, "-m", "http.server", "80", "--bind", "0.0.0.0", "-d", str(work / "www")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _wait_http(sandbox, web_ns, "http://127.0.0.1:80/", server)

    client_ns = containers["client"][0]
    checks = [
        _http(sandbox, client_ns, f"http://{web_ip}:80/"),
        _http(sandbox, host, "http://127.0.0.1:8080/"),
        _http(sandbox, host, f"http://{GATEWAY}:8080/"),
        _http(sandbox, client_ns, f"http://{GATEWAY}:8080/"),
        _http(sandbox, web_ns, f"http://{GATEWAY}:8080/"),
    ]
    checks[-1].name += " (hairpin)"
    if keep:
        _show_checks(console, checks)
        STATE.parent.mkdir(parents=True, exist_ok=True)
        STATE.write_text(json.dumps({"namespaces": sandbox.namespaces, "pids": [p.pid for p in sandbox.processes]}))
        console.print(f"\nleft running (--keep). Explore with: ip netns exec {web_ns} ip addr")
        console.print(f"agent socket: {socket_path}; tear down: kill {agent.pid} {server.pid}; "
                      + "; ".join(f"ip netns del {n}" for n in sandbox.namespaces))
        return all(c.ok for c in checks)

    sandbox.stop(server)
    for name, (ns, result, _, ports) in containers.items():
        net.delete(f"demo-{name}", sandbox.path(ns), "eth0", prev=result, runtime_config={"portMappings": ports})
    leftovers = _leftovers(sandbox, host, data_dir)
    checks.append(Check("after DEL: no address, veth or nft rule left", not leftovers, leftovers or "clean"))
    _show_checks(console, checks)
    agent.send_signal(signal.SIGTERM)
    return all(c.ok for c in checks)


def _wait_http(sandbox: Sandbox, ns: str, url: str, server, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the demo web server exited")
        if sandbox.exec(ns, [sys.executable, "-c", HTTP_GET, url], check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {ns}")


def _leftovers(sandbox: Sandbox, host: str, data_dir: Path) -> str:
    from podnet.ipam.service import IpamService
    from podnet.store import open_store

    store = open_store(str(data_dir / "podnet.db"))
    try:
        held = IpamService(store).reservations("demo")
    finally:
        store.close()
    links = sandbox.exec(host, ["ip", "-o", "link", "show", "type", "veth"]).stdout.strip()
    rules = sandbox.exec(host, ["nft", "list", "ruleset"]).stdout.count("podnet:")
    problems = []
    if held:
        problems.append(f"{len(held)} address(es) still reserved")
    if links:
        problems.append(f"veths left: {links}")
    if rules:
        problems.append(f"{rules} nft rule(s) left")
    return "; ".join(problems)


def _show_checks(console: Console, checks: list[Check]) -> None:
    table = Table(title="live checks")
    for col in ("check", "result", "detail"):
        table.add_column(col, overflow="fold")
    for check in checks:
        table.add_row(check.name, "[green]pass[/]" if check.ok else "[red]FAIL[/]", check.detail)
    console.print(table)
    passed = sum(c.ok for c in checks)
    console.print(f"{passed} passed, {len(checks) - passed} failed")

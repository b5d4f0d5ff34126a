"""The demo's mesh act: a canary release through the service mesh.

The demo topology gains a namespace `shop` with `web` in two versions (v1 on the
first node, v2 on the last, each its own app process) and a `client`, the services
`web`, `web-v1` and `web-v2`; this act meshes `shop` (`podnet mesh enable shop`),
sends 90/10 of `web` to v2 with an HTTPRoute and shows the split over 200 requests
from the client, then shifts it to 50/50 (server weights through the sidecar's
runtime API: no reload) and shows it again. Every step is checked: a split off by
more than 10 points, a failed request or a reload fails the demo.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from podnet.lab.state import NETNS_DIR
from podnet.lab.topology import Namespace, Pod, Port, Topology

NAMESPACE = "shop"
REQUESTS = 200
HTTP = (Port(80, "TCP", "http"),)
# N requests on one keep-alive connection from inside the client's namespace (through its sidecar)
LOAD = ("import http.client, json, sys\n"
        "c = http.client.HTTPConnection(sys.argv[1], 80, timeout=5); out = []\n"
        "for _ in range(int(sys.argv[2])):\n"
        "    c.request('GET', '/'); r = c.getresponse(); r.read(); out.append([r.status, r.getheader('x-version')])\n"
        "print(json.dumps(out))\n")


def _service(name: str, selector: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def route(v1: int, v2: int) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web-canary", "namespace": NAMESPACE},
            "spec": {"parentRefs": [{"kind": "Service", "name": "web", "port": 80}],
                     "rules": [{"backendRefs": [{"name": "web-v1", "port": 80, "weight": v1},
                                                {"name": "web-v2", "port": 80, "weight": v2}]}]}}


def with_mesh(topology: Topology) -> Topology:
    """The demo topology and the shop: web v1 and v2 and a client, their services."""
    first, last = topology.nodes[0].name, topology.nodes[-1].name
    from podnet.cli.demo_service import PROBE
    from podnet.model.probe import parse_probe

    probe = parse_probe(PROBE)
    pods = (Pod("web-v1", NAMESPACE, first, {"app": "web", "version": "v1"}, HTTP, probe, own_app=True),
            Pod("web-v2", NAMESPACE, last, {"app": "web", "version": "v2"}, HTTP, probe, own_app=True),
            Pod("client", NAMESPACE, first, {"app": "client"}, HTTP, probe, own_app=True))
    services = (_service("web", {"app": "web"}), _service("web-v1", {"app": "web", "version": "v1"}),
                _service("web-v2", {"app": "web", "version": "v2"}))
    return dataclasses.replace(topology, namespaces=(*topology.namespaces, Namespace(NAMESPACE)),
                               pods=(*topology.pods, *pods), services=(*topology.services, *services))


def _cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "podnet.cli", *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def _sidecars(lab: str) -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "podnet.cli", "mesh", "status", "--lab", lab, "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=False).stdout
    return {p["pod"]: p for node in json.loads(out or "{}").get("nodes", []) for p in node.get("pods", [])}


def _until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            return found
        time.sleep(0.3)
    return found


def _split(data: dict, web: str) -> Counter:
    netns = NETNS_DIR / data["pods"][f"{NAMESPACE}/client"]["netns"]
    out = subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-c", LOAD, web, str(REQUESTS)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return Counter(f"{status} {version}" for status, version in json.loads(out))


def _apply(lab: str, doc: dict, workdir: Any) -> None:
    import yaml

    from podnet.fileio import write_atomic

    path = workdir / "demo-canary.yaml"
    write_atomic(path, yaml.safe_dump(doc))
    _cli("apply", "--lab", lab, "-f", str(path))


def act(console: Any, data: dict) -> bool:
    """Mesh the shop, canary 90/10, shift to 50/50; True when every check held."""
    from pathlib import Path

    lab, workdir = data["name"], Path(data["labdir"])
    console.print("\n[bold]the service mesh: a canary release[/] (HAProxy sidecars, HTTPRoute weights)")
    try:
        _cli("mesh", "enable", NAMESPACE, "--lab", lab)
        want = {f"{NAMESPACE}/{p}" for p in ("web-v1", "web-v2", "client")}
        if not _until(lambda: {p for p, s in _sidecars(lab).items() if s["alive"]} >= want):
            console.print("[red]✗ the shop's sidecars did not come up[/]")
            return False
        console.print(f"[green]✓[/] podnet mesh enable {NAMESPACE}: a sidecar in each of its pods")
        services = json.loads(_cli("get", "svc", "-n", NAMESPACE, "-o", "json", "--lab", lab))
        items = services.get("items", services) if isinstance(services, dict) else services
        web = next(i["spec"]["clusterIP"] for i in items if i["metadata"]["name"] == "web")
        ok = True
        for v1, v2 in ((90, 10), (50, 50)):
            before = _sidecars(lab).get(f"{NAMESPACE}/client", {})
            _apply(lab, route(v1, v2), workdir)
            _until(lambda b=before: _changed(lab, b), timeout=20)
            seen = _split(data, web)
            after = _sidecars(lab).get(f"{NAMESPACE}/client", {})
            failed = REQUESTS - seen["200 v1"] - seen["200 v2"]
            good = failed == 0 and abs(100 * seen["200 v2"] / REQUESTS - v2) <= 10
            how = "a new route: one reload" if not before.get("routes") or "shop/web-canary#0" not in \
                before["routes"] else f"weights through the runtime API, reloads {after['reloads'] - before['reloads']}"
            ok = ok and good and (v2 == 10 or after["reloads"] == before["reloads"])
            console.print(f"{'[green]✓[/]' if good else '[red]✗[/]'} HTTPRoute web {v1}/{v2} ({how}): "
                          f"{REQUESTS} requests from shop/client -> v1 {seen['200 v1']}, v2 {seen['200 v2']}, "
                          f"failed {failed}")
        console.print(f"  [dim]# live per-route figures[/]\n  podnet mesh top --lab {lab}", soft_wrap=True)
        return ok
    except (subprocess.SubprocessError, ValueError, KeyError, StopIteration) as exc:
        console.print(f"[red]✗ mesh act: {exc}[/]")
        return False


def _changed(lab: str, before: dict) -> bool:
    """The client's sidecar took the route: a reload (a new route) or new weights."""
    car = _sidecars(lab).get(f"{NAMESPACE}/client") or {}
    return car.get("alive", False) and "shop/web-canary#0" in car.get("routes", []) and (
        car["reloads"] > before.get("reloads", 0) or car["weight_updates"] > before.get("weight_updates", 0))

"""The demo's service act: a ClusterIP service over the echo pods, found by its name
through cluster DNS, load balanced, then one backend failing its readiness probe and
the service failing over, then its return.

The demo topology gives every echo pod a readiness probe (TCP on its http port, every
second) and declares the `echo` Service; this module shows the spread from one pod,
makes one backend unready by rejecting its probe port inside that pod's own namespace
(a lab namespace: nothing of the host is touched), shows the spread without it, and
lifts the block. Every step is checked: a backend that does not leave, or does not
come back, fails the demo.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from typing import Any

from podnet.errors import PodnetError
from podnet.lab.topology import Topology
from podnet.model.probe import parse_probe

SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "default"},
           "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
PROBE = {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "failureThreshold": 1}
BLOCK = "add table inet demo; add chain inet demo in { type filter hook input priority 0; }; " \
        "add rule inet demo in tcp dport 80 reject with tcp reset"
CONNECTIONS = 30
SPREAD_LOOKS = 3  # rounds of CONNECTIONS at most, until every pod has answered


def with_service(topology: Topology) -> Topology:
    """The demo topology: every pod probed, and the `echo` service over them."""
    pods = tuple(dataclasses.replace(p, readiness=parse_probe(PROBE)) for p in topology.pods)
    return dataclasses.replace(topology, pods=pods, services=(SERVICE,))


def wait_ready(data: dict, timeout: float = 20.0) -> bool:
    """Until every pod's node has judged it ready (a probe every second): only then is
    each of them a backend of the service."""
    wanted = {key.split("/", 1)[1] for key in data.get("pods", {})}
    return _until(lambda: wanted <= ready_pods(data), timeout)


def ready_pods(data: dict) -> set[str]:
    """The names of the pods their nodes last judged ready."""
    from podnet import keys
    from podnet.services.endpoints import judged_readiness
    from podnet.store import open_store

    with open_store(data["store_url"]) as store:
        return {ref.split("/", 1)[1] for ref, ok in judged_readiness(store.list(keys.READINESS)).items() if ok}


def _spread(data: dict, client: str, found: list) -> dict[str, int]:
    from podnet.lab.state import NETNS_DIR
    from podnet.observe import service_probe

    path = str(NETNS_DIR / data["pods"][client]["netns"])
    return service_probe.run({client: path}, found, CONNECTIONS, 1.0)[client][found[0].label]


def _until(check: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return False


def _nft_in_pod(data: dict, pod: str, script: str, check: bool = True) -> None:
    """One nft script inside a lab pod's own namespace (never the host's)."""
    from podnet.lab.state import NETNS_DIR

    subprocess.run(["nsenter", f"--net={NETNS_DIR / data['pods'][pod]['netns']}", "--", "nft", script],
                   check=check, capture_output=True, timeout=10)


def act(console: Any, data: dict) -> bool:
    """Show the service balancing and failing over; True when every step held."""
    from podnet.observe import service_probe
    from podnet.store import open_store

    pods = [key for key in data.get("pods", {}) if key.startswith("default/")]  # the echo pods
    if len(pods) < 3:
        return True  # too small a lab to show a fail-over
    client, victim = pods[0], pods[-1]
    victim_name = victim.split("/", 1)[1]
    with open_store(data["store_url"]) as store:
        _, found = service_probe.frontends(store, "svc/default/echo")
    console.print(f"\n[bold]service default/echo[/] ({found[0].label}): {CONNECTIONS} connections from {client}")
    resolved = _resolve(data, client, "echo.default.svc." + (data.get("cluster_dns") or {}).get("domain", ""))
    if resolved is not None:
        console.print(f"  {client} resolves it through cluster DNS: {resolved}")
        ok_dns = resolved.endswith(f"-> {found[0].ip}")
    else:
        ok_dns = True  # a lab without cluster DNS
    names = {p.split("/", 1)[1] for p in pods}
    before = _spread(data, client, found)
    for _ in range(SPREAD_LOOKS - 1):  # 30 random picks among 6 pods miss one ~2.5% of the time
        if set(before) >= names:
            break
        more = _spread(data, client, found)
        before = {name: before.get(name, 0) + more.get(name, 0) for name in {*before, *more}}
    console.print(f"  answered by {before}")
    ok = set(before) == names
    try:
        _nft_in_pod(data, victim, BLOCK)
        console.print(f"  {victim} now fails its readiness probe ...")
        t0 = time.monotonic()
        gone = _until(lambda: victim_name not in ready_pods(data))
        console.print(f"  judged not ready by its node after {time.monotonic() - t0:.1f}s")
        time.sleep(0.5)  # every node's table follows through its watch
        after = _spread(data, client, found)
        console.print(f"  failed over: answered by {after}")
        ok = ok and gone and victim_name not in after and "timeout" not in after and "refused" not in after
    except (subprocess.SubprocessError, PodnetError) as exc:
        console.print(f"[red]✗ could not fail {victim}: {exc}[/]")
        ok = False
    finally:
        _nft_in_pod(data, victim, "delete table inet demo", check=False)
    back = _until(lambda: victim_name in ready_pods(data)) and \
        _until(lambda: victim_name in _spread(data, client, found))
    console.print(f"  {victim} passes again: {'back in the service' if back else 'NOT back'}")
    mark = "[green]✓[/]" if ok and back and ok_dns else "[red]✗[/]"
    console.print(f"{mark} service load balancing and fail-over")
    return ok and back and ok_dns


def _resolve(data: dict, client: str, name: str) -> str | None:
    """`name`'s A record as the client pod gets it from the cluster DNS service."""
    import json

    from podnet.observe.connectivity import probe_argv

    dns = data.get("cluster_dns")
    if not dns:
        return None
    spec = {"kind": "dns", "dst": dns["ip"], "port": 53, "name": name, "qtype": "A"}
    proc = subprocess.run(probe_argv(data["pods"][client]["netns"], spec),
                          capture_output=True, text=True, timeout=10, check=False)
    try:
        detail = json.loads(proc.stdout)["detail"]
    except (ValueError, KeyError):
        return f"no answer ({proc.stderr.strip()[-200:]})"
    return f"{name} -> {detail.removeprefix('answer ')}"

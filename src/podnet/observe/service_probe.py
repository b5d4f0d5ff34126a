"""`podnet probe --to svc/NS/NAME` (or `--to VIP[:PORT]`): which backends answer a
service, seen from each source pod.

The service's frontends (its ClusterIP, one per port) come from the cluster store;
every source pod then opens `count` new connections (TCP: a line, UDP: a datagram)
to each frontend, from inside its own namespace, all sources in parallel, and counts
who answered: the lab's echo servers answer with the pod's name, so a row shows the
spread over backends, a backend that never answers, or how the service fails
("refused" at once for a service without ready backends, "timeout" when something
drops the packets, a NetworkPolicy for instance).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from podnet import keys
from podnet.errors import PodnetError
from podnet.services.kinds import SERVICE, read_service
from podnet.store.base import Store

# run in the source pod's namespace with `python3 -I -S -c`: standard library only
SCRIPT = r"""
import collections, json, socket, sys
spec = json.loads(sys.argv[1])
out = {}
for ip, port, proto in spec["frontends"]:
    seen = collections.Counter()
    for _ in range(spec["count"]):
        try:
            if proto == "tcp":
                with socket.create_connection((ip, port), timeout=spec["timeout"]) as s:
                    s.sendall(b"podnet-probe\n")
                    answer = s.makefile("rb").readline(256).decode(errors="replace").split(" ", 1)[0].strip()
            else:
                with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(spec["timeout"]); s.connect((ip, port)); s.send(b"podnet-probe")
                    answer = s.recv(256).decode(errors="replace").strip()
            seen[answer or "(empty answer)"] += 1
        except ConnectionRefusedError:
            seen["refused"] += 1
        except TimeoutError:
            seen["timeout"] += 1
        except OSError as exc:
            seen[exc.strerror or type(exc).__name__] += 1
    out[f"{ip}:{port}/{proto}"] = dict(seen)
print(json.dumps(out))
"""


class ServiceProbeError(PodnetError):
    pass


@dataclass(frozen=True)
class Frontend:
    ip: str
    port: int
    protocol: str  # tcp | udp

    @property
    def label(self) -> str:
        return f"{self.ip}:{self.port}/{self.protocol}"


def is_service_target(text: str | None) -> bool:
    """`svc/...`, or an address (with an optional port): a service probe."""
    if not text:
        return False
    if text.startswith("svc/"):
        return True
    host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def frontends(store: Store, target: str) -> tuple[str, list[Frontend]]:
    """The service named by `target` and its frontends: `svc/NS/NAME` (every port of its
    ClusterIP) or `VIP[:PORT]` (the service owning that cluster or external IP)."""
    services = [read_service(e.json(), e.key) for e in store.list(keys.SERVICES)]
    if target.startswith("svc/"):
        namespace, _, name = target[4:].partition("/")
        if not name:
            namespace, name = "default", namespace
        svc = next((s for s in services if (s.namespace, s.name) == (namespace, name)), None)
        if svc is None:
            raise ServiceProbeError(f"service {namespace}/{name} not found", f"list them: podnet get {SERVICE.plural}")
        ips, port = [svc.cluster_ip], None
    else:
        host, port = (target.rsplit(":", 1)[0], int(target.rsplit(":", 1)[1])) if target.count(":") == 1 \
            else (target, None)
        host = str(ipaddress.ip_address(host))
        svc = next((s for s in services if host in (s.cluster_ip, *s.external_ips, *s.load_balancer_ips)), None)
        if svc is None:
            raise ServiceProbeError(f"no service has the address {host}")
        ips = [host]
    if svc.headless:
        raise ServiceProbeError(f"service {svc.ref} is headless: it has no virtual IP to probe",
                                "probe its pods with --to instead")
    found = [Frontend(ip, p.port, p.protocol.lower()) for ip in ips for p in svc.ports if port in (None, p.port)]
    if not found:
        raise ServiceProbeError(f"service {svc.ref} has no port {port}")
    return svc.ref, found


def _run_source(netns_path: str, spec: dict) -> dict[str, dict[str, int]]:
    proc = subprocess.run(["nsenter", f"--net={netns_path}", "--", sys.executable, "-I", "-S", "-c", SCRIPT,
                           json.dumps(spec)], capture_output=True, text=True,
                          timeout=30 + spec["count"] * spec["timeout"] * len(spec["frontends"]), check=False)
    if proc.returncode != 0:
        raise ServiceProbeError(f"the probe in {netns_path} failed", proc.stderr.strip()[-300:])
    return json.loads(proc.stdout)


def run(sources: Mapping[str, str], found: Sequence[Frontend], count: int,
        timeout: float) -> dict[str, dict[str, dict[str, int]]]:
    """{source pod: {frontend: {who answered: times}}}; `sources` maps a pod to the
    path of its network namespace."""
    spec = {"frontends": [(f.ip, f.port, f.protocol) for f in found], "count": count, "timeout": timeout}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(sources)))) as pool:
        futures = {src: pool.submit(_run_source, path, spec) for src, path in sources.items()}
        return {src: future.result() for src, future in futures.items()}


def render(service: str, results: Mapping[str, Mapping[str, Mapping[str, int]]], console) -> None:
    from rich.table import Table

    columns = sorted({f for row in results.values() for f in row})
    table = Table(title=f"service {service}: who answered")
    table.add_column("from")
    for column in columns:
        table.add_column(column)
    for src in sorted(results):
        cells = [", ".join(f"{who} {n}" for who, n in sorted(results[src].get(c, {}).items())) or "-"
                 for c in columns]
        table.add_row(src, *cells)
    console.print(table)

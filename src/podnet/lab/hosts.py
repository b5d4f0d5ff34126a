"""`podnet lab host add NAME`: a plain, non-container host on the lab fabric (a VM or
bare-metal machine, as Calico's host endpoints protect them).

A host is a namespace `pn-lab-<lab>-h-<name>` with `eth0` on its rack's bridge at
172.31.<rack>.(190 + k), routed like a node, serving an echo server (TCP/UDP 80 by
default) so probes can reach it, and running `podnet agent --policy-host NAME`: no
pods, no fabric, only the policy service, which enforces the ClusterPolicies that
select the HostEndpoint naming this host (host: NAME) on the host's own input and
output hooks. Its address is published in the store as `hosts/<name>` (from inside the
lab), where policy finds it for hostEndpointSelector peers.

`--join` then runs `podnet host join NAME --apply` inside the host (hostjoin/): it gets
a podnet address from the hosts block and routes to every node's pods, as a VM would
by running the command itself. The address is recorded in the lab state (`pod_ip`);
everything join did lives in the host's namespace and the store, so `lab down` needs
nothing more.

Everything is recorded in the lab state before it is created, and the daemons are
children of the lab's supervisor: `lab down` removes a host like any node.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from podnet.lab import topology as topo
from podnet.lab.orchestrator import in_lab_argv
from podnet.lab.state import LabError, LabState, enter, run
from podnet.lab.supervisor_client import spawn_supervised
from podnet.lab.underlay import machine_routes, plug

FIRST_HOST = 190
MAX_HOSTS_PER_RACK = 10  # .190-.199: below the etcd members (.200+) and the outside (.254)


def host_netns(lab: str, name: str) -> str:
    return f"pn-lab-{lab}-h-{name}"


def host_socket(lab: str, name: str) -> str:
    return f"/run/podnet/lab-{lab}-h-{name}.sock"


def add_host(lab: str, name: str, rack: int = 0, tcp: tuple[int, ...] = (80,), udp: tuple[int, ...] = (80,),
             timeout: float = 30.0, join: bool = False) -> dict:
    """Create, record and start a plain host (`join`: then join it to the pod
    network); return its state entry."""
    if os.geteuid() != 0:
        raise LabError("podnet lab host add needs root (it creates a network namespace)")
    topo.check_name(name, "host name")
    st = LabState.load(lab)
    hosts = st.data.setdefault("hosts", {})
    if name in hosts or name in st.data.get("nodes", {}):
        raise LabError(f"lab {lab} already has a node or host named {name!r}")
    racks = int(st.data.get("racks", 1))
    if not 0 <= rack < racks:
        raise LabError(f"rack {rack} does not exist", f"lab {lab} has racks 0..{racks - 1}")
    used = {h["underlay"] for h in hosts.values()}
    free = [f"{topo.UNDERLAY_PREFIX}.{rack}.{FIRST_HOST + k}" for k in range(MAX_HOSTS_PER_RACK)]
    free = [a for a in free if a not in used]
    if not free:
        raise LabError(f"rack {rack} already has {MAX_HOSTS_PER_RACK} hosts")
    ns = host_netns(lab, name)
    entry = {"netns": ns, "rack": rack, "underlay": free[0], "socket": host_socket(lab, name),
             "state_dir": str(st.labdir / f"h-{name}"), "tcp": list(tcp), "udp": list(udp)}
    hosts[name] = entry
    st.data["sockets"].append(entry["socket"])
    st.add_netns(ns)  # records (and saves) before it creates
    plug(topo.netns_name(lab, f"fab{rack}"), f"h{len(hosts) - 1}", ns, "eth0", f"{free[0]}/24",
         int(st.data.get("nic_gso") or 65536))
    machine_routes(ns, rack, racks)
    _start(st, name, entry, timeout)
    st.save()
    # publishes hosts/<name>, from inside the lab (an etcd store is reachable only there)
    run(in_lab_argv(st, [sys.executable, "-m", "podnet.lab.orchestrator", lab]), timeout=60)
    if join:
        join_host(st, name, entry)
    return entry


def join_host(st: LabState, name: str, entry: dict) -> None:
    """`podnet host join NAME --apply` run inside the host, as on a real VM; its
    podnet address goes into the lab state."""
    argv = [*enter(entry["netns"]), sys.executable, "-m", "podnet.cli", "host", "join", name, "--apply",
            "--underlay", "eth0", "--store", st.data["store_url"], "-o", "json"]
    if st.data.get("cluster_cidr"):
        argv += ["--cluster-cidr", st.data["cluster_cidr"]]
    proc = run(argv, timeout=60)
    try:
        entry["pod_ip"] = json.loads(proc.stdout)["record"]["pod_ip"]
    except (ValueError, KeyError, TypeError):
        raise LabError(f"host join of {name} printed no address", proc.stdout.strip()[-300:]) from None
    st.save()


def _start(st: LabState, name: str, entry: dict, timeout: float) -> None:
    logs = st.labdir / "logs"
    logs.mkdir(exist_ok=True)
    ready = st.labdir / "ready" / f"host-{name}"
    ready.parent.mkdir(parents=True, exist_ok=True)
    Path(entry["state_dir"]).mkdir(parents=True, exist_ok=True)
    # --report-peer: `GET /peer` tells which source address reached the host (a pod's, not masqueraded)
    echo = [sys.executable, "-m", "podnet.lab.echo", "--name", name, "--ready", str(ready), "--report-peer"]
    for port in entry["tcp"]:
        echo += ["--tcp", str(port)]
    for port in entry["udp"]:
        echo += ["--udp", str(port)]
    agent = [sys.executable, "-m", "podnet.cli", "agent", "--socket", entry["socket"], "--state-dir",
             entry["state_dir"], "--store", st.data["store_url"], "--policy-host", name]
    for proc, argv in ((f"echo/h-{name}", echo), (f"agent/h-{name}", agent)):
        entry[f"{proc.split('/')[0]}_pid"] = spawn_supervised(st.labdir, proc, [*enter(entry["netns"]), *argv],
                                                              logs / f"{proc.replace('/', '_')}.log")
        st.save()
    deadline = time.monotonic() + timeout
    while not (ready.exists() and os.path.exists(entry["socket"])):
        for proc in (f"echo/h-{name}", f"agent/h-{name}"):
            if "exit" in st.processes().get(proc, {}):
                raise LabError(f"{proc} exited while starting", f"see {logs}/{proc.replace('/', '_')}.log")
        if time.monotonic() > deadline:
            raise LabError(f"host {name} did not come up within {timeout:.0f}s")
        time.sleep(0.05)

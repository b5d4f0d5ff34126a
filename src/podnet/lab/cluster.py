"""Build and tear down a lab: a multi-node cluster made of network namespaces.

Layout (lab `L`, every namespace named `pn-lab-L-<role>`):

- `fab<r>`: one per rack, a bridge `br0` (the rack's L2 segment 172.31.r.0/24);
- `<node>`: the node, `eth0` (veth into its rack's bridge), 172.31.r.(10+k)/24,
  ip_forward on, default route to the outside (directly on rack 0, via the router
  elsewhere); its agent runs here (`nsenter --net`, same mount namespace);
- `rtr`: with racks > 1, one leg per rack (172.31.r.1) routing between segments;
- `out`: the outside world on rack 0 (172.31.0.254, and 198.51.100.1 on lo) running
  an HTTP (TCP 80) / UDP 80 echo target;
- `etcd<i>`: with `--store etcd`, three etcd members on rack 0 (172.31.0.200+i);
- `p-<ns>-<pod>`: one per pod, attached through the node's CNI conflist, served by the
  built-in echo server for its ports (one `echo/<node>` process per node, whose sockets
  are opened inside each pod's namespace).

Everything is recorded in the state file `/run/podnet/lab-L.json` *before* it is
created (namespaces, sockets, the lab directory), and processes right after they are
spawned (by the supervisor, in `<labdir>/procs.json`), so `teardown` removes exactly
those by name and pid ("pid:starttime") even after `lab up` crashed. The root
namespace is never changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from podnet.errors import PodnetError
from podnet.kernel import gso, rtnl
from podnet.lab import topology as topo
from podnet.lab.topology import Pod, Topology
from podnet.procs import owner_alive
from podnet.state import StatePaths

RUN_DIR = Path("/run/podnet")
NETNS_DIR = Path("/run/netns")
CLUSTER_CONFLIST = "cluster.conflist"
BLOCK_PREFIX = 24
LEASE_TTL = 10
NIC_GSO = gso.BIG_TCP
ETCD_MEMBERS = 3


class LabError(PodnetError):
    """A lab could not be built, found or torn down."""


def state_file(name: str) -> Path:
    return RUN_DIR / f"lab-{name}.json"


def lab_dir(name: str) -> Path:
    return RUN_DIR / f"lab-{name}"


def node_socket(lab: str, node: str) -> str:
    return str(RUN_DIR / f"lab-{lab}-{node}.sock")


def enter(ns: str) -> list[str]:
    """argv prefix running a command in namespace `ns` (network only, same mounts)."""
    return ["nsenter", f"--net={NETNS_DIR / ns}", "--"]


def agent_has_cluster_flags() -> bool:
    """Does `podnet agent` take --node (cluster state + fabrics)?"""
    from podnet.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        agent = action.choices.get("agent")  # type: ignore[union-attr]
        if agent is not None:
            return any("--node" in a.option_strings for a in agent._actions)
    return False


def _run(argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed", proc.stderr.strip())
    return proc


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", *args], check=check)


# --------------------------------------------------------------------------- state


class LabState:
    """The state file: written atomically after every change, by `lab up` only."""

    def __init__(self, name: str, data: dict) -> None:
        self.name = name
        self.data = data

    @classmethod
    def create(cls, name: str, **meta: object) -> LabState:
        data = {"name": name, "phase": "building", "labdir": str(lab_dir(name)), "namespaces": [],
                "sockets": [], "nodes": {}, "pods": {}, "outside": {}, "etcd": [], "created": time.time(),
                **meta}
        state = cls(name, data)
        state.save()
        return state

    @classmethod
    def load(cls, name: str) -> LabState:
        path = state_file(name)
        try:
            return cls(name, json.loads(path.read_text()))
        except FileNotFoundError:
            raise LabError(f"no lab named {name!r}", f"{path} does not exist") from None
        except ValueError as exc:
            raise LabError(f"{path} is not valid JSON: {exc}") from None

    def save(self) -> None:
        path = state_file(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.data, separators=(",", ":")))
        os.replace(tmp, path)

    @property
    def labdir(self) -> Path:
        return Path(self.data["labdir"])

    def processes(self) -> dict[str, dict]:
        """What the supervisor recorded (name -> pid, owner, argv, exit)."""
        try:
            return json.loads((self.labdir / "procs.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def add_netns(self, ns: str) -> str:
        """Record, then create, a namespace with lo up."""
        self.data["namespaces"].append(ns)
        self.save()
        _create_netns(ns)
        return ns

    def add_netns_batch(self, names: list[str], workers: int = 8) -> None:
        """Record every namespace with one save, then create them in parallel."""
        self.data["namespaces"].extend(names)
        self.save()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_create_netns, names))


def _create_netns(ns: str) -> None:
    ip("netns", "add", ns)
    ip("-n", ns, "link", "set", "lo", "up")


# ----------------------------------------------------------------------- supervisor


def _spawned(name: str, line: str, log: Path) -> int:
    """The supervisor's answer to a spawn request: the child's pid, or LabError."""
    if not line:
        raise LabError("the lab supervisor exited", f"see {log.parent}/supervisor.log")
    reply = json.loads(line)
    if "error" in reply:
        raise LabError(f"cannot start {name}: {reply['error']}")
    return int(reply["pid"])


def spawn_supervised(labdir: Path, name: str, argv: list[str], log: Path) -> int:
    """Ask a running lab's supervisor (its unix socket) to start and record a daemon."""
    import socket

    path = labdir / "supervisor.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            with sock.makefile("rw") as stream:
                stream.write(json.dumps({"name": name, "argv": argv, "log": str(log)}) + "\n")
                stream.flush()
                return _spawned(name, stream.readline(), log)
    except OSError as exc:
        raise LabError(f"the lab supervisor does not answer on {path}: {exc}",
                       "is the lab up? podnet lab status") from None


class SupervisorClient:
    """The CLI's end of the supervisor's stdin/stdout protocol."""

    def __init__(self, labdir: Path) -> None:
        log = open(labdir / "supervisor.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "podnet.lab.supervise", str(labdir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        )
        log.close()

    def spawn(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"name": name, "argv": argv, "log": str(log), "env": env or {}}) + "\n")
        self.proc.stdin.flush()
        return _spawned(name, self.proc.stdout.readline(), log)

    def detach(self) -> None:
        """Leave the supervisor running on its own (it ignores the closed pipes)."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ up


@dataclass
class LabOptions:
    name: str = "lab"
    fabric: str = "vxlan"
    store: str = "sqlite"
    cluster_cidr: str = topo.CLUSTER_CIDR
    timeout: float = 30.0
    lease_ttl: float = LEASE_TTL  # the agents' --lease-ttl (reliability tests shorten it)
    nic_gso: int = NIC_GSO  # GSO/GRO limit of the lab's "NICs" (65536: no BIG TCP)


Progress = Callable[[str], None]


class LabBuilder:
    """`lab up`: every step records first, then creates."""

    def __init__(self, topology: Topology, options: LabOptions, progress: Progress = lambda _: None) -> None:
        self.t = topology
        self.o = options
        self.progress = progress
        self.state: LabState | None = None
        self.sup: SupervisorClient | None = None
        # PODNET_LAB_SIMULATE_NODES=1: the lab hands out blocks itself (no fabric)
        self.simulate = bool(os.environ.get("PODNET_LAB_SIMULATE_NODES"))
        self.cluster_flags = agent_has_cluster_flags() and not self.simulate

    def ns(self, role: str) -> str:
        return topo.netns_name(self.o.name, role)

    @property
    def st(self) -> LabState:
        assert self.state is not None
        return self.state

    def build(self) -> LabState:
        if os.geteuid() != 0:
            raise LabError("podnet lab needs root (it creates network namespaces)")
        topo.check_lab_name(self.o.name)
        if state_file(self.o.name).exists():
            raise LabError(f"lab {self.o.name!r} already exists", f"tear it down first: podnet lab down --name {self.o.name}")
        if self.o.store == "etcd" and not shutil.which("etcd"):
            raise LabError("--store etcd needs the etcd binary (Debian: apt-get install etcd-server)")
        if not self.cluster_flags and not self.simulate:
            raise LabError(
                "this podnet agent has no --node (cluster state and fabrics are not built yet)",
                "set PODNET_LAB_SIMULATE_NODES=1 to let the lab hand out blocks itself (no cross-node routes)",
            )
        self.state = LabState.create(self.o.name, fabric=self.o.fabric, store=self.o.store,
                                     racks=self.t.racks, simulated=not self.cluster_flags,
                                     nic_gso=self.o.nic_gso, hosts={})
        self.st.labdir.mkdir(parents=True, exist_ok=True)
        self.underlay()
        self.progress(f"underlay: {self.t.racks} rack(s), {len(self.t.nodes)} node(s), outside {topo.OUTSIDE_IP}")
        from podnet.install import install_cni

        install_cni(str(self.st.labdir / "bin"))
        self.sup = SupervisorClient(self.st.labdir)
        self.st.data["supervisor"] = {"pid": self.sup.proc.pid}
        self.st.save()
        self.start_outside()
        store = self.start_store()
        self.progress(f"store: {store}")
        self.start_agents(store)
        self.progress(f"agents: {len(self.t.nodes)} up, blocks leased")
        self.attach_pods()
        self.progress(f"pods: {len(self.t.pods)} attached, echo servers ready")
        self.st.data["phase"] = "up"
        self.st.save()
        self.sup.detach()
        return self.st

    # underlay ---------------------------------------------------------------

    def underlay(self) -> None:
        racks = self.t.racks
        for rack in range(racks):
            fab = self.st.add_netns(self.ns(f"fab{rack}"))
            ip("-n", fab, "link", "add", "br0", "type", "bridge")
            ip("-n", fab, "link", "set", "br0", "up")
            set_nic_gso(fab, "br0", self.o.nic_gso)
            # The fabric is a plain switch: its frames have no business in netfilter
            # (br_netfilter is on by default in new namespaces and costs throughput).
            _run([*enter(fab), "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0",
                  "net.bridge.bridge-nf-call-ip6tables=0"])
        if racks > 1:
            rtr = self.st.add_netns(self.ns("rtr"))
            self.forwarding(rtr)
            for rack in range(racks):
                self.plug(rack, f"rtr{rack}", rtr, f"r{rack}", f"{topo.router_ip(rack)}/24")
            ip("-n", rtr, "route", "add", "default", "via", topo.OUTSIDE_UNDERLAY)
        out = self.st.add_netns(self.ns("out"))
        self.plug(0, "out", out, "eth0", f"{topo.OUTSIDE_UNDERLAY}/24")
        ip("-n", out, "addr", "add", f"{topo.OUTSIDE_IP}/32", "dev", "lo")
        self.route_to_racks(out)
        self.st.data["outside"] = {"netns": out, "underlay": topo.OUTSIDE_UNDERLAY, "ip": topo.OUTSIDE_IP}
        for node in self.t.nodes:
            ns = self.st.add_netns(self.ns(node.name))
            self.st.data["nodes"][node.name] = {
                "netns": ns, "rack": node.rack, "underlay": node.underlay_ip,
                "socket": node_socket(self.o.name, node.name), "state_dir": str(self.st.labdir / node.name),
            }
            self.plug(node.rack, f"n{node.index}", ns, "eth0", f"{node.underlay_ip}/24")
            self.forwarding(ns)
            machine_routes(ns, node.rack, self.t.racks)
        self.st.save()

    def plug(self, rack: int, fabric_end: str, ns: str, ifname: str, address: str) -> None:
        plug(self.ns(f"fab{rack}"), fabric_end, ns, ifname, address, self.o.nic_gso)

    def route_to_racks(self, ns: str) -> None:
        route_to_racks(ns, self.t.racks)

    @staticmethod
    def forwarding(ns: str) -> None:
        _run([*enter(ns), "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    # daemons --------------------------------------------------------------

    def spawn(self, name: str, ns: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        assert self.sup is not None
        logs = self.st.labdir / "logs"
        logs.mkdir(exist_ok=True)
        return self.sup.spawn(name, [*enter(ns), *argv], logs / f"{name.replace('/', '_')}.log", env)

    def start_outside(self) -> None:
        ready = self.st.labdir / "ready-outside"
        pid = self.spawn("echo/outside", self.ns("out"), [sys.executable, "-m", "podnet.lab.echo", "--name", "outside",
                                                         "--tcp", "80", "--udp", "80", "--ready", str(ready),
                                                         "--report-peer"])
        self.st.data["outside"]["echo_pid"] = pid
        self.st.save()

    def start_store(self) -> str:
        if self.o.store == "sqlite":
            return str(self.st.labdir / "store.db")
        members = [(f"etcd{i}", topo.etcd_ip(i)) for i in range(ETCD_MEMBERS)]
        cluster = ",".join(f"{name}=http://{addr}:2380" for name, addr in members)
        for i, (name, addr) in enumerate(members):
            ns = self.st.add_netns(self.ns(name))
            self.plug(0, f"e{i}", ns, "eth0", f"{addr}/24")
            self.route_to_racks(ns)
            argv = ["etcd", "--name", name, "--data-dir", str(self.st.labdir / name),
                    "--listen-client-urls", f"http://{addr}:2379", "--advertise-client-urls", f"http://{addr}:2379",
                    "--listen-peer-urls", f"http://{addr}:2380", "--initial-advertise-peer-urls", f"http://{addr}:2380",
                    "--initial-cluster", cluster, "--initial-cluster-token", f"pn-lab-{self.o.name}",
                    "--initial-cluster-state", "new", "--heartbeat-interval", "50", "--election-timeout", "500",
                    "--logger", "zap", "--log-level", "error"]  # fmt: skip
            pid = self.spawn(f"etcd/{name}", ns, argv)
            self.st.data["etcd"].append({"name": name, "netns": ns, "ip": addr, "pid": pid})
            self.st.save()
        url = "etcd://" + ",".join(f"{addr}:2379" for _, addr in members) + f"/podnet-lab-{self.o.name}"
        self._wait(lambda: self._etcd_healthy(members[0][1]), "the etcd cluster to become healthy")
        return url

    def _etcd_healthy(self, addr: str) -> bool:
        probe = ("import json,sys,urllib.request;"
                 "r=urllib.request.urlopen(sys.argv[1],timeout=0.5);"
                 "sys.exit(0 if json.loads(r.read()).get('health')=='true' else 1)")
        return _run([*enter(self.ns("etcd0")), sys.executable, "-c", probe, f"http://{addr}:2379/health"],
                    check=False).returncode == 0

    def start_agents(self, store: str) -> None:
        self.st.data["store_url"] = store
        for node in self.t.nodes:
            info = self.st.data["nodes"][node.name]
            state_dir = Path(info["state_dir"])
            state_dir.mkdir(parents=True, exist_ok=True)
            self.st.data["sockets"].append(info["socket"])
            self.st.save()
            argv = [sys.executable, "-m", "podnet.cli", "agent", "--socket", info["socket"],
                    "--state-dir", str(state_dir)]
            if self.cluster_flags:
                argv += ["--store", store, "--node", node.name, "--fabric", self.o.fabric,
                         "--cluster-cidr", self.o.cluster_cidr, "--block-prefix", str(BLOCK_PREFIX),
                         "--underlay", "eth0", "--lease-ttl", str(self.o.lease_ttl)]
            else:  # simulated: a store per node (the agents would repair each other's pods)
                argv += ["--store", str(state_dir / "store.db")]
            info["agent_pid"] = self.spawn(f"agent/{node.name}", info["netns"], argv)
            self.st.save()
        for node in self.t.nodes:
            info = self.st.data["nodes"][node.name]
            conflist = StatePaths(Path(info["state_dir"])).net_d / CLUSTER_CONFLIST
            if not self.cluster_flags:
                self._wait(lambda s=info["socket"]: os.path.exists(s), f"the agent of {node.name} to listen")
                write_simulated_conflist(conflist, topo.node_block_guess(node, self.o.cluster_cidr, BLOCK_PREFIX),
                                         info["socket"])
            self._wait(conflist.exists, f"{conflist} (agent of {node.name} leasing its block)",
                       pid_name=f"agent/{node.name}")
            info["conflist"] = str(conflist)
            info["block"] = _conflist_block(conflist)
        self.st.save()

    def _wait(self, predicate: Callable[[], bool], what: str, pid_name: str | None = None) -> None:
        deadline = time.monotonic() + self.o.timeout
        while not predicate():
            if pid_name:
                entry = self.st.processes().get(pid_name, {})
                if "exit" in entry:
                    log = self.st.labdir / "logs" / f"{pid_name.replace('/', '_')}.log"
                    raise LabError(f"{pid_name} exited with {entry['exit']} while waiting for {what}",
                                   _tail(log))
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {self.o.timeout:.0f}s waiting for {what}")
            time.sleep(0.05)

    # pods -------------------------------------------------------------------

    def attach_pods(self) -> None:
        for pod in self.t.pods:
            self.st.data["pods"][pod.key] = {"node": pod.node, "netns": topo.pod_netns(self.o.name, pod),
                                             "labels": dict(pod.labels), "ports": [str(p) for p in pod.ports]}
        self.st.add_netns_batch([self.st.data["pods"][pod.key]["netns"] for pod in self.t.pods])
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(self.attach, self.t.pods))
        for pod, result in zip(self.t.pods, results, strict=True):
            ips = [entry["address"] for entry in result.get("ips", [])]
            self.st.data["pods"][pod.key]["ips"] = ips
        self.st.save()
        self.register_pods()
        # one echo process per node, serving each of its pods from inside the pod's namespace
        by_node: dict[str, list[Pod]] = {}
        for pod in self.t.pods:
            by_node.setdefault(pod.node, []).append(pod)
        (self.st.labdir / "ready").mkdir(parents=True, exist_ok=True)
        (self.st.labdir / "echo").mkdir(parents=True, exist_ok=True)
        for node, pods in by_node.items():
            specs = [{"name": pod.name, "netns": str(NETNS_DIR / self.st.data["pods"][pod.key]["netns"]),
                      "tcp": [p.port for p in pod.ports if p.protocol == "TCP"],
                      "udp": [p.port for p in pod.ports if p.protocol == "UDP"]} for pod in pods]
            spec = self.st.labdir / "echo" / f"{node}.json"
            spec.write_text(json.dumps(specs))
            ready = self.st.labdir / "ready" / f"node-{node}"
            proc = f"echo/{node}"
            pid = self.spawn(proc, self.st.data["nodes"][node]["netns"],
                             [sys.executable, "-m", "podnet.lab.echo", "--spec", str(spec), "--ready", str(ready)])
            for pod in pods:
                self.st.data["pods"][pod.key].update(echo_proc=proc, echo_pid=pid)
        self.st.save()
        for node in by_node:
            self._wait((self.st.labdir / "ready" / f"node-{node}").exists, f"the echo server of {node}'s pods",
                       pid_name=f"echo/{node}")
        self._wait((self.st.labdir / "ready-outside").exists, "the outside echo server", pid_name="echo/outside")

    def register_pods(self) -> None:
        """Play the orchestrator (lab/orchestrator.py): namespaces and pods, with their
        labels and named ports, go to the cluster store, from inside the lab."""
        for pod in self.t.pods:
            self.st.data["pods"][pod.key]["named_ports"] = [
                {"name": p.name, "port": p.port, "protocol": p.protocol} for p in pod.ports]
        self.st.data["namespace_labels"] = {ns.name: dict(ns.labels) for ns in self.t.namespaces}
        self.st.save()
        from podnet.lab.orchestrator import in_lab_argv

        _run(in_lab_argv(self.st, [sys.executable, "-m", "podnet.lab.orchestrator", self.o.name]), timeout=60)

    def attach(self, pod: Pod) -> dict:
        """CNI ADD of the node's cluster conflist, run inside the node's namespace."""
        from podnet.runtime.libcni import CniFailure, Conflist

        node = self.st.data["nodes"][pod.node]
        config = json.loads(Path(node["conflist"]).read_text())
        conflist = Conflist(config, [str(self.st.labdir / "bin"), "/usr/lib/cni"], enter=enter(node["netns"]))
        cid = f"lab-{self.o.name}-{pod.namespace}-{pod.name}"
        try:
            return conflist.add(cid, str(NETNS_DIR / topo.pod_netns(self.o.name, pod)), "eth0",
                                args=f"K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name}")
        except CniFailure as exc:
            raise LabError(f"attaching pod {pod.key} on {pod.node} failed", str(exc)) from None


def route_to_racks(ns: str, racks: int) -> None:
    """From rack 0, the other racks' segments are behind the router."""
    if racks > 1:
        ip("-n", ns, "route", "add", f"{topo.UNDERLAY_PREFIX}.0.0/16", "via", topo.router_ip(0))


def machine_routes(ns: str, rack: int, racks: int) -> None:
    """A node's or plain host's routes: on rack 0 the world is behind the outside
    namespace (and other racks behind the router); elsewhere everything is."""
    if rack == 0:
        route_to_racks(ns, racks)
        ip("-n", ns, "route", "add", "default", "via", topo.OUTSIDE_UNDERLAY)
    else:
        ip("-n", ns, "route", "add", "default", "via", topo.router_ip(rack))


def plug(fab: str, fabric_end: str, ns: str, ifname: str, address: str, nic_gso: int) -> None:
    """A veth from the rack bridge in `fab` into `ns` (named `ifname` there), addressed
    and up, with the lab NICs' GSO limits."""
    ip("-n", fab, "link", "add", fabric_end, "type", "veth", "peer", "name", ifname, "netns", ns)
    ip("-n", fab, "link", "set", fabric_end, "master", "br0", "up")
    ip("-n", ns, "addr", "add", address, "dev", ifname)
    ip("-n", ns, "link", "set", ifname, "up")
    for where, name in ((fab, fabric_end), (ns, ifname)):
        set_nic_gso(where, name, nic_gso)


def set_nic_gso(ns: str, ifname: str, size: int) -> None:
    """Give a lab underlay link the GSO/GRO limits of a NIC that does BIG TCP, as
    server NICs (mlx5, ice, bnxt) do: the agents detect it on their uplink and give
    their pods the same (kernel/gso.py). No ip(8) here knows the IPv4 attributes."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        with rtnl.RtnlSocket(fd) as sock:
            index = sock.link_index(ifname)
            if index is None:
                raise LabError(f"{ifname} is missing in {ns}")
            gso.ensure(sock, index, gso.GsoLimits(size, size))
    finally:
        os.close(fd)


def write_simulated_conflist(path: Path, block: str, socket: str) -> None:
    """What the agent writes once it leased `block` (stands in until it can)."""
    gateway = block.rsplit(".", 1)[0] + ".1"
    config = {
        "cniVersion": "1.0.0", "name": "cluster",
        "plugins": [{
            "type": "podnet", "bridge": "pncl0", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
            "agentSocket": socket, "capabilities": {"portMappings": True, "ips": True},
            "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": block, "gateway": gateway}]]},
        }],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path)


def _conflist_block(path: Path) -> str | None:
    try:
        plugin = json.loads(path.read_text())["plugins"][0]
        return plugin["ipam"]["ranges"][0][0]["subnet"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------- down


def _alive(entry: dict) -> bool:
    owner = entry.get("owner")
    return bool(owner) and owner_alive(owner)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_dead(entries: list[dict], timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [e for e in entries if _alive(e)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def teardown(name: str, progress: Progress = lambda _: None) -> list[str]:
    """Remove everything the state file and procs.json record; return what could not
    be removed (empty when clean). Idempotent."""
    topo.check_lab_name(name)
    state = LabState.load(name)
    problems: list[str] = []
    procs = state.processes()
    running = sum(1 for e in procs.values() if _alive(e))
    sup = procs.get("supervisor")
    if sup and _alive(sup):
        _kill(sup["pid"], signal.SIGTERM)
        if _wait_dead([sup], 15):
            _kill(sup["pid"], signal.SIGKILL)
    procs = state.processes()
    children = [e for n, e in procs.items() if n != "supervisor" and _alive(e)]
    for entry in children:
        _kill(entry["pid"], signal.SIGTERM)
    for entry in _wait_dead(children, 5):
        _kill(entry["pid"], signal.SIGKILL)
    for entry in _wait_dead(children, 5):
        problems.append(f"process {entry['pid']} survived SIGKILL")
    progress(f"stopped {running} recorded process(es)")
    namespaces = list(state.data.get("namespaces", []))
    for ns in reversed(namespaces):
        if not ns.startswith("pn-lab-"):
            problems.append(f"refusing to delete namespace {ns!r} (not a lab name)")
            continue
        if (NETNS_DIR / ns).exists():
            result = ip("netns", "del", ns, check=False)
            if result.returncode != 0:
                problems.append(f"ip netns del {ns}: {result.stderr.strip()}")
    progress(f"deleted {len(namespaces)} namespace(s)")
    for sock in state.data.get("sockets", []):
        if sock.startswith(str(RUN_DIR / f"lab-{name}-")):
            Path(sock).unlink(missing_ok=True)
    if state.labdir == lab_dir(name):
        shutil.rmtree(state.labdir, ignore_errors=True)
    if not problems:
        state_file(name).unlink(missing_ok=True)
    return problems


# --------------------------------------------------------------------------- status


def status(name: str) -> dict:
    """The state file, each recorded process's liveness, and each agent's answer."""
    from podnet.agent.client import call

    state = LabState.load(name)
    procs = state.processes()
    data = dict(state.data)
    sup = procs.get("supervisor")
    data["supervisor"] = {**(data.get("supervisor") or {}), "alive": bool(sup and _alive(sup))}
    nodes = []
    for node, info in data.get("nodes", {}).items():
        entry = procs.get(f"agent/{node}", {})
        row = {"name": node, **info, "agent_alive": _alive(entry), "agent": None}
        for op in ("node.status", "ping"):
            try:
                row["agent"] = {"op": op, "result": call(info["socket"], op, timeout=3)}
                break
            except (PodnetError, OSError, ValueError) as exc:
                row["agent"] = {"op": op, "error": str(exc)}
        nodes.append(row)
    pods = []
    for key, info in data.get("pods", {}).items():
        entry = procs.get(info.get("echo_proc") or f"echo/{key}", {})
        pods.append({"name": key, **info, "echo_alive": _alive(entry)})
    data["nodes"], data["pods"] = nodes, pods
    return data


def resolve_target(name: str, target: str) -> str:
    """`NODE`, `NS/POD`, or a lab role (out, rtr, fab0, etcd0) -> its namespace."""
    state = LabState.load(name)
    if "/" in target:
        pod = state.data.get("pods", {}).get(target)
        if pod is None:
            raise LabError(f"no pod {target!r} in lab {name}", f"pods: {', '.join(state.data.get('pods', {}))}")
        return pod["netns"]
    node = state.data.get("nodes", {}).get(target) or (state.data.get("hosts") or {}).get(target)
    if node is not None:
        return node["netns"]
    ns = topo.netns_name(name, target)
    if ns in state.data.get("namespaces", []):
        return ns
    raise LabError(f"no node {target!r} in lab {name}",
                   f"nodes: {', '.join(state.data.get('nodes', {}))}; pods are NS/POD; also out, rtr, fab<r>")

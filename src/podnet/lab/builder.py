"""`lab up`: build a multi-node cluster made of network namespaces.

Layout (lab `L`, every namespace named `pn-lab-L-<role>`):

- `fab<r>`: one per rack, a bridge `br0` (the rack's L2 segment 172.31.r.0/24);
- `<node>`: the node, `eth0` (veth into its rack's bridge), 172.31.r.(10+k)/24,
  ip_forward on, default route to the outside (directly on rack 0, via the router
  elsewhere); its agent runs here (`nsenter --net`, same mount namespace);
- `rtr`: with racks > 1, one leg per rack (172.31.r.1) routing between segments;
- `out`: the outside world on rack 0 (172.31.0.254, and 198.51.100.1 on lo) running
  an HTTP (TCP 80) / UDP 80 echo target;
- `etcd<i>`: with `--store etcd`, three etcd members on rack 0 (172.31.0.200+i);
- `dns-<node>`: the node's cluster DNS pod (kube-system/kube-dns-<node>), served by the
  node's agent, behind the service kube-system/kube-dns (the service CIDR's .10);
- `p-<ns>-<pod>`: one per pod, attached through the node's CNI conflist, served by the
  built-in echo server for its ports (one `echo/<node>` process per node, whose sockets
  are opened inside each pod's namespace).

Every step records in the state file (lab/state.py) before it creates, and every daemon
is a child of the lab's supervisor, so `lab down` (lab/teardown.py) can undo a crashed
`lab up`. The root namespace is never changed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from podnet.defaults import DEFAULT_CLUSTER_DOMAIN
from podnet.fileio import write_atomic
from podnet.lab import apps, cuts, extra_networks, orchestrator, routers
from podnet.lab import topology as topo
from podnet.lab.crowding import lease_ttl_for, member_first, watch_batch_for
from podnet.lab.gossip import gossip_argv
from podnet.lab.state import NETNS_DIR, LabError, LabState, enter, ip, node_socket, run, state_file
from podnet.lab.supervisor_client import SupervisorClient
from podnet.lab.topology import Node, Pod, Port, Topology
from podnet.lab.underlay import (
    NIC_GSO,
    machine_routes,
    plug,
    route_to_racks,
    set_nic_gso,
    set_sysctls,
)
from podnet.model.service import DEFAULT_SERVICE_CIDR, ServiceSettings
from podnet.state import StatePaths

CLUSTER_CONFLIST = "cluster.conflist"
DNS_POD_PREFIX = "kube-dns-"
DNS_PORTS = tuple(Port(p["port"], p["protocol"], p["name"]) for p in orchestrator.DNS_PORTS)
BLOCK_PREFIX = 24
BGP_BLOCK_PREFIX = 26  # Calico's default block size: nodes grow into more blocks as pods come
ETCD_MEMBERS = 3
RECLAIM_GRACE = 10.0


@dataclass
class LabOptions:
    name: str = "lab"
    fabric: str = "vxlan"
    store: str = "sqlite"
    cluster_cidr: str = topo.CLUSTER_CIDR
    block_prefix: int | None = None  # blocks nodes claim from the pool (None: 26 for bgp, else 24)
    service_cidr: str = DEFAULT_SERVICE_CIDR  # ClusterIPs (`lab up --service-cidr`)
    timeout: float = 30.0
    lease_ttl: float | None = None  # the agents' --lease-ttl (None: lease_ttl_for; reliability tests shorten it)
    nic_gso: int = NIC_GSO  # GSO/GRO limit of the lab's "NICs" (65536: no BIG TCP)
    cluster_dns: bool = True  # a DNS pod per node, served by its agent, behind kube-system/kube-dns
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    reclaim_grace: float = RECLAIM_GRACE  # --fabric gossip: a dead node's space is reclaimed after it
    encrypt: bool = False  # --fabric gossip: a cluster secret, so peers talk over the encrypted sleeve
    mesh_cert_lifetime: float | None = None  # the agents' --mesh-cert-lifetime
    cluster_cidr6: str | None = None  # `lab up --ipv6`: dual stack, the pods' IPv6 pool (and the underlay's)
    ipv6_masquerade: bool = False  # the agents' --ipv6-masquerade
    fastpath: str = "kernel"  # the agents' --fastpath (vxlan, host-gw: ebpf, fabric/fastpath.py)
    watch_batch: float | None = None  # the agents' --watch-batch (None: watch_batch_for)


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
        self.lease_ttl = options.lease_ttl or lease_ttl_for(len(topology.nodes), os.cpu_count())
        self.watch_batch = options.watch_batch or watch_batch_for(len(topology.nodes), os.cpu_count())

    def ns(self, role: str) -> str:
        return topo.netns_name(self.o.name, role)

    @property
    def block_prefix(self) -> int:
        return self.o.block_prefix or (BGP_BLOCK_PREFIX if self.o.fabric == "bgp" else BLOCK_PREFIX)

    @property
    def segment_router(self) -> str:
        """--fabric macvlan: the router's address in the pod segment (the cluster CIDR's
        first, which the agents keep for it), with the segment's prefix."""
        import ipaddress

        pool = ipaddress.IPv4Network(self.o.cluster_cidr)
        return f"{pool[1]}/{pool.prefixlen}"

    @property
    def segment_router6(self) -> str:
        """--fabric macvlan --ipv6: the router's IPv6 address in the pod segment, where
        the agents put it (fabric/macvlan.py `configure`), with the segment's prefix."""
        import ipaddress

        from podnet.cluster.dualstack import Pools
        from podnet.fabric.macvlan import MacvlanFabric

        assert self.o.cluster_cidr6 is not None
        fabric = MacvlanFabric()
        fabric.configure(self.o.cluster_cidr, None, Pools(ipaddress.IPv4Network(self.o.cluster_cidr),
                                                          self.block_prefix, ipaddress.IPv6Network(self.o.cluster_cidr6)))
        return f"{fabric.gateway6}/{fabric.segment6.prefixlen}"  # type: ignore[union-attr]

    @property
    def ipv6(self) -> bool:
        """A dual-stack lab: IPv6 on the underlay too, and every pod gets an address of each family."""
        return self.o.cluster_cidr6 is not None

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
        self.state = LabState.create(self.o.name, fabric=self.o.fabric, store=self.o.store,
                                     racks=self.t.racks, simulated=self.simulate,
                                     nic_gso=self.o.nic_gso, hosts={}, fastpath=self.o.fastpath)
        self.st.labdir.mkdir(parents=True, exist_ok=True)
        self.underlay()
        if self.t.cuts:  # cut before any agent starts: no node ever sees these links up
            cuts.set_cuts(self.st, self.t.cuts)
        self.progress(f"underlay: {self.t.racks} rack(s), {len(self.t.nodes)} node(s), outside {topo.OUTSIDE_IP}")
        from podnet.install.cni import install_cni

        install_cni(str(self.st.labdir / "bin"))
        self.sup = SupervisorClient(self.st.labdir)
        self.st.data["supervisor"] = {"pid": self.sup.proc.pid}
        self.st.save()
        self.start_outside()
        bgp_racks = self.o.fabric == "bgp" and self.t.racks > 1
        reflectors = [n.name for n in self.t.nodes if n.route_reflector] if self.o.fabric == "bgp" else []
        if bgp_racks:
            self.start_routers()
        store = self.start_store()
        self.progress(f"store: {store}")
        if bgp_racks:
            self.apply_bgp_objects(store, routers.bgp_objects(self.t.racks, list(self.t.nodes)))
            self.progress(f"routers: {self.t.racks} ToR(s) and a spine running BIRD, an AS per rack")
        elif reflectors:
            self.apply_bgp_objects(store, routers.reflector_objects(list(self.t.nodes)))
            self.progress(f"route reflectors: {', '.join(reflectors)} (no node-to-node mesh)")
        if self.t.bgp:
            self.apply_bgp_objects(store, [dict(d) for d in self.t.bgp], "topology-bgp.yaml")
            self.progress(f"bgp: the topology's {len(self.t.bgp)} BGP object(s) applied")
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
            set_sysctls(fab, {"net.bridge.bridge-nf-call-iptables": 0,
                              "net.bridge.bridge-nf-call-ip6tables": 0})
        if racks > 1 and self.o.fabric == "bgp":
            self.bgp_routers()
        elif racks > 1:
            rtr = self.st.add_netns(self.ns("rtr"))
            self.forwarding(rtr)
            for rack in range(racks):
                self.plug(rack, f"rtr{rack}", rtr, f"r{rack}", f"{topo.router_ip(rack)}/24")
            ip("-n", rtr, "route", "add", "default", "via", topo.OUTSIDE_UNDERLAY)
            if self.ipv6:
                ip("-n", rtr, "-6", "route", "add", "default", "via", topo.underlay6_of(topo.OUTSIDE_UNDERLAY))
        out = self.st.add_netns(self.ns("out"))
        self.plug(0, "out", out, "eth0", f"{topo.OUTSIDE_UNDERLAY}/24")
        ip("-n", out, "addr", "add", f"{topo.OUTSIDE_IP}/32", "dev", "lo")
        self.st.data["cluster_cidr"] = self.o.cluster_cidr  # `lab host add --join` numbers from it
        if self.ipv6:
            ip("-n", out, "addr", "add", f"{topo.OUTSIDE_IP6}/128", "dev", "lo")
            self.st.data["ipv6"] = {"cluster_cidr6": self.o.cluster_cidr6, "masquerade": self.o.ipv6_masquerade}
        if self.o.fabric == "macvlan":  # the pod segment's router: a second prefix on the same L2
            ip("-n", out, "addr", "add", self.segment_router, "dev", "eth0")
            if self.ipv6:
                ip("-n", out, "addr", "add", self.segment_router6, "dev", "eth0", "nodad")
            self.forwarding(out)  # pods reach the nodes' underlay through it
        self.route_to_racks(out)
        if racks > 1 and self.o.fabric == "bgp":  # services the nodes advertise (serviceClusterIPs) are
            for cidr in ServiceSettings(self.o.service_cidr).service_cidrs:  # behind rack 0's ToR (IPv4: the
                if ":" not in cidr:  # ToRs' BIRD speaks IPv4 only)
                    ip("-n", out, "route", "add", cidr, "via", topo.router_ip(0))
        self.st.data["outside"] = {"netns": out, "underlay": topo.OUTSIDE_UNDERLAY, "ip": topo.OUTSIDE_IP,
                                   **({"underlay6": topo.underlay6_of(topo.OUTSIDE_UNDERLAY), "ip6": topo.OUTSIDE_IP6}
                                      if self.ipv6 else {})}
        for node in self.t.nodes:
            ns = self.st.add_netns(self.ns(node.name))
            self.st.data["nodes"][node.name] = {
                "netns": ns, "rack": node.rack, "underlay": node.underlay_ip,
                "socket": node_socket(self.o.name, node.name), "state_dir": str(self.st.labdir / node.name),
                **({"underlay6": node.underlay_ip6} if self.ipv6 else {}),
            }
            self.plug(node.rack, f"n{node.index}", ns, "eth0", f"{node.underlay_ip}/24")
            self.forwarding(ns)
            machine_routes(ns, node.rack, self.t.racks, self.ipv6)
        self.st.save()

    def bgp_routers(self) -> None:
        """A ToR per rack (where the static router's legs were) and a spine (lab/routers.py)."""
        spine = self.st.add_netns(self.ns("spine"))
        self.forwarding(spine)
        for rack in range(self.t.racks):
            tor = self.st.add_netns(self.ns(f"tor{rack}"))
            self.forwarding(tor)
            self.plug(rack, f"tor{rack}", tor, "eth0", f"{topo.router_ip(rack)}/24")
            tor_ip, spine_ip = routers.uplink(rack)
            ip("-n", tor, "link", "add", "up0", "type", "veth", "peer", "name", f"r{rack}", "netns", spine)
            ip("-n", tor, "addr", "add", f"{tor_ip}/30", "dev", "up0")
            ip("-n", tor, "link", "set", "up0", "up")
            ip("-n", spine, "addr", "add", f"{spine_ip}/30", "dev", f"r{rack}")
            ip("-n", spine, "link", "set", f"r{rack}", "up")
            set_nic_gso(tor, "up0", self.o.nic_gso)  # router links are NICs too: without it, 64 KiB
            set_nic_gso(spine, f"r{rack}", self.o.nic_gso)  # GSO here cut cross-rack TCP to ~2.7 Gbit/s
            if rack == 0:  # the outside world hangs off rack 0's segment
                ip("-n", tor, "route", "add", f"{topo.OUTSIDE_IP}/32", "via", topo.OUTSIDE_UNDERLAY)

    def start_routers(self) -> None:
        """The routers' BIRDs, as lab processes, and the BGP objects that make the nodes
        peer with their ToR (applied before any agent starts)."""
        from podnet.bgp.render import render

        for router in routers.routers(self.t.racks, list(self.t.nodes), self.o.cluster_cidr):
            where = self.st.labdir / "routers" / router.name
            where.mkdir(parents=True, exist_ok=True)
            conf = where / "bird.conf"
            write_atomic(conf, render(router.spec))
            pid = self.spawn(f"bird/{router.name}", self.ns(router.name),
                             ["bird", "-f", "-R", "-c", str(conf), "-s", str(where / "bird.ctl"),
                              "-P", str(where / "bird.pid")])
            self.st.data.setdefault("routers", {})[router.name] = {"netns": self.ns(router.name), "pid": pid,
                                                                  "ctl": str(where / "bird.ctl")}
        self.st.save()

    def apply_bgp_objects(self, store: str, docs: list[dict], file: str = "bgp-objects.yaml") -> None:
        """BGP objects in the store before any agent starts (its first BIRD config is right)."""
        path = self.st.labdir / file
        write_atomic(path, yaml.safe_dump_all(docs))
        from podnet.lab.orchestrator import in_lab_argv

        run(in_lab_argv(self.st, [sys.executable, "-m", "podnet.cli", "apply", "--store", store, "-f", str(path)]),
            timeout=60)

    def plug(self, rack: int, fabric_end: str, ns: str, ifname: str, address: str) -> None:
        plug(self.ns(f"fab{rack}"), fabric_end, ns, ifname, address, self.o.nic_gso, self.ipv6)

    def route_to_racks(self, ns: str) -> None:
        route_to_racks(ns, self.t.racks, self.ipv6)

    def forwarding(self, ns: str) -> None:
        set_sysctls(ns, {"net.ipv4.ip_forward": 1, **({"net.ipv6.conf.all.forwarding": 1} if self.ipv6 else {})})

    # daemons --------------------------------------------------------------

    def spawn(self, name: str, ns: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        assert self.sup is not None
        logs = self.st.labdir / "logs"
        logs.mkdir(exist_ok=True)
        return self.sup.spawn(name, [*enter(ns), *argv], logs / f"{name.replace('/', '_')}.log", env)

    def spawn_python(self, name: str, ns: str, module: str, args: list[str]) -> int:
        """A lab daemon written in Python (`python -m module args`), forked by the lab's
        zygote (lab/zygote.py: no interpreter start and imports per daemon) unless
        PODNET_LAB_ZYGOTE=0; recorded with the argv that starts it the plain way."""
        assert self.sup is not None
        argv = [sys.executable, "-m", module, *args]
        if os.environ.get("PODNET_LAB_ZYGOTE", "1") == "0":
            return self.spawn(name, ns, argv)
        logs = self.st.labdir / "logs"
        logs.mkdir(exist_ok=True)
        return self.sup.fork(name, module, args, str(NETNS_DIR / ns), [*enter(ns), *argv],
                             logs / f"{name.replace('/', '_')}.log")

    def start_outside(self) -> None:
        ready = self.st.labdir / "ready-outside"
        pid = self.spawn("echo/outside", self.ns("out"), [sys.executable, "-m", "podnet.lab.echo", "--name", "outside",
                                                         "--tcp", "80", "--udp", "80", "--ready", str(ready),
                                                         "--report-peer"])
        self.st.data["outside"]["echo_pid"] = pid
        self.st.save()

    def start_store(self) -> str:
        if self.o.store == "sqlite":
            return create_store(self.st.labdir / "store.db")
        if self.o.store == "none":  # each node's own (its agent makes it); the lab's commands use the first's
            first = self.st.data["nodes"][self.t.nodes[0].name]
            return str(Path(first["state_dir"]) / "store.db")
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
        return run([*enter(self.ns("etcd0")), sys.executable, "-c", probe, f"http://{addr}:2379/health"],
                   check=False).returncode == 0

    def start_agents(self, store: str) -> None:
        self.st.data["store_url"] = store
        self.st.data["service_cidr"] = self.o.service_cidr
        dns = self.plan_cluster_dns()
        self.st.save()
        if not self.simulate and self.o.store != "none":  # before any agent renders a conflist
            from podnet.lab.orchestrator import in_lab_argv

            run(in_lab_argv(self.st, [sys.executable, "-m", "podnet.lab.orchestrator", self.o.name, "--settings"]),
                timeout=60)
        for index, node in enumerate(self.t.nodes):
            info = self.st.data["nodes"][node.name]
            state_dir = Path(info["state_dir"])
            state_dir.mkdir(parents=True, exist_ok=True)
            self.st.data["sockets"].append(info["socket"])
            self.st.save()
            argv = ["agent", "--socket", info["socket"], "--state-dir", str(state_dir)]
            if self.simulate:  # a store per node (the agents would repair each other's pods)
                argv += ["--store", create_store(state_dir / "store.db")]
            elif self.o.store == "none":
                argv += [*self._node_argv(node, "none", dns),
                         *gossip_argv(self.t, node, self.o.reclaim_grace, self.st.labdir if self.o.encrypt else None)]
            else:
                argv += self._node_argv(node, member_first(store, index), dns)
            info["agent_pid"] = self.spawn_python(f"agent/{node.name}", info["netns"], "podnet.cli", argv)
            self.st.save()
        for node in self.t.nodes:
            info = self.st.data["nodes"][node.name]
            conflist = StatePaths(Path(info["state_dir"])).net_d / CLUSTER_CONFLIST
            if self.simulate:
                self._wait(lambda s=info["socket"]: os.path.exists(s), f"the agent of {node.name} to listen")
                write_simulated_conflist(conflist, topo.node_block_guess(node, self.o.cluster_cidr, self.block_prefix),
                                         info["socket"])
            self._wait(conflist.exists, f"{conflist} (agent of {node.name} leasing its block)",
                       pid_name=f"agent/{node.name}")
            info["conflist"] = str(conflist)
            info["block"] = _conflist_block(conflist)
            if self.ipv6:
                info["block6"] = _conflist_block(conflist, 1)
        self.st.save()
        if self.o.fabric == "bgp" and not self.simulate:
            self._wait(self._bgp_converged, "every node's BGP routes to the other nodes' blocks")

    def _node_argv(self, node: Node, store: str, dns: dict | None) -> list[str]:
        argv = ["--store", store, "--node", node.name, "--fabric", self.o.fabric,
                "--cluster-cidr", ",".join(filter(None, (self.o.cluster_cidr, self.o.cluster_cidr6))),
                "--block-prefix", str(self.block_prefix),
                "--underlay", "eth0", "--lease-ttl", f"{self.lease_ttl:g}", "--watch-batch", f"{self.watch_batch:g}",
                "--node-labels", routers.node_labels(node)]
        if self.o.mesh_cert_lifetime:
            argv += ["--mesh-cert-lifetime", str(self.o.mesh_cert_lifetime)]
        if self.o.ipv6_masquerade:
            argv += ["--ipv6-masquerade"]
        if self.o.fastpath != "kernel":
            argv += ["--fastpath", self.o.fastpath]
        if dns:
            argv += ["--cluster-dns", dns["ip"], "--cluster-domain", dns["domain"],
                     "--cluster-dns-netns", str(NETNS_DIR / dns["pods"][node.name]["netns"])]
        return argv

    def _bgp_converged(self) -> bool:
        """Each node's kernel holds a BIRD route (proto bird) to every other node's block
        (and, dual stack, to its IPv6 twin)."""
        nodes = self.st.data["nodes"]
        for family, key in (("-4", "block"), ("-6", "block6")) if self.ipv6 else (("-4", "block"),):
            for name, info in nodes.items():
                routes = ip("-n", info["netns"], family, "route", "show", "proto", "bird").stdout
                learned = {line.split()[0] for line in routes.splitlines() if line.strip()}
                if any(other.get(key) not in learned for peer, other in nodes.items() if peer != name):
                    return False
        return True

    def plan_cluster_dns(self) -> dict | None:
        """One DNS pod namespace per node, recorded and made before the agents start
        (each agent serves in its own as soon as it exists; the pod is attached with
        the others). The DNS service's ClusterIP is the service CIDR's 10th address,
        as kubeadm picks it."""
        if not self.o.cluster_dns or self.simulate:
            return None

        cidrs = ServiceSettings(self.o.service_cidr).networks
        dns = {"ip": str(cidrs[0][10]), **({"ip6": str(cidrs[1][10])} if len(cidrs) > 1 else {}),
               "domain": self.o.cluster_domain,
               "namespace": orchestrator.DNS_NAMESPACE,
               "pods": {node.name: {"name": f"{DNS_POD_PREFIX}{node.name}", "netns": self.ns(f"dns-{node.name}")}
                        for node in self.t.nodes}}
        self.st.data["cluster_dns"] = dns
        self.st.add_netns_batch([pod["netns"] for pod in dns["pods"].values()])
        self.st.save()
        return dns

    def dns_pods(self) -> list[tuple[Pod, str]]:
        """The DNS pods as pods (labels and named ports of CoreDNS's), with their netns."""
        dns = self.st.data.get("cluster_dns") or {}
        return [(Pod(entry["name"], orchestrator.DNS_NAMESPACE, node, orchestrator.DNS_LABELS, DNS_PORTS), entry["netns"])
                for node, entry in (dns.get("pods") or {}).items()]

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
        dns_pods = self.dns_pods()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(self.attach, self.t.pods))
            dns_results = list(pool.map(lambda item: self.attach(*item), dns_pods))
        for pod, result in zip(self.t.pods, results, strict=True):
            ips = [entry["address"] for entry in result.get("ips", [])]
            self.st.data["pods"][pod.key]["ips"] = ips
            extra_networks.attach_extra(self.st, pod, self.t.networks)
        for (pod, _netns), result in zip(dns_pods, dns_results, strict=True):
            self.st.data["cluster_dns"]["pods"][pod.node]["ips"] = [e["address"] for e in result.get("ips", [])]
        self.st.save()
        self.register_pods()
        # one echo process per node, serving each of its pods from inside the pod's namespace
        by_node: dict[str, list[Pod]] = {}
        for pod in self.t.pods:
            if not pod.own_app:  # those run their own app process (lab/apps.py)
                by_node.setdefault(pod.node, []).append(pod)
        (self.st.labdir / "ready").mkdir(parents=True, exist_ok=True)
        (self.st.labdir / "echo").mkdir(parents=True, exist_ok=True)
        for node, pods in by_node.items():
            specs = [{"name": pod.name, "netns": str(NETNS_DIR / self.st.data["pods"][pod.key]["netns"]),
                      "tcp": [p.port for p in pod.ports if p.protocol == "TCP"],
                      "udp": [p.port for p in pod.ports if p.protocol == "UDP"]} for pod in pods]
            spec = self.st.labdir / "echo" / f"{node}.json"
            write_atomic(spec, json.dumps(specs))
            ready = self.st.labdir / "ready" / f"node-{node}"
            proc = f"echo/{node}"
            pid = self.spawn_python(proc, self.st.data["nodes"][node]["netns"], "podnet.lab.echo",
                                    ["--spec", str(spec), "--ready", str(ready), "--report-peer"])
            for pod in pods:
                self.st.data["pods"][pod.key].update(echo_proc=proc, echo_pid=pid)
        self.st.save()
        for node in by_node:
            self._wait((self.st.labdir / "ready" / f"node-{node}").exists, f"the echo server of {node}'s pods",
                       pid_name=f"echo/{node}")
        apps.start(self.st, [pod for pod in self.t.pods if pod.own_app],
                   lambda name, ns, argv: self.spawn(name, ns, argv), self.o.timeout)
        self._wait((self.st.labdir / "ready-outside").exists, "the outside echo server", pid_name="echo/outside")

    def register_pods(self) -> None:
        """Play the orchestrator (lab/orchestrator.py): namespaces and pods, with their
        labels and named ports, go to the cluster store, from inside the lab."""
        for pod in self.t.pods:
            self.st.data["pods"][pod.key]["named_ports"] = [
                {"name": p.name, "port": p.port, "protocol": p.protocol} for p in pod.ports]
            if pod.readiness is not None:
                self.st.data["pods"][pod.key]["readiness"] = pod.readiness.to_dict()
        self.st.data["namespace_labels"] = {ns.name: dict(ns.labels) for ns in self.t.namespaces}
        self.st.data["services"] = [dict(doc) for doc in self.t.services]
        self.st.save()
        from podnet.lab.orchestrator import in_lab_argv

        run(in_lab_argv(self.st, [sys.executable, "-m", "podnet.lab.orchestrator", self.o.name]), timeout=60)

    def attach(self, pod: Pod, netns: str | None = None) -> dict:
        """CNI ADD of the node's cluster conflist, run inside the node's namespace."""
        from podnet.runtime.libcni import CniFailure, Conflist

        node = self.st.data["nodes"][pod.node]
        config = json.loads(Path(node["conflist"]).read_text())
        conflist = Conflist(config, [str(self.st.labdir / "bin"), "/usr/lib/cni"], enter=enter(node["netns"]))
        cid = f"lab-{self.o.name}-{pod.namespace}-{pod.name}"
        try:
            return conflist.add(cid, str(NETNS_DIR / (netns or topo.pod_netns(self.o.name, pod))), "eth0",
                                args=f"K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name}")
        except CniFailure as exc:
            raise LabError(f"attaching pod {pod.key} on {pod.node} failed", str(exc)) from None



def create_store(path: Path) -> str:
    """`lab up` makes its stores: the agents it starts are given an existing --store
    (they refuse a missing one, which a typo would be)."""
    from podnet.store import open_store

    open_store(str(path), create=True).close()  # no handle of this process is open on it
    return str(path)


def write_simulated_conflist(path: Path, block: str, socket: str) -> None:
    """What the agent writes once it leased `block` (stands in until it can)."""
    gateway = block.rsplit(".", 1)[0] + ".1"
    config = {
        "cniVersion": "1.0.0", "name": "cluster",
        "plugins": [{
            "type": "podnet", "bridge": "pncl0", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
            "hairpinMode": True, "agentSocket": socket, "capabilities": {"portMappings": True, "ips": True},
            "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": block, "gateway": gateway}]]},
        }],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(config, indent=2))


def _conflist_block(path: Path, range_set: int = 0) -> str | None:
    """The node's block as its conflist names it (`range_set` 1: a dual-stack node's IPv6 twin)."""
    try:
        plugin = json.loads(path.read_text())["plugins"][0]
        return plugin["ipam"]["ranges"][range_set][0]["subnet"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


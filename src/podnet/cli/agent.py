"""`podnet agent`, `podnet install-cni`, `podnet uninstall`, `podnet ping`: a node's own
software. The agent takes its settings from flags, else from the `agent` section of
the config file given with `--config` (config.py), else its defaults."""

from __future__ import annotations

import argparse
import os
import sys

from podnet.cli.output import fail
from podnet.cluster.dualstack import check_pools, parse_cluster_cidrs
from podnet.cluster.options import DEFAULT_GOSSIP_DOMAIN, DEFAULT_RECLAIM_GRACE, GOSSIP_PORT
from podnet.defaults import (
    DEFAULT_BLOCK_PREFIX,
    DEFAULT_BRIDGE,
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_CONFIG,
    DEFAULT_LEASE_TTL,
    DEFAULT_NETWORK,
    DEFAULT_STATE_DIR,
    DEFAULT_SUBNET,
    DEFAULT_UNIT_DIR,
    FABRIC_NAMES,
    UNIT,
)
from podnet.errors import InvalidConfig
from podnet.rpc.wire import DEFAULT_SOCKET
from podnet.state import agent_socket
from podnet.store.base import WATCH_BATCH

# flag destination -> built-in default, used when neither a flag nor the config file sets it
AGENT_DEFAULTS = {
    "socket": None, "store": None, "state_dir": None, "dns_upstream": None, "policy_host": None,
    "node": None, "fabric": "vxlan", "cluster_cidr": DEFAULT_CLUSTER_CIDR,
    "block_prefix": DEFAULT_BLOCK_PREFIX, "underlay": "eth0", "lease_ttl": DEFAULT_LEASE_TTL,
    "cluster_dns": None, "cluster_domain": DEFAULT_CLUSTER_DOMAIN, "cluster_dns_netns": None,
    "node_labels": None, "strict_affinity": False, "metrics_addr": None,
    "peer": None, "gossip_port": GOSSIP_PORT, "key_file": None, "ipalloc_init": None,
    "fastpath": "kernel", "reclaim_grace": DEFAULT_RECLAIM_GRACE, "dns_domain": DEFAULT_GOSSIP_DOMAIN, "segment_gateway": None,
    "mesh_cert_lifetime": None, "ipv6_masquerade": False, "watch_batch": None,
}
STORE_NONE = "none"  # --store none: the node's own store, kept in step by gossip (--fabric gossip)


def register(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="run the node agent (serves CNI requests)")
    agent.add_argument("--config", metavar="FILE", help="take unset settings from FILE's agent section "
                                                        "(e.g. /etc/podnet/config.yaml)")
    agent.add_argument("--socket", help=f"UNIX socket (default $PODNET_AGENT_SOCKET or {DEFAULT_SOCKET})")
    agent.add_argument("--store", help="store: SQLite path or etcd://... (default STATE_DIR/store.db, made on "
                                       "a first start); a SQLite store given here must exist, unless --init")
    agent.add_argument("--init", action="store_true",
                       help="make the --store SQLite file if it does not exist (a new cluster or node)")
    agent.add_argument("--state-dir", help="state directory (default $PODNET_STATE_DIR or /var/lib/podnet)")
    agent.add_argument("--dns-upstream", metavar="IP[:PORT]",
                       help="where container DNS forwards names outside its networks (default: nowhere)")
    agent.add_argument("--policy-host", metavar="NAME",
                       help="only enforce the policy of the plain host NAME (its HostEndpoint) from --store")
    agent.add_argument("--metrics-addr", metavar="HOST:PORT",
                       help="also serve Prometheus metrics on http://HOST:PORT/metrics (default: only over "
                            "the agent socket, `podnet metrics`)")
    agent.add_argument("--watch-batch", type=float, metavar="SECONDS",
                       help="gather the store's changes this long before the agent's loops react (default: "
                            f"SQLite {WATCH_BATCH:g}, and a quiet SQLite store wakes them at once; etcd none, and a "
                            "loop waits this long after its first change). Longer costs each change up to that "
                            "delay and saves CPU when many agents share few CPUs (`lab up` sets it for crowded labs)")
    cluster = agent.add_argument_group("cluster node (all ignored without --node)")
    cluster.add_argument("--node", help="join a cluster through the store as node NAME")
    cluster.add_argument("--fabric", choices=FABRIC_NAMES, help="how nodes reach each other's pod blocks (default vxlan)")
    cluster.add_argument("--fastpath", choices=("kernel", "ebpf"),
                         help="--fabric vxlan or host-gw: pods' packets to other nodes through the kernel's "
                              "bridge and routing (default), or tc eBPF programs straight to and from the tunnel "
                              "or underlay (off while the node enforces policy)")
    cluster.add_argument("--cluster-cidr", help=f"pod CIDR split into node blocks (default {DEFAULT_CLUSTER_CIDR}); "
                                                "dual stack: an IPv4 and an IPv6 prefix, comma separated "
                                                "(10.244.0.0/16,fd00:10:244::/56)")
    cluster.add_argument("--ipv6-masquerade", action="store_true", default=None,
                         help="masquerade pods' IPv6 traffic leaving the cluster too (default: IPv4 only, "
                              "as Kubernetes: IPv6 pod addresses are routed)")
    cluster.add_argument("--block-prefix", type=int, help=f"prefix length of a node's block (default {DEFAULT_BLOCK_PREFIX})")
    cluster.add_argument("--underlay", help="the node's interface toward other nodes (default eth0)")
    cluster.add_argument("--lease-ttl", type=float, help=f"node lease TTL in seconds (default {DEFAULT_LEASE_TTL:g})")
    cluster.add_argument("--strict-affinity", action="store_true", default=None,
                         help="never borrow an address from another node's block when the pool has no free "
                              "block (Calico's strictAffinity; always so for bridged pods: vxlan, host-gw)")
    cluster.add_argument("--segment-gateway", metavar="IP",
                         help="--fabric macvlan: the router's address in the pod segment (the cluster CIDR; "
                              "default its first address)")
    cluster.add_argument("--mesh-cert-lifetime", type=_lifetime, metavar="SECONDS",
                         help="lifetime of the mesh certificates this node issues its pods (default 3600; "
                              "renewed at 2/3 of it, without a reload)")
    cluster.add_argument("--node-labels", metavar="K=V[,K=V]",
                         help="labels of this node, published in its lease (BGPPeer nodeSelector/peerSelector)")
    cluster.add_argument("--cluster-dns", metavar="IP",
                         help="the cluster DNS service's ClusterIP, given to pods in their CNI result")
    cluster.add_argument("--cluster-domain", help=f"the cluster's DNS domain (default {DEFAULT_CLUSTER_DOMAIN})")
    cluster.add_argument("--cluster-dns-netns", metavar="PATH",
                         help="answer cluster DNS on port 53 inside this pod namespace (a pod of kube-dns)")
    gossip = agent.add_argument_group("gossip fabric (--fabric gossip --store none)")
    gossip.add_argument("--peer", action="append", metavar="HOST[:PORT]",
                        help="a peer to join through (repeat; the rest are learnt by gossip)")
    gossip.add_argument("--gossip-port", type=int, help=f"TCP port of the gossip (default {GOSSIP_PORT})")
    gossip.add_argument("--key-file", metavar="FILE",
                        help="the cluster's shared secret; else $PODNET_GOSSIP_PASSWORD; else peers are "
                             "not authenticated")
    gossip.add_argument("--ipalloc-init", metavar="NODE[,NODE]",
                        help="the nodes the address ring is first split among (Weave's seed=); default: "
                             "a node without --peer starts the ring alone, others wait for it")
    gossip.add_argument("--reclaim-grace", type=float,
                        help=f"seconds before a dead peer's space is reclaimed (default {DEFAULT_RECLAIM_GRACE:g})")
    gossip.add_argument("--dns-domain", help=f"the gossip DNS domain (default {DEFAULT_GOSSIP_DOMAIN})")
    agent.set_defaults(func=_cmd_agent)

    install = sub.add_parser("install-cni", help="install the podnet CNI executables (and the agent as a service)")
    install.add_argument("--bin-dir", required=True, help="CNI plugin directory, e.g. /opt/cni/bin")
    install.add_argument("--conf-dir", help="also write a default conflist here, e.g. /etc/cni/net.d")
    _add_install_options(install, "install")
    install.add_argument("--no-start", action="store_true",
                         help="with --systemd: do not run systemctl (it prints what to run)")
    install.set_defaults(func=_cmd_install)

    remove = sub.add_parser("uninstall", help="remove what install-cni wrote (only files it marked as its own)")
    remove.add_argument("--bin-dir", help="remove the podnet executables from this directory")
    remove.add_argument("--conf-dir", help="remove the default conflist here if it is unchanged")
    _add_install_options(remove, "remove")
    remove.add_argument("--purge", action="store_true",
                        help=f"also remove the state directory ({DEFAULT_STATE_DIR}: the store) and the config file")
    remove.set_defaults(func=_cmd_uninstall)

    ping = sub.add_parser("ping", help="check that an agent answers")
    ping.add_argument("--socket", default=agent_socket())
    ping.set_defaults(func=_cmd_ping)


def _add_install_options(parser: argparse.ArgumentParser, verb: str) -> None:
    """What install-cni and uninstall share: the default network, the unit, --root."""
    parser.add_argument("--network", default=DEFAULT_NETWORK, help="name of the default network")
    parser.add_argument("--subnet", default=DEFAULT_SUBNET, help="subnet of the default network")
    parser.add_argument("--bridge", default=DEFAULT_BRIDGE, help="bridge of the default network")
    parser.add_argument("--systemd", action="store_true",
                        help=f"{verb} the agent as the systemd unit {UNIT}"
                             + (f" (also makes {os.path.dirname(DEFAULT_SOCKET)}, {DEFAULT_STATE_DIR} and a config file)" if verb == "install" else ""))
    parser.add_argument("--unit-dir", default=DEFAULT_UNIT_DIR, help=f"where the unit goes (default {DEFAULT_UNIT_DIR})")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"the config file the unit's agent reads (default {DEFAULT_CONFIG})")
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="put every path under DIR, as if it were / (packaging, tests); never runs systemctl")


def agent_settings(args: argparse.Namespace) -> dict:
    """Flags first, then the config file's agent section, then the defaults."""
    from_file: dict = {}
    if args.config:
        from podnet.config import load

        from_file = dict(load(args.config).agent)
    out = {}
    for dest, default in AGENT_DEFAULTS.items():
        flag = getattr(args, dest)
        out[dest] = flag if flag is not None else from_file.get(dest, default)
    if out["fabric"] not in FABRIC_NAMES:
        raise ValueError(f"{args.config}: agent.fabric must be one of {', '.join(FABRIC_NAMES)}")
    out["socket"] = agent_socket(out["socket"])
    return out


def _cmd_agent(args: argparse.Namespace) -> int:
    from podnet.agent.daemon import run_agent
    from podnet.cluster.options import NodeOptions

    try:
        s = agent_settings(args)
    except ValueError as exc:
        return fail(str(exc), 2)
    node = None
    if s["node"]:
        failed = _check_cluster_dns(s)
        if failed is not None:
            return failed
        try:
            labels = _node_labels(s["node_labels"] or "")
        except ValueError as exc:
            return fail(f"--node-labels: {exc}", 2)
        try:
            pool4, pool6 = parse_cluster_cidrs(s["cluster_cidr"])
            check_pools(pool4, s["block_prefix"], pool6)
        except InvalidConfig as exc:
            return fail(exc.msg, 2)
        s["cluster_cidr"] = str(pool4)
        failed = _check_segment(s)
        if failed is not None:
            return failed
        try:
            gossip = _gossip_options(s)
        except ValueError as exc:
            return fail(str(exc), 2)
        node = NodeOptions(s["node"], s["fabric"], str(pool4), s["block_prefix"], s["underlay"], s["lease_ttl"],
                           s["cluster_dns"], s["cluster_domain"], s["cluster_dns_netns"], labels,
                           bool(s["strict_affinity"]), gossip, s["segment_gateway"], s["mesh_cert_lifetime"],
                           str(pool6) if pool6 else None, bool(s["ipv6_masquerade"]), s["fastpath"])
        if gossip is not None:
            s["store"] = None  # the node's own store: STATE_DIR/store.db
    elif s["store"] == STORE_NONE:
        return fail("--store none needs --node and --fabric gossip (a node that keeps its own state)", 2)
    if s["policy_host"] and s["node"]:
        return fail("--policy-host and --node exclude each other (a node enforces its own host endpoint)", 2)
    if s["metrics_addr"]:
        from podnet.agent.metrics import parse_addr

        try:
            parse_addr(s["metrics_addr"])
        except ValueError as exc:
            return fail(str(exc), 2)
    if s["store"]:
        failed = _check_store(s["store"], args.init)
        if failed is not None:
            return failed
    if s["watch_batch"] is not None:
        from podnet.store import set_watch_batch

        try:
            set_watch_batch(float(s["watch_batch"]))
        except InvalidConfig as exc:
            return fail(f"--watch-batch: {exc.msg} ({exc.details})", 2)
    return run_agent(s["socket"], s["store"], s["state_dir"], s["dns_upstream"], node, s["policy_host"],
                     s["metrics_addr"])


def _gossip_options(s: dict):
    """--fabric gossip's settings, checked; None for another fabric. The store must be
    `none`: every gossip node keeps its own (agent/gossip_mirror.py)."""
    from podnet.cluster.options import GossipOptions
    from podnet.gossip.topology import check_peer_name
    from podnet.schema.fields import DNS_SUBDOMAIN_RE

    if s["fabric"] != "gossip":
        if s["store"] == STORE_NONE:
            raise ValueError("--store none is for --fabric gossip only (other fabrics share one store)")
        return None
    if s["store"] not in (None, STORE_NONE):
        raise ValueError("--fabric gossip keeps no shared store: give --store none (each node keeps its own, "
                         "and the gossip keeps them in step)")
    if not 1 <= int(s["gossip_port"]) <= 65535:
        raise ValueError(f"--gossip-port: {s['gossip_port']} is not a port")
    peers = [_peer_address(text, int(s["gossip_port"])) for text in s["peer"] or []]
    names = tuple(sorted({n.strip() for n in (s["ipalloc_init"] or "").split(",") if n.strip()}))
    for name in names:
        try:
            check_peer_name(name, "--ipalloc-init")
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    if names and s["node"] not in names and not peers:
        raise ValueError(f"--ipalloc-init does not name {s['node']} and no --peer is given: "
                         "this node could never get the ring")
    if not float(s["reclaim_grace"]) >= 1:  # also refuses nan

        raise ValueError("--reclaim-grace: at least 1 second")
    if not DNS_SUBDOMAIN_RE.match(s["dns_domain"] or ""):
        raise ValueError(f"--dns-domain: not a DNS name: {s['dns_domain']!r}")
    if s["key_file"] and not os.path.isfile(s["key_file"]):
        raise ValueError(f"--key-file: {s['key_file']} is not a file")
    return GossipOptions(tuple(peers), int(s["gossip_port"]), s["key_file"], None, names,
                         float(s["reclaim_grace"]), s["dns_domain"])


def _peer_address(text: str, default_port: int) -> tuple[str, int]:
    """`--peer`: IP, IP:PORT, [IPv6] or [IPv6]:PORT; a bare address gets `default_port`."""
    import ipaddress

    from podnet.gossip.topology import check_address

    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return str(ip), default_port
    try:
        return check_address(text, "--peer")
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def _node_labels(text: str) -> tuple[tuple[str, str], ...]:
    """`k=v,k2=v2` -> pairs, each checked by Kubernetes' label rules."""
    from podnet.errors import PodnetError
    from podnet.schema.fields import parse_labels

    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not KEY=VALUE")
        pairs[key] = value
    try:
        checked = parse_labels(pairs, "--node-labels")
    except PodnetError as exc:
        raise ValueError(exc.msg) from None
    return tuple(sorted(checked.items()))


def _lifetime(text: str) -> float:
    """--mesh-cert-lifetime: seconds, at least 5 (a renewal at 2/3 of it must have room)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 5 <= value <= 366 * 86400:
        raise argparse.ArgumentTypeError(f"must be from 5 seconds to a year, got {text}")
    return value


def _check_segment(s: dict) -> int | None:
    """--segment-gateway: an address inside the cluster CIDR, for --fabric macvlan only."""
    if not s["segment_gateway"]:
        return None
    if s["fabric"] != "macvlan":
        return fail("--segment-gateway is for --fabric macvlan only (the router of the pods' L2 segment)", 2)
    from podnet.fabric.macvlan import MacvlanFabric

    try:
        MacvlanFabric().configure(s["cluster_cidr"], s["segment_gateway"])
    except ValueError as exc:
        return fail(f"--segment-gateway: {exc}", 2)
    return None


def _check_cluster_dns(s: dict) -> int | None:
    """--cluster-dns must be an address and --cluster-domain a DNS name, or nothing starts."""
    import ipaddress

    from podnet.schema.fields import DNS_SUBDOMAIN_RE

    if s["cluster_dns"]:
        try:
            s["cluster_dns"] = str(ipaddress.ip_address(s["cluster_dns"]))
        except ValueError:
            return fail(f"--cluster-dns: not an IP address: {s['cluster_dns']!r}", 2)
    if not DNS_SUBDOMAIN_RE.match(s["cluster_domain"] or ""):
        return fail(f"--cluster-domain: not a DNS name: {s['cluster_domain']!r}", 2)
    return None


def _check_store(location: str, init: bool) -> int | None:
    """An explicit SQLite store must exist (a mistyped path would become an empty
    store, which reads as "no policy, no networks"); `--init` makes it. None: go on."""
    from podnet.errors import PodnetError, StoreError
    from podnet.store import missing_store, open_store

    try:
        missing = missing_store(location)
        if missing is None:
            return None
        if not init:
            return fail(StoreError(f"store {missing} does not exist",
                                   "give --init to make a new store there, or check --store"), 2)
        open_store(missing, create=True).close()  # nothing else of this process holds it yet
    except PodnetError as exc:
        return fail(exc, 2)
    return None


def _cmd_install(args: argparse.Namespace) -> int:
    from podnet.install import under
    from podnet.install.cni import install_cni
    from podnet.install.systemd import install_systemd

    conf_dir = str(under(args.root, args.conf_dir)) if args.conf_dir else None
    for path in install_cni(str(under(args.root, args.bin_dir)), conf_dir, args.network, args.subnet, args.bridge):
        print(f"wrote {path}")
    if args.systemd:
        for line in install_systemd(args.root, args.unit_dir, args.config, start=not args.no_start):
            print(line)
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from podnet.install.uninstall import uninstall

    if not (args.bin_dir or args.conf_dir or args.systemd or args.purge):
        return fail("nothing to uninstall: give --bin-dir, --conf-dir, --systemd and/or --purge", 2)
    lines = uninstall(root=args.root, bin_dir=args.bin_dir, conf_dir=args.conf_dir, network=args.network,
                      subnet=args.subnet, bridge=args.bridge, systemd=args.systemd, unit_dir=args.unit_dir,
                      purge_all=args.purge, config=args.config)
    print("\n".join(lines) if lines else "nothing to remove")
    return 0


def _cmd_ping(args: argparse.Namespace) -> int:
    from podnet.rpc.client import exchange

    try:
        code, payload = exchange(args.socket, b'{"op":"ping"}', timeout=5)
    except OSError as exc:
        print(f"podnet: no agent answers on {args.socket}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(payload.decode())
    return code

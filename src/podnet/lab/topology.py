"""The lab's topology: nodes in racks, pod namespaces, pods and the ports they serve.

Pure (no kernel, no processes): a topology comes from a YAML file (`load`/`parse`) or
from the `lab up` flags (`default_topology`), is validated once, and then names every
lab object (network namespaces, sockets) and addresses the underlay:

- rack r is the L2 segment 172.31.r.0/24; its router leg is 172.31.r.1 (racks > 1);
- the k-th node of rack r is 172.31.r.(10 + k);
- the outside world sits on rack 0 at 172.31.0.254 and owns 198.51.100.1 (TEST-NET-2,
  outside every cluster range);
- etcd member i sits on rack 0 at 172.31.0.(200 + i).

YAML format::

    nodes:
      - {name: node0, rack: 0}
      - {name: node1, rack: 1}
    namespaces:
      - {name: shop, labels: {team: a}}
    pods:
      - name: web
        namespace: shop
        node: node0
        labels: {app: web}
        ports: [{port: 80, protocol: TCP, name: http}, {port: 53, protocol: UDP}]
        readinessProbe: {tcpSocket: {port: http}, periodSeconds: 1}
        ownApp: true        # its own app process (lab/meshapp.py: HTTP/1.1, restartable alone)
    services:               # Kubernetes v1 Service manifests, applied once pods exist
      - metadata: {name: web, namespace: shop}
        spec: {selector: {app: web}, ports: [{port: 80, targetPort: http}]}
    cuts:                   # underlay links cut in the rack's fabric (lab/cuts.py)
      - [node0, node2]
    networks:               # extra pod networks, Multus-style (lab/extra_networks.py)
      - {name: storage, type: macvlan, subnet: 192.168.50.0/24, mode: bridge, master: eth0}
      - {name: local, type: bridge, subnet: 192.168.60.0/24}

A pod joins extra networks with `networks: [storage]` or Multus' annotation
`annotations: {k8s.v1.cni.cncf.io/networks: "storage,local"}` (eth1, eth2, ...).

The namespace `default` always exists; `rack` defaults to 0; `ports` to none. A
service's apiVersion and kind may be left out (they can only be v1 Service). A cut
names two nodes of one rack: links between racks go through the router, not cut here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from podnet.errors import InvalidConfig, PodnetError
from podnet.lab.extra_network_spec import ExtraNetwork, parse_networks, pod_networks
from podnet.model.probe import ReadinessProbe, parse_probe
from podnet.model.service import DEFAULT_SERVICE_CIDR

UNDERLAY_PREFIX = "172.31"
ROUTER_HOST = 1
FIRST_NODE_HOST = 10
MAX_NODES_PER_RACK = 180  # .10 .. .189; .200+ etcd, .254 outside
MAX_RACKS = 200
OUTSIDE_UNDERLAY = "172.31.0.254"
OUTSIDE_IP = "198.51.100.1"
UNDERLAY6_PREFIX = "fd00:172:31"  # `lab up --ipv6`: each rack's segment also fd00:172:31:<rack>::/64
OUTSIDE_IP6 = "2001:db8::1"  # the outside world's IPv6 address (documentation prefix, as 198.51.100.1)
CLUSTER_CIDR6 = "fd00:10:244::/56"  # the pods' IPv6 pool (kind's)
ETCD_FIRST_HOST = 200
CLUSTER_CIDR = "10.244.0.0/16"
RESERVED_RANGES = {  # what an extra network's subnet must not overlap (the lab's defaults)
    "the cluster CIDR": CLUSTER_CIDR,
    "the service CIDR": DEFAULT_SERVICE_CIDR,
    "the lab underlay": f"{UNDERLAY_PREFIX}.0.0/16",
    "the outside world": f"{OUTSIDE_IP}/32",
}

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_LAB_NAME = re.compile(r"^[a-z0-9]{1,8}$")
_LABEL_KEY = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


class TopologyError(PodnetError):
    """A topology file or flag combination is invalid."""


@dataclass(frozen=True)
class Port:
    port: int
    protocol: str = "TCP"
    name: str = ""

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Node:
    name: str
    rack: int
    index: int  # position among all nodes
    rack_index: int  # position inside its rack
    route_reflector: bool = False  # bgp fabric: this node reflects the others' routes (lab/routers.py)

    @property
    def underlay_ip(self) -> str:
        return f"{UNDERLAY_PREFIX}.{self.rack}.{FIRST_NODE_HOST + self.rack_index}"

    @property
    def underlay_ip6(self) -> str:
        return underlay6_of(self.underlay_ip)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    node: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()
    readiness: ReadinessProbe | None = None
    networks: tuple[str, ...] = ()  # extra networks (eth1, eth2, ...), lab/extra_networks.py
    own_app: bool = False  # its own app process (lab/meshapp.py), not the node's shared echo

    @property
    def key(self) -> str:
        """`NS/POD`, how the CLI names a pod."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...]
    namespaces: tuple[Namespace, ...]
    pods: tuple[Pod, ...]
    services: tuple[Mapping, ...] = ()  # Service manifests, checked by the object registry
    bgp: tuple[Mapping, ...] = ()  # BGPConfiguration/BGPPeer documents: the peerings (bgp fabric)
    cuts: tuple[tuple[str, str], ...] = ()  # underlay links cut from the start, each pair sorted
    networks: tuple[ExtraNetwork, ...] = ()  # extra pod networks (lab/extra_networks.py)

    @property
    def racks(self) -> int:
        return max(n.rack for n in self.nodes) + 1

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def pods_on(self, node: str) -> list[Pod]:
        return [p for p in self.pods if p.node == node]


def rack_subnet(rack: int) -> str:
    return f"{UNDERLAY_PREFIX}.{rack}.0/24"


def router_ip(rack: int) -> str:
    return f"{UNDERLAY_PREFIX}.{rack}.{ROUTER_HOST}"


def underlay6_of(ip4: str) -> str:
    """A lab machine's IPv6 underlay address, read off its IPv4 one: 172.31.R.H ->
    fd00:172:31:R::H (R and H written in decimal digits, so the two read alike)."""
    _a, _b, rack, host = ip4.split(".")
    return str(ipaddress.IPv6Address(f"{UNDERLAY6_PREFIX}:{rack}::{host}"))


UNDERLAY6_AGGREGATE = f"{UNDERLAY6_PREFIX}::/48"  # every rack's IPv6 segment


def etcd_ip(member: int) -> str:
    return f"{UNDERLAY_PREFIX}.0.{ETCD_FIRST_HOST + member}"


def check_lab_name(name: str) -> str:
    if not _LAB_NAME.fullmatch(name):
        raise TopologyError(f"invalid lab name {name!r}", "use 1-8 lowercase letters or digits")
    return name


def netns_name(lab: str, role: str) -> str:
    """Every lab namespace is `pn-lab-<lab>-<role>` (never anything else)."""
    return f"pn-lab-{lab}-{role}"


def pod_netns(lab: str, pod: Pod) -> str:
    return netns_name(lab, f"p-{pod.namespace}-{pod.name}")


def default_topology(nodes: int = 2, pods_per_node: int = 2, racks: int = 1) -> Topology:
    """`node0..node<N-1>`, dealt round-robin over the racks; namespace `default`; pods
    `p<node index>-<i>` labelled app=echo serving TCP 80 and UDP 80."""
    if nodes < 1:
        raise TopologyError("--nodes must be at least 1")
    if pods_per_node < 0:
        raise TopologyError("--pods-per-node must not be negative")
    if not 1 <= racks <= min(nodes, MAX_RACKS):
        raise TopologyError(f"--racks must be between 1 and the number of nodes ({nodes})")
    raw_nodes = [{"name": f"node{i}", "rack": i % racks} for i in range(nodes)]
    ports = [{"port": 80, "protocol": "TCP", "name": "http"}, {"port": 80, "protocol": "UDP", "name": "echo"}]
    raw_pods = [
        {"name": f"p{i}-{k}", "namespace": "default", "node": f"node{i}", "labels": {"app": "echo"}, "ports": ports}
        for i in range(nodes) for k in range(pods_per_node)
    ]
    return parse({"nodes": raw_nodes, "pods": raw_pods})


def load(path: str | Path) -> Topology:
    """Read and validate a YAML topology file."""
    from podnet import yamlsafe

    try:
        data = yamlsafe.load(yamlsafe.read_file(path))
    except OSError as exc:
        raise TopologyError(f"cannot read topology file {path}: {exc.strerror or exc}") from None
    except yamlsafe.YAMLError as exc:
        raise TopologyError(f"{path} is not valid YAML", str(exc)) from None
    try:
        return parse(data)
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc.msg}", exc.details) from None


def parse(data: object) -> Topology:
    """Validate a decoded topology document."""
    doc = _mapping(data, "the topology", {"nodes", "namespaces", "pods", "services", "bgp", "cuts", "networks"})
    nodes = _parse_nodes(_list(doc.get("nodes"), "nodes"))
    namespaces = _parse_namespaces(_list(doc.get("namespaces") or [], "namespaces"))
    try:
        networks = parse_networks(_list(doc.get("networks") or [], "networks"), RESERVED_RANGES)
    except InvalidConfig as exc:
        raise TopologyError(exc.msg, exc.details) from None
    pods = _parse_pods(_list(doc.get("pods") or [], "pods"), {n.name for n in nodes}, {n.name for n in namespaces},
                       networks)
    return Topology(nodes, namespaces, pods, _parse_services(_list(doc.get("services") or [], "services")),
                    _parse_bgp(_list(doc.get("bgp") or [], "bgp")),
                    _parse_cuts(_list(doc.get("cuts") or [], "cuts"), {n.name: n.rack for n in nodes}), networks)


def _parse_services(items: list) -> tuple[Mapping, ...]:
    """Service manifests (apiVersion v1 and kind Service by default), parsed now so a
    bad one stops `lab up` before anything is built."""
    from podnet.errors import ObjectError
    from podnet.objects.registry import parse_documents

    docs = [{"apiVersion": "v1", "kind": "Service", **_mapping(item, f"services[{i}]",
                                                                 {"apiVersion", "kind", "metadata", "spec", "status"})}
            for i, item in enumerate(items)]
    try:
        parse_documents(docs)
    except ObjectError as exc:
        raise TopologyError(f"services: {exc.msg}", exc.details) from None
    return tuple(docs)


def _parse_bgp(items: list) -> tuple[Mapping, ...]:
    """BGPConfiguration and BGPPeer documents (projectcalico.org/v3 by default): the
    peerings the lab applies before any agent starts, after its own (a `default`
    configuration here replaces the lab's); checked now, with the field's path."""
    from podnet.errors import ObjectError
    from podnet.objects.registry import parse_documents

    docs = []
    for i, item in enumerate(items):
        raw = _mapping(item, f"bgp[{i}]", {"apiVersion", "kind", "metadata", "spec"})
        if raw.get("kind") not in ("BGPConfiguration", "BGPPeer"):
            raise TopologyError(f"bgp[{i}].kind must be BGPConfiguration or BGPPeer, not {raw.get('kind')!r}")
        docs.append({"apiVersion": "projectcalico.org/v3", **raw})
    try:
        parse_documents(docs)
    except ObjectError as exc:
        raise TopologyError(f"bgp: {exc.msg}", exc.details) from None
    return tuple(docs)


def _parse_cuts(items: list, racks: Mapping[str, int]) -> tuple[tuple[str, str], ...]:
    cuts: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        where = f"cuts[{i}]"
        if not isinstance(item, list) or len(item) != 2:
            raise TopologyError(f"{where} must be a list of two node names, not {item!r}")
        cut = check_link(racks, item[0], item[1], (f"{where}[0]", f"{where}[1]"))
        if cut in cuts:
            raise TopologyError(f"{where}: the link {cut[0]}-{cut[1]} is listed twice")
        cuts.append(cut)
    return tuple(cuts)


def check_link(racks: Mapping[str, int], a: object, b: object, fields: tuple[str, str],
               kind: str = "node") -> tuple[str, str]:
    """An underlay link that can be cut: two different machines (name -> rack) of one
    rack, as a sorted pair; the error names the field (`fields` name a and b)."""
    for name, where in zip((a, b), fields, strict=True):
        if not isinstance(name, str) or name not in racks:
            raise TopologyError(f"{where}: unknown {kind} {name!r}", f"{kind}s: {', '.join(sorted(racks))}")
    assert isinstance(a, str) and isinstance(b, str)
    if a == b:
        raise TopologyError(f"{fields[1]}: {a} cannot be cut from itself")
    if racks[a] != racks[b]:
        raise TopologyError(f"{fields[1]}: {a} (rack {racks[a]}) and {b} (rack {racks[b]}) are in different racks",
                            "cross-rack links go through the router and are not cut this way; "
                            "cut a link between two machines of one rack")
    return (a, b) if a < b else (b, a)


def _parse_nodes(items: list) -> tuple[Node, ...]:
    if not items:
        raise TopologyError("the topology declares no nodes")
    seen: set[str] = set()
    per_rack: dict[int, int] = {}
    nodes = []
    for i, item in enumerate(items):
        where = f"nodes[{i}]"
        raw = _mapping(item, where, {"name", "rack", "routeReflector"})
        name = check_name(raw.get("name"), f"{where}.name")
        if name in seen:
            raise TopologyError(f"node {name!r} is declared twice")
        seen.add(name)
        rack = raw.get("rack", 0)
        if isinstance(rack, bool) or not isinstance(rack, int) or not 0 <= rack < MAX_RACKS:
            raise TopologyError(f"{where}.rack must be an integer from 0 to {MAX_RACKS - 1}, not {rack!r}")
        k = per_rack.get(rack, 0)
        if k >= MAX_NODES_PER_RACK:
            raise TopologyError(f"rack {rack} has more than {MAX_NODES_PER_RACK} nodes")
        per_rack[rack] = k + 1
        reflector = raw.get("routeReflector", False)
        if not isinstance(reflector, bool):
            raise TopologyError(f"{where}.routeReflector must be true or false, not {reflector!r}")
        nodes.append(Node(name, rack, i, k, reflector))
    missing = [r for r in range(max(per_rack) + 1) if r not in per_rack]
    if missing:
        raise TopologyError(f"racks are numbered from 0 without gaps; rack(s) {missing} have no node")
    return tuple(nodes)


def _parse_namespaces(items: list) -> tuple[Namespace, ...]:
    found: dict[str, Namespace] = {}
    for i, item in enumerate(items):
        where = f"namespaces[{i}]"
        raw = _mapping(item, where, {"name", "labels"})
        name = check_name(raw.get("name"), f"{where}.name")
        if name in found:
            raise TopologyError(f"namespace {name!r} is declared twice")
        found[name] = Namespace(name, _labels(raw.get("labels"), f"{where}.labels"))
    found.setdefault("default", Namespace("default"))
    return tuple(found.values())


def _parse_pods(items: list, nodes: set[str], namespaces: set[str],
                networks: tuple[ExtraNetwork, ...] = ()) -> tuple[Pod, ...]:
    seen: set[tuple[str, str]] = set()
    pods = []
    for i, item in enumerate(items):
        where = f"pods[{i}]"
        raw = _mapping(item, where, {"name", "namespace", "node", "labels", "ports", "readinessProbe",
                                     "networks", "annotations", "ownApp"})
        name = check_name(raw.get("name"), f"{where}.name")
        namespace = raw.get("namespace", "default")
        if namespace not in namespaces:
            raise TopologyError(f"{where} ({name}): unknown namespace {namespace!r}",
                                f"declared: {', '.join(sorted(namespaces))}")
        node = raw.get("node")
        if node not in nodes:
            raise TopologyError(f"{where} ({name}): unknown node {node!r}", f"declared: {', '.join(sorted(nodes))}")
        if (namespace, name) in seen:
            raise TopologyError(f"pod {namespace}/{name} is declared twice")
        seen.add((namespace, name))
        ports = _ports(_list(raw.get("ports") or [], f"{where}.ports"), f"{where}.ports")
        readiness = None
        if raw.get("readinessProbe") is not None:
            try:
                readiness = parse_probe(raw["readinessProbe"], f"{where}.readinessProbe")
            except InvalidConfig as exc:
                raise TopologyError(exc.msg, exc.details) from None
            if isinstance(readiness.port, str) and readiness.port not in {p.name for p in ports}:
                raise TopologyError(f"{where}.readinessProbe: the pod has no port named {readiness.port!r}")
        try:
            extra = pod_networks(raw, where, networks)
        except InvalidConfig as exc:
            raise TopologyError(exc.msg, exc.details) from None
        own_app = raw.get("ownApp", False)
        if not isinstance(own_app, bool):
            raise TopologyError(f"{where}.ownApp: must be true or false, got {own_app!r}")
        if own_app and not any(p.protocol == "TCP" for p in ports):
            raise TopologyError(f"{where}.ownApp: the pod serves no TCP port for its app")
        pods.append(Pod(name, namespace, node, _labels(raw.get("labels"), f"{where}.labels"), ports, readiness,
                        extra, own_app))
    return tuple(pods)


def _ports(items: list, where: str) -> tuple[Port, ...]:
    ports = []
    seen: set[tuple[int, str]] = set()
    for i, item in enumerate(items):
        raw = _mapping(item, f"{where}[{i}]", {"port", "protocol", "name"})
        port = raw.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise TopologyError(f"{where}[{i}].port must be an integer from 1 to 65535, not {port!r}")
        protocol = str(raw.get("protocol", "TCP")).upper()
        if protocol not in ("TCP", "UDP"):
            raise TopologyError(f"{where}[{i}].protocol must be TCP or UDP, not {raw.get('protocol')!r}")
        if (port, protocol) in seen:
            raise TopologyError(f"{where}: {port}/{protocol} is listed twice")
        seen.add((port, protocol))
        ports.append(Port(port, protocol, str(raw.get("name") or "")))
    return tuple(ports)


def _mapping(value: object, where: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise TopologyError(f"{where} must be a mapping, not {type(value).__name__}")
    unknown = sorted(set(map(str, value)) - allowed)
    if unknown:
        raise TopologyError(f"{where}: unknown field(s) {', '.join(unknown)}", f"allowed: {', '.join(sorted(allowed))}")
    return value


def _list(value: object, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TopologyError(f"{where} must be a list, not {type(value).__name__}")
    return value


def check_name(value: object, where: str) -> str:
    """A lab name (node, namespace, pod, host): 1-15 of [a-z0-9-], alphanumeric ends."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise TopologyError(
            f"{where}: invalid name {value!r}",
            "use 1-15 lowercase letters, digits or '-', starting and ending with a letter or digit",
        )
    return value


def _labels(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TopologyError(f"{where} must be a mapping of label keys to values")
    labels = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise TopologyError(f"{where}: invalid label key {key!r}")
        if isinstance(val, (dict, list)) or val is None:
            raise TopologyError(f"{where}: label {key} must have a scalar value")
        labels[key] = str(val).lower() if isinstance(val, bool) else str(val)
    return labels


def node_block_guess(node: Node, cluster_cidr: str = CLUSTER_CIDR, prefix: int = 24) -> str:
    """The index-th block of the cluster CIDR: what the lab hands out itself when the
    agent cannot lease blocks (no cluster support yet)."""
    net = ipaddress.ip_network(cluster_cidr)
    size = 2 ** (net.max_prefixlen - prefix)
    if (node.index + 1) * size > net.num_addresses:
        raise TopologyError(f"{cluster_cidr} has no block /{prefix} left for node {node.name}")
    return f"{net.network_address + node.index * size}/{prefix}"

"""The store's key schema: every key family podnet writes, one function or prefix each.

No other module spells a store key (tests/unit/test_keys.py checks the source for
literals), so a family can be found, renamed or versioned in one place, and
docs/architecture.md's key table is checked against `FAMILIES` below.

Every segment that comes from outside (a network, container or node name, an
address) goes through `segment()`: a "/" smuggled into a name must not reach another
family's keys, and a key read back is split with the `parse_*` functions, never by hand.

Pure and standard library only: the thin plugins' in-process paths import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from podnet.errors import InvalidConfig

# -- prefixes (list/watch/delete_prefix of a whole family) ----------------------------
NODES = "nodes/"
BLOCKS = "blocks/"
ENDPOINTS = "endpoints/"
IPAM = "ipam/"
NETWORKS = "networks/"
CONTAINERS = "containers/"
HOSTS = "hosts/"
STORES = "meta/stores/"
NONE_LEFT = "meta/none-left/"
GOSSIP_DNS = "meta/gossip/dns/"
GOSSIP_ROUTING = "meta/gossip/routing"  # the gossip fabric's first hops, this node's view
IPAM_HOLD = "meta/ipam-hold/"  # a node that must hand out no address now (the gossip ring's minority side)
POLICY = "policy/"
PODS = POLICY + "pods/"
REMOTE_PODS = POLICY + "remotepods/"  # another cluster's pods, for policy selectors (clusterset/)
NAMESPACES = POLICY + "namespaces/"
NETWORK_POLICIES = POLICY + "networkpolicies/"
CLUSTER_POLICIES = POLICY + "clusterpolicies/"
TIERS = POLICY + "tiers/"
HOST_ENDPOINTS = POLICY + "hostendpoints/"
POLICY_SETTINGS = POLICY + "settings"
SERVICES = "services/"
ENDPOINT_SLICES = "endpointslices/"
CLUSTER_IPS = "alloc/clusterips/"
NODE_PORTS = "alloc/nodeports/"
SERVICE_SETTINGS = "settings/services"
READINESS = "readiness/"
BGP_CONFIGURATIONS = "bgpconfigurations/"
BGP_PEERS = "bgppeers/"
MESH = "mesh/"  # every mesh family (objects, CA): what the sidecar manager watches
MESH_HTTP_ROUTES = MESH + "httproutes/"
MESH_TRAFFIC_POLICIES = MESH + "trafficpolicies/"
MESH_AUTHORIZATION_POLICIES = MESH + "authorizationpolicies/"
MESH_PEER_AUTHENTICATIONS = MESH + "peerauthentications/"
MESH_CA = MESH + "ca"  # the mesh's certificate authority (agent/mesh_service.py)
CLUSTERSET = "clusterset/"  # joining clusters (clusterset/): who we are, our peers, our gateways
CLUSTERSET_SELF = CLUSTERSET + "self"
CLUSTERSET_PEERS = CLUSTERSET + "peers/"
CLUSTERSET_GATEWAYS = CLUSTERSET + "gateways/"
CLUSTERSET_ACTIVE_GATEWAY = CLUSTERSET + "active-gateway"
CLUSTERSET_TUNNEL_KEYS = CLUSTERSET + "tunnel-keys/"  # the secret of an encrypted tunnel to a peer
SERVICE_EXPORTS = "serviceexports/"  # the Multi-Cluster Services API: what a cluster shares
SERVICE_IMPORTS = "serviceimports/"  # ... and what it sees of the clusterset's (podnet writes them)
# the objects that make a node keep a policy table (agent/policy_service.py)
ENFORCING_POLICY = (NETWORK_POLICIES, CLUSTER_POLICIES)


@dataclass(frozen=True)
class Family:
    """One key family: its pattern, the record type kept there, whether a TTL
    keeps it alive (leases vanish with their writer), and the release that first
    wrote it (the golden stores of tests/fixtures hold every family of theirs)."""

    prefix: str
    pattern: str
    record: str
    ttl: bool = False
    since: str = "0.1.0"


FAMILIES: tuple[Family, ...] = (
    Family(NODES, "nodes/<node>", "NodeLease", ttl=True),
    Family(BLOCKS, "blocks/<address>-<prefixlen>", "BlockClaim", ttl=True),
    Family(ENDPOINTS, "endpoints/<network>/<containerID>/<ifname>", "EndpointRecord"),
    Family(IPAM, "ipam/<network>/ip/<address>", "Reservation"),
    Family(IPAM, "ipam/<network>/last/<rangeset>", "last address handed out (text)"),
    Family(NETWORKS, "networks/<name>", "NetworkRecord"),
    Family(CONTAINERS, "containers/<name>", "ContainerRecord"),
    Family(HOSTS, "hosts/<name>", "HostRecord"),
    Family(STORES, "meta/stores/<sha256(path)[:16]>", "store path (JSON string)"),
    Family(NONE_LEFT, "meta/none-left/<policy or networks>", "marker: the last one was deleted (time)",
           since="0.2.0"),
    Family(GOSSIP_ROUTING, "meta/gossip/routing", "peer -> first hop, and the sleeve's peers (JSON)",
           since="0.2.0"),
    Family(IPAM_HOLD, "meta/ipam-hold/<node>", "why the node hands out no address now (JSON)", since="0.2.0"),
    Family(GOSSIP_DNS, "meta/gossip/dns/<hostname>/<ip>", "gossip DNS name, this node's view (JSON)",
           since="0.2.0"),
    Family(PODS, "policy/pods/<namespace>/<name>", "PodRecord"),
    Family(REMOTE_PODS, "policy/remotepods/<cluster>/<namespace>/<name>",
           "PodRecord of a peer cluster's pod (labelled podnet.io/cluster)", since="0.3.0"),
    Family(POLICY_SETTINGS, "policy/settings", "PolicySettings"),
    Family(NAMESPACES, "policy/namespaces/<name>", "Namespace (manifest)"),
    Family(NETWORK_POLICIES, "policy/networkpolicies/<namespace>/<name>", "NetworkPolicy (manifest)"),
    Family(CLUSTER_POLICIES, "policy/clusterpolicies/<name>", "ClusterPolicy (manifest)"),
    Family(TIERS, "policy/tiers/<name>", "Tier (manifest)"),
    Family(HOST_ENDPOINTS, "policy/hostendpoints/<name>", "HostEndpoint (manifest)"),
    Family(SERVICES, "services/<namespace>/<name>", "Service (manifest)", since="0.2.0"),
    Family(ENDPOINT_SLICES, "endpointslices/<namespace>/<name>", "EndpointSlice (manifest)", since="0.2.0"),
    Family(CLUSTER_IPS, "alloc/clusterips/<address>", "ServiceClaim", since="0.2.0"),
    Family(NODE_PORTS, "alloc/nodeports/<protocol>-<port>", "PortClaim", since="0.2.0"),
    Family(SERVICE_SETTINGS, "settings/services", "ServiceSettings", since="0.2.0"),
    Family(READINESS, "readiness/<namespace>/<pod>", "Readiness", since="0.2.0"),
    Family(BGP_CONFIGURATIONS, "bgpconfigurations/<name>", "BGPConfiguration (manifest)", since="0.2.0"),
    Family(BGP_PEERS, "bgppeers/<name>", "BGPPeer (manifest)", since="0.2.0"),
    Family(MESH_HTTP_ROUTES, "mesh/httproutes/<namespace>/<name>", "HTTPRoute (manifest)", since="0.2.0"),
    Family(MESH_TRAFFIC_POLICIES, "mesh/trafficpolicies/<namespace>/<name>", "MeshTrafficPolicy (manifest)",
           since="0.2.0"),
    Family(MESH_AUTHORIZATION_POLICIES, "mesh/authorizationpolicies/<namespace>/<name>",
           "MeshAuthorizationPolicy (manifest)", since="0.2.0"),
    Family(MESH_PEER_AUTHENTICATIONS, "mesh/peerauthentications/<namespace>/<name>",
           "PeerAuthentication (manifest)", since="0.2.0"),
    Family(MESH_CA, "mesh/ca", "the mesh CA: certificate and key (PEM, JSON)", since="0.2.0"),
    Family(CLUSTERSET_SELF, "clusterset/self", "ClusterInfo", since="0.3.0"),
    Family(CLUSTERSET_PEERS, "clusterset/peers/<cluster>", "ClusterPeer", since="0.3.0"),
    Family(CLUSTERSET_GATEWAYS, "clusterset/gateways/<node>", "GatewayCandidate", since="0.3.0"),
    Family(CLUSTERSET_ACTIVE_GATEWAY, "clusterset/active-gateway", "ActiveGateway (a lease in its value)",
           since="0.3.0"),
    Family(CLUSTERSET_TUNNEL_KEYS, "clusterset/tunnel-keys/<cluster>",
           "the secret of the encrypted tunnel to that peer ({secret: base64})", since="0.3.0"),
    Family(SERVICE_EXPORTS, "serviceexports/<namespace>/<name>", "ServiceExport (manifest)", since="0.3.0"),
    Family(SERVICE_IMPORTS, "serviceimports/<namespace>/<name>", "ServiceImport (manifest, podnet writes it)",
           since="0.3.0"),
)


class BadKey(InvalidConfig):
    """A name that cannot be a key segment, or a key that is not of its family
    (code 7, as any invalid name in a network configuration)."""


def segment(value: object, what: str = "name") -> str:
    """A non-empty key segment without "/", NUL, or a bare "." / "..": what every
    caller-supplied part of a key must be."""
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\0" in value:
        raise BadKey(f"invalid {what} {value!r} for a store key")
    return value


# -- one function per family -----------------------------------------------------------


def remote_pod(cluster: str, namespace: str, name: str) -> str:
    return f"{REMOTE_PODS}{segment(cluster, 'cluster name')}/{segment(namespace, 'namespace')}/{segment(name)}"


def clusterset_peer(cluster: str) -> str:
    return CLUSTERSET_PEERS + segment(cluster, "cluster name")


def clusterset_tunnel_key(cluster: str) -> str:
    return CLUSTERSET_TUNNEL_KEYS + segment(cluster, "cluster name")


def clusterset_gateway(node_name: str) -> str:
    return CLUSTERSET_GATEWAYS + segment(node_name, "node name")


def node(name: str) -> str:
    return NODES + segment(name, "node name")


def ipam_hold(node: str) -> str:
    """Why `node` may hand out no address now (absent: it may)."""
    return f"{IPAM_HOLD}{segment(node, 'node')}"


def block(address: str, prefixlen: int) -> str:
    """The claim of one block of the cluster CIDR (`blocks/10.244.3.0-24`)."""
    return f"{BLOCKS}{segment(address, 'block address')}-{int(prefixlen)}"


def endpoints(network: str | None = None) -> str:
    """The endpoint records of one network, or of every network."""
    return ENDPOINTS if network is None else f"{ENDPOINTS}{segment(network, 'network name')}/"


def endpoint(network: str, container_id: str, ifname: str) -> str:
    return (f"{ENDPOINTS}{segment(network, 'network name')}/{segment(container_id, 'container ID')}/"
            f"{segment(ifname, 'interface name')}")


def parse_endpoint(key: str) -> tuple[str, str, str]:
    """`endpoints/<network>/<cid>/<ifname>` -> (network, cid, ifname)."""
    parts = _parts(key, ENDPOINTS, 3)
    return parts[0], parts[1], parts[2]


def ipam_addresses(network: str | None = None) -> str:
    """The reservations of one network (`ipam/<network>/ip/`); None: the whole IPAM
    tree (`ipam/`: reservations and round-robin marks of every network)."""
    return IPAM if network is None else f"{IPAM}{segment(network, 'network name')}/ip/"


def ipam_address(network: str, address: str) -> str:
    return f"{ipam_addresses(network)}{segment(address, 'address')}"


def parse_ipam_address(key: str) -> tuple[str, str] | None:
    """`ipam/<network>/ip/<address>` -> (network, address); None for the other keys
    under `ipam/` (the round-robin marks)."""
    if not key.startswith(IPAM):
        raise BadKey(f"{key!r} is not an IPAM key")
    parts = key[len(IPAM):].split("/")
    if len(parts) != 3 or parts[1] != "ip" or not parts[0] or not parts[2]:
        return None
    return parts[0], parts[2]


def ipam_last(network: str, range_set: int) -> str:
    """The last address handed out in one range set (host-local's round robin)."""
    return f"{IPAM}{segment(network, 'network name')}/last/{int(range_set)}"


def network(name: str) -> str:
    return NETWORKS + segment(name, "network name")


def container(name: str) -> str:
    return CONTAINERS + segment(name, "container name")


def host(name: str) -> str:
    return HOSTS + segment(name, "host name")


def stored_store(path: str) -> str:
    """Where the agent remembers another store it served (found again at resync)."""
    import hashlib  # here: OpenSSL's import costs ~3 ms that every other key does without

    return STORES + hashlib.sha256(path.encode()).hexdigest()[:16]


NONE_LEFT_OF = ("policy", "networks")


def none_left(what: str) -> str:
    """The marker that the last NetworkPolicy/ClusterPolicy ("policy") or the last
    network ("networks") was deleted on purpose: only then may an agent remove the
    table enforcing them. A store that merely looks empty (a mistyped --store, a wrong
    etcd prefix) has no marker, and the table stays."""
    if what not in NONE_LEFT_OF:
        raise BadKey(f"no none-left marker for {what!r}")
    return NONE_LEFT + what


def gossip_dns(hostname: str, ip: str) -> str:
    """A name the gossip DNS answers, as this node's DNS reads it (agent/gossip_dns.py)."""
    return f"{GOSSIP_DNS}{segment(hostname, 'hostname')}/{segment(ip, 'address')}"


def parse_gossip_dns(key: str) -> tuple[str, str]:
    """`meta/gossip/dns/<hostname>/<ip>` -> (hostname, ip)."""
    parts = _parts(key, GOSSIP_DNS, 2)
    return parts[0], parts[1]


def pod(namespace: str, name: str) -> str:
    return f"{PODS}{segment(namespace, 'namespace')}/{segment(name, 'pod name')}"


def cluster_ip(address: str) -> str:
    """The claim of one ClusterIP: whoever writes it first owns the address."""
    return CLUSTER_IPS + segment(address, "address")


def node_port(protocol: str, port: int) -> str:
    """The claim of one node port (every node's, as NodePorts are cluster-wide), or of
    the host ports of that number that endpoints publish (services/ports.py)."""
    if protocol not in ("tcp", "udp") or not 1 <= int(port) <= 65535:
        raise BadKey(f"no node port key for {protocol!r} {port!r}")
    return f"{NODE_PORTS}{protocol}-{int(port)}"


def readiness(namespace: str, pod_name: str) -> str:
    """A probed pod's readiness, written by the node that runs it."""
    return f"{READINESS}{segment(namespace, 'namespace')}/{segment(pod_name, 'pod name')}"


def object_key(prefix: str, name: str, namespace: str | None = None) -> str:
    """An object's key under its kind's prefix (the object registry gives the
    prefix): `<prefix>[<namespace>/]<name>`."""
    if prefix not in {f.prefix for f in FAMILIES}:
        raise BadKey(f"{prefix!r} is not the prefix of a key family")
    inner = segment(name) if namespace is None else f"{segment(namespace, 'namespace')}/{segment(name)}"
    return prefix + inner


def object_ref(prefix: str, key: str) -> str:
    """`<prefix>[<namespace>/]<name>` -> "name" or "namespace/name"."""
    if not key.startswith(prefix):
        raise BadKey(f"{key!r} is not under {prefix!r}")
    return key[len(prefix):]


def _parts(key: str, prefix: str, count: int) -> list[str]:
    if not key.startswith(prefix):
        raise BadKey(f"{key!r} is not under {prefix!r}")
    parts = key[len(prefix):].split("/")
    if len(parts) != count or not all(parts):
        raise BadKey(f"{key!r} does not have the form {prefix}{'/'.join(['<part>'] * count)}")
    return parts

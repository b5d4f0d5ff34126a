"""Every default a user sees in a flag or a file, in one module that imports nothing:
the CLI's help and the standard-library-only paths (podnet-ipam, the CNI config)
read them without importing the code that uses them. The agent's default socket is
rpc/wire.py's, beside the framing the thin plugin speaks."""

DEFAULT_STORE = "/var/lib/podnet/store.db"
DEFAULT_STATE_DIR = "/var/lib/podnet"
DEFAULT_CONFIG = "/etc/podnet/config.yaml"

# a cluster node (podnet agent --node ...)
FABRIC_NAMES = ("vxlan", "host-gw", "bgp", "gossip", "macvlan")  # fabric/__init__.py FABRICS has exactly these keys
DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"  # cluster DNS (kubelet --cluster-domain)
FABRIC_ROUTE_PROTO = 77  # tags podnet fabric routes (unused by iproute2's rt_protos; BIRD's are 12)
HOST_ROUTE_PROTO = 79  # tags `podnet host join`'s routes on a joined host: leave removes exactly these
CLUSTERSET_ROUTE_PROTO = 80  # tags the routes to other clusters of the set (clusterset/): theirs alone to change
DEFAULT_BLOCK_PREFIX = 24
DEFAULT_LEASE_TTL = 10.0

# podnet install-cni
DEFAULT_NETWORK, DEFAULT_SUBNET, DEFAULT_BRIDGE = "podnet", "10.85.0.0/16", "podnet0"
UNIT = "podnet-agent.service"
DEFAULT_UNIT_DIR = "/etc/systemd/system"

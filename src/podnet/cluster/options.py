"""The agent's cluster flags (--node, --fabric, ...), as one value the node service reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from podnet.cluster.dualstack import Pools
from podnet.defaults import (
    DEFAULT_BLOCK_PREFIX,
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_LEASE_TTL,
)

GOSSIP_PORT = 6783  # Weave's
DEFAULT_RECLAIM_GRACE = 60.0
DEFAULT_GOSSIP_DOMAIN = "podnet.local"  # weave.local's counterpart


@dataclass(frozen=True)
class GossipOptions:
    """`--fabric gossip`: how this node finds and trusts its peers (agent/gossip_service.py)."""

    peers: tuple[tuple[str, int], ...] = ()  # seeds: (host, port)
    port: int = GOSSIP_PORT
    key_file: str | None = None  # the shared secret (else $PODNET_GOSSIP_PASSWORD, else none)
    password: str | None = field(default=None, repr=False)
    ipalloc_init: tuple[str, ...] = ()  # the peers of the ring's initial split (Weave's seed=)
    reclaim_grace: float = DEFAULT_RECLAIM_GRACE  # a dead peer's space is reclaimed after this
    dns_domain: str = DEFAULT_GOSSIP_DOMAIN


@dataclass(frozen=True)
class NodeOptions:
    node: str
    fabric: str = "vxlan"
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR
    block_prefix: int = DEFAULT_BLOCK_PREFIX
    underlay: str = "eth0"
    lease_ttl: float = DEFAULT_LEASE_TTL
    cluster_dns: str | None = None  # the DNS service's ClusterIP, handed to pods (kubelet --cluster-dns)
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN  # (kubelet --cluster-domain)
    cluster_dns_netns: str | None = None  # the DNS pod this agent answers in (/run/netns/...)
    labels: tuple[tuple[str, str], ...] = ()  # published in the lease (BGPPeer selectors: rack, route-reflector)
    strict_affinity: bool = False  # never borrow an address from another node's block (always so on a bridge)
    gossip: GossipOptions | None = None  # --fabric gossip: peers, secret, ring genesis
    segment_gateway: str | None = None  # --fabric macvlan: the pod segment's router (None: its first address)
    mesh_cert_lifetime: float | None = None  # the mesh certificates this node issues (None: 1 h)
    cluster_cidr6: str | None = None  # dual stack: the IPv6 pool, paired block by block (cluster/dualstack.py)
    ipv6_masquerade: bool = False  # masquerade IPv6 leaving the cluster (off as in Kubernetes)
    fastpath: str = "kernel"  # --fastpath ebpf: tc eBPF fast path of vxlan and host-gw (fabric/fastpath.py)

    @property
    def pools(self) -> Pools:
        import ipaddress

        return Pools(ipaddress.IPv4Network(self.cluster_cidr), self.block_prefix,
                     ipaddress.IPv6Network(self.cluster_cidr6) if self.cluster_cidr6 else None)

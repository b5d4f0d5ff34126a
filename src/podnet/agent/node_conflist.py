"""The pod network's conflist a cluster node renders (`net.d/cluster.conflist`), pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import ip_network
from typing import Any

from podnet.cluster import leases
from podnet.cluster.leases import CLUSTER_NETWORK
from podnet.defaults import DEFAULT_CLUSTER_DOMAIN

BRIDGE = "pncl0"  # the bridge of a node's pods (bridged fabrics)
IPV6_POD_GSO = 65536  # a pod's IPv6 GSO limit in a dual-stack cluster (attach/base.py pod_end_gso)


def render_conflist(block: str, cluster_cidr: str, mtu: int, agent_socket: str, store: str,
                    gso_max_size: int | None = None, cluster_dns: str | None = None,
                    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN, affinity: dict[str, Any] | None = None,
                    routed: bool = False, block6: str | None = None, cluster_cidr6: str | None = None,
                    ipv6_masquerade: bool = False) -> dict[str, Any]:
    """The pod network's conflist (pure): masquerade only toward outside the cluster.
    `ipam.store` names the shared cluster store (the agent's --store, verbatim), so the
    node's endpoint records and reservations live where peers can reclaim them.
    `gso_max_size`: the pods' GSO limit, from the underlay and the fabric (kernel/gso.py);
    the node knows its underlay, a default route may not point there.
    `cluster_dns`: the DNS service's ClusterIP; ADD's result then carries it and the
    search list of the pod's namespace under `cluster_domain` (cni/config.py conf_dns).
    `affinity`: `ipam.blockAffinity` (ipam/blocks.py): pods come from the node's blocks,
    `block` (the lease's) being the first; `routed`: pods are /32s behind their own
    veths (attach/routed.py; the bgp fabric's, so borrowed addresses work), else they
    share the bridge, one gateway per block. `block6`: a dual-stack node's IPv6 block
    (its IPv4 block's twin, cluster/dualstack.py), a second range set, so every pod gets
    an address of each family; `cluster_cidr6` is never masqueraded either, and the
    rest of IPv6 only with `ipv6_masquerade` (Kubernetes routes IPv6 pods unNATed)."""
    doc: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": CLUSTER_NETWORK,
        "plugins": [
            {
                "type": "podnet",
                "bridge": BRIDGE,
                "isGateway": True,
                "isDefaultGateway": True,
                "ipMasq": True,
                "ipMasqExclude": [cluster_cidr],
                "hairpinMode": True,  # a pod reaching itself through its service (br_netfilter)
                "mtu": mtu,
                "agentSocket": agent_socket,
                "capabilities": {"portMappings": True, "ips": True},
                "ipam": {
                    "type": "podnet-ipam",
                    "ranges": [[{"subnet": block, "gateway": str(leases.gateway_of(block))}]],
                    "store": store,
                },
            }
        ],
    }
    if block6:
        from ipaddress import IPv6Network

        from podnet.cluster.dualstack import gateway6_of

        plugin = doc["plugins"][0]
        plugin["ipam"]["ranges"].append([{"subnet": block6, "gateway": str(gateway6_of(IPv6Network(block6)))}])
        if cluster_cidr6:
            plugin["ipMasqExclude"].append(cluster_cidr6)
        plugin["ipMasqIPv6"] = ipv6_masquerade
        plugin["gsoMaxSizeIPv6"] = IPV6_POD_GSO  # no IPv6 BIG TCP from pods: their node refuses to forward it
    if affinity:
        doc["plugins"][0]["ipam"]["blockAffinity"] = affinity
    if routed:
        plugin = doc["plugins"][0]
        del plugin["bridge"], plugin["hairpinMode"]
        plugin["mode"] = "routed"
    if gso_max_size:
        doc["plugins"][0]["gsoMaxSize"] = gso_max_size
    if cluster_dns:
        doc["plugins"][0]["dns"] = {"nameservers": [cluster_dns]}
        doc["plugins"][0]["clusterDomain"] = cluster_domain
    return doc


def to_macvlan(doc: dict[str, Any], master: str, segments: Sequence[tuple[str, str]], shims: Mapping[int, str],
               service_cidrs: Sequence[str]) -> dict[str, Any]:
    """The conflist of the macvlan fabric (fabric/macvlan.py): pods are bridge-mode
    macvlans of `master` on the pod `segments` (one per family: their address gets its
    prefix, the segment's router is their gateway), with no bridge, NAT or port mappings
    (their traffic never passes the node); each service CIDR goes via the node's shim
    address of its family (`shims`: IP version -> address)."""
    plugin = doc["plugins"][0]
    for key in ("bridge", "hairpinMode", "isGateway", "ipMasq", "ipMasqExclude", "ipMasqIPv6", "gsoMaxSizeIPv6"):
        plugin.pop(key, None)
    given = [{"subnet": subnet, "gateway": gateway} for subnet, gateway in segments]
    plugin.update(mode="macvlan", master=master, macvlanMode="bridge", segment=given[0] if len(given) == 1 else given)
    plugin["capabilities"] = {"ips": True}
    routes = [{"dst": cidr, "gw": shims[version]} for cidr in service_cidrs
              if (version := ip_network(cidr).version) in shims]
    if routes:
        plugin["ipam"]["routes"] = routes
    return doc

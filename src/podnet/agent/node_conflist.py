"""The pod network's conflist a cluster node renders (`net.d/cluster.conflist`), pure."""

from __future__ import annotations

from typing import Any

from podnet.cluster import leases
from podnet.cluster.leases import CLUSTER_NETWORK
from podnet.defaults import DEFAULT_CLUSTER_DOMAIN

BRIDGE = "pncl0"  # the bridge of a node's pods (bridged fabrics)


def render_conflist(block: str, cluster_cidr: str, mtu: int, agent_socket: str, store: str,
                    gso_max_size: int | None = None, cluster_dns: str | None = None,
                    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN, affinity: dict[str, Any] | None = None,
                    routed: bool = False) -> dict[str, Any]:
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
    share the bridge, one gateway per block."""
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


def to_macvlan(doc: dict[str, Any], master: str, segment: str, gateway: str, shim: str,
               service_cidr: str | None) -> dict[str, Any]:
    """The conflist of the macvlan fabric (fabric/macvlan.py): pods are bridge-mode
    macvlans of `master` on the pod `segment` (their address gets its prefix, the
    segment's router is their gateway), with no bridge, NAT or port mappings (their
    traffic never passes the node); the service CIDR goes via the node's `shim`."""
    plugin = doc["plugins"][0]
    for key in ("bridge", "hairpinMode", "isGateway", "ipMasq", "ipMasqExclude"):
        plugin.pop(key, None)
    plugin.update(mode="macvlan", master=master, macvlanMode="bridge",
                  segment={"subnet": segment, "gateway": gateway})
    plugin["capabilities"] = {"ips": True}
    if service_cidr:
        plugin["ipam"]["routes"] = [{"dst": service_cidr, "gw": shim}]
    return doc

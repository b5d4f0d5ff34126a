"""BGPConfiguration and BGPPeer declared once for the object registry.

`podnet get bgpconfigs` shows each config's AS, mesh, port and reflector cluster ID as
written (a node config leaves unset what `default` decides); `podnet describe
bgpconfig NAME` adds what every node ends up with, and `describe bgppeer NAME` the
sessions each node with a lease opens because of it (bgp/objects.py `peers_for`,
the same answer the fabric gets). Both are cluster-scoped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from podnet import keys
from podnet.bgp.objects import (
    API_VERSION,
    BGPConfiguration,
    BGPPeer,
    effective_config,
    node_infos,
    parse_bgp_configuration,
    parse_bgp_peer,
    peers_for,
)
from podnet.cluster.leases import list_leases
from podnet.model.cluster import NodeLease
from podnet.schema.fields import Loc
from podnet.schema.kind import Column, Kind, Section
from podnet.store.base import Store


class StoreView(Protocol):
    store: Store


def _spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("spec") or {}


def _shown(value: Any) -> Any:
    return "-" if value is None else value


def read_configuration(doc: Mapping[str, Any], where: str = "stored BGP configuration") -> BGPConfiguration:
    """A stored BGPConfiguration manifest, validated again as if applied."""
    return BGP_CONFIGURATION.parse_manifest(doc, Loc(where))


def read_peer(doc: Mapping[str, Any], where: str = "stored BGP peer") -> BGPPeer:
    return BGP_PEER.parse_manifest(doc, Loc(where))


def load_bgp(store: Store) -> tuple[list[BGPConfiguration], list[BGPPeer]]:
    """Every BGPConfiguration and BGPPeer of the store, each validated (ObjectError
    naming its key when one is damaged)."""
    configs = [read_configuration(e.json(), e.key) for e in store.list(keys.BGP_CONFIGURATIONS)]
    peers = [read_peer(e.json(), e.key) for e in store.list(keys.BGP_PEERS)]
    return configs, peers


def _settings(config: BGPConfiguration) -> list[str]:
    """A filled-in configuration (effective_config) as describe lines."""
    return [f"asNumber: {config.as_number}",
            f"nodeToNodeMeshEnabled: {str(config.node_to_node_mesh).lower()}",
            f"listenPort: {config.listen_port}",
            f"serviceClusterIPs: {', '.join(config.service_cluster_ips or ()) or '-'}",
            f"serviceExternalIPs: {', '.join(config.service_external_ips or ()) or '-'}",
            f"routeReflectorClusterID: {config.rr_cluster_id or '- (not a route reflector)'}",
            f"logSeverityScreen: {config.log_severity or '-'}"]


def _leases(store: Store) -> list[NodeLease]:
    return sorted(list_leases(store), key=lambda lease: lease.name)


def describe_configuration(doc: Mapping[str, Any], view: StoreView) -> list[Section]:
    config = read_configuration(doc)
    configs, _ = load_bgp(view.store)
    leases = _leases(view.store)
    if config.node is not None:
        running = any(lease.name == config.node for lease in leases)
        return [("Node", config.node if running else f"{config.node} (no lease: not running)"),
                (f"Effective for {config.node}", _settings(effective_config(configs, config.node)))]
    nodes = [f"{lease.name}  {effective_config(configs, lease.name).name}" for lease in leases]
    return [("Nodes (config that applies)", nodes or ["(no node has a lease)"]),
            ("Effective (nodes without their own config)", _settings(effective_config(configs, "")))]


def describe_peer(doc: Mapping[str, Any], view: StoreView) -> list[Section]:
    peer = read_peer(doc)
    configs, _ = load_bgp(view.store)
    leases = _leases(view.store)
    infos = node_infos({lease.name: (lease.underlay_ip, lease.labels) for lease in leases}, configs)
    sessions = []
    for lease in leases:
        for target in peers_for(lease.name, lease.labels, [peer], infos):
            far = f" (node {target.node})" if target.node else ""
            client = " route reflector client" if target.rr_client else ""
            sessions.append(f"{lease.name} -> {target.address}:{target.port} AS {target.asn}{far}{client}")
    return [("Sessions", sessions or ["(none: no node with a lease opens one)"])]


BGP_CONFIGURATION = Kind(
    "BGPConfiguration", API_VERSION, "bgpconfigurations", keys.BGP_CONFIGURATIONS, ("bgpconfig", "bgpconfigs"),
    parse=parse_bgp_configuration, describe=describe_configuration,
    columns=(Column("ASN", lambda d: _shown(_spec(d).get("asNumber"))),
             Column("MESH", lambda d: _shown(_spec(d).get("nodeToNodeMeshEnabled"))),
             Column("LISTEN-PORT", lambda d: _shown(_spec(d).get("listenPort"))),
             Column("RR-CLUSTER-ID", lambda d: _shown(_spec(d).get("routeReflectorClusterID")))))
BGP_PEER = Kind(
    "BGPPeer", API_VERSION, "bgppeers", keys.BGP_PEERS, ("bgpp",), parse=parse_bgp_peer, describe=describe_peer,
    columns=(Column("NODES", lambda d: _spec(d).get("node") or _spec(d).get("nodeSelector") or "all()"),
             Column("PEER", lambda d: _spec(d).get("peerIP") or _spec(d).get("peerSelector")),
             Column("ASN", lambda d: _shown(_spec(d).get("asNumber")))))

BGP_KINDS: tuple[Kind, ...] = (BGP_CONFIGURATION, BGP_PEER)

"""Fabrics: how a node reaches the other nodes' pod blocks (explicit registry)."""

from __future__ import annotations

from podnet.fabric.base import RouteNetwork
from podnet.fabric.bgp import BgpFabric
from podnet.fabric.gossip import GossipFabric
from podnet.fabric.hostgw import HostGwFabric
from podnet.fabric.macvlan import MacvlanFabric
from podnet.fabric.vxlan import VxlanFabric

FABRICS: dict[str, type[RouteNetwork]] = {
    "vxlan": VxlanFabric,
    "host-gw": HostGwFabric,
    "bgp": BgpFabric,
    "gossip": GossipFabric,
    "macvlan": MacvlanFabric,
}

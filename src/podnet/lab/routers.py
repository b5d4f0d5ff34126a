"""The bgp lab's routers (issue 12): a top-of-rack router per rack and one spine, each a
namespace running BIRD, instead of the single static router of the other fabrics.

Addressing and ASes (Calico's AS-per-rack design):
- `tor<r>`: `eth0` in rack r's segment at 172.31.r.1 (the address the nodes already
  route through), `up0` to the spine on 172.31.250.(4r+1)/30; AS 65100+r;
- `spine`: `r<r>` to each ToR on 172.31.250.(4r+2)/30; AS 65200;
- the nodes of rack r: AS 65000+r, one eBGP session each with their ToR (BGPPeer
  `tor-r<r>`, nodeSelector `rack == 'r<r>'`), no node-to-node mesh.
Each ToR announces its rack's segment, rack 0's also the outside world's address; so
racks reach each other and the outside world through BGP alone, and pods on different
racks talk with no tunnel. The routers' BIRDs are lab processes (recorded, stopped by
PID at `lab down`), configured with the nodes' renderer (bgp/render.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from podnet.bgp.model import BirdSpec, Neighbor
from podnet.fabric.bgp import protocol_name
from podnet.lab import topology as topo

SPINE_AS = 65200
TOR_AS_BASE = 65100
NODE_AS_BASE = 65000
UPLINK_PREFIX = f"{topo.UNDERLAY_PREFIX}.250"
MAX_BGP_RACKS = 63  # 4 addresses per uplink in one /24
ACCEPT = (f"{topo.UNDERLAY_PREFIX}.0.0/16", "10.96.0.0/12", "198.51.100.0/24")  # and the pods' pool


def tor_as(rack: int) -> int:
    return TOR_AS_BASE + rack


def node_as(rack: int) -> int:
    return NODE_AS_BASE + rack


def uplink(rack: int) -> tuple[str, str]:
    """(ToR side, spine side) of rack `rack`'s uplink, /30."""
    return f"{UPLINK_PREFIX}.{4 * rack + 1}", f"{UPLINK_PREFIX}.{4 * rack + 2}"


@dataclass(frozen=True)
class Router:
    name: str  # tor0, spine
    spec: BirdSpec


def routers(racks: int, nodes: list[topo.Node], pool: str = topo.CLUSTER_CIDR) -> list[Router]:
    """Every router's BIRD (pure); `pool`: the cluster CIDR (`lab up --cluster-cidr`),
    whose blocks and borrowed /32s the routers pass on."""
    accept = (*ACCEPT, pool)
    out = []
    for rack in range(racks):
        tor_ip, spine_ip = uplink(rack)
        members = [Neighbor(protocol_name("node", n.name), n.underlay_ip, node_as(rack))
                   for n in nodes if n.rack == rack]
        originate = [topo.rack_subnet(rack)] + ([f"{topo.OUTSIDE_IP}/32"] if rack == 0 else [])
        out.append(Router(f"tor{rack}", BirdSpec(
            router_id=topo.router_ip(rack), asn=tor_as(rack), local_address=topo.router_ip(rack),
            neighbors=(*members, Neighbor("spine", spine_ip, SPINE_AS, local_address=tor_ip)),
            originate=tuple(originate), accept=accept)))
    spine = [Neighbor(f"tor{rack}", uplink(rack)[0], tor_as(rack), local_address=uplink(rack)[1])
             for rack in range(racks)]
    out.append(Router("spine", BirdSpec(router_id=uplink(0)[1], asn=SPINE_AS, local_address=uplink(0)[1],
                                        neighbors=tuple(spine), accept=accept)))
    return out


REFLECTOR_LABEL = "route-reflector"
REFLECTOR_CLUSTER_ID = "244.0.0.1"  # Calico's documented example


def reflector_objects(nodes: list[topo.Node]) -> list[dict]:
    """Calico's route reflector topology for the nodes marked `routeReflector`: no mesh,
    the reflectors share one cluster ID, every node peers with every reflector (the
    reflectors' sessions with each other carry what each reflects)."""
    api = "projectcalico.org/v3"
    docs: list[dict] = [{"apiVersion": api, "kind": "BGPConfiguration", "metadata": {"name": "default"},
                         "spec": {"nodeToNodeMeshEnabled": False}}]
    docs += [{"apiVersion": api, "kind": "BGPConfiguration", "metadata": {"name": f"node.{n.name}"},
              "spec": {"routeReflectorClusterID": REFLECTOR_CLUSTER_ID}} for n in nodes if n.route_reflector]
    docs.append({"apiVersion": api, "kind": "BGPPeer", "metadata": {"name": "peer-with-route-reflectors"},
                 "spec": {"peerSelector": f"has({REFLECTOR_LABEL})"}})
    return docs


def node_labels(node: topo.Node) -> str:
    """What a lab node's agent publishes (`--node-labels`)."""
    return f"rack=r{node.rack}" + (f",{REFLECTOR_LABEL}=true" if node.route_reflector else "")


def bgp_objects(racks: int, nodes: list[topo.Node]) -> list[dict]:
    """What the lab applies so the nodes peer with their ToR: no mesh, an AS per rack
    (a per-node BGPConfiguration), one BGPPeer per rack."""
    api = "projectcalico.org/v3"
    docs: list[dict] = [{"apiVersion": api, "kind": "BGPConfiguration", "metadata": {"name": "default"},
                         "spec": {"nodeToNodeMeshEnabled": False}}]
    docs += [{"apiVersion": api, "kind": "BGPConfiguration", "metadata": {"name": f"node.{n.name}"},
              "spec": {"asNumber": node_as(n.rack)}} for n in nodes]
    docs += [{"apiVersion": api, "kind": "BGPPeer", "metadata": {"name": f"tor-r{rack}"},
              "spec": {"nodeSelector": f"rack == 'r{rack}'", "peerIP": topo.router_ip(rack),
                       "asNumber": tor_as(rack)}} for rack in range(racks)]
    return docs

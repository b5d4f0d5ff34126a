"""Extra pod networks in the lab, the way Multus adds them: beside the primary fabric
(eth0, which keeps the default route), a pod may sit on up to four more networks,
each its own CNI ADD with ifname eth1, eth2, ... in the declared order.

A topology declares them once (`networks:`) and pods name them (`networks: [storage]`,
or Multus' annotation `k8s.v1.cni.cncf.io/networks: "storage,other"`):

- `macvlan`: a child of the node's `master` (default eth0) in `mode` bridge, private or
  vepa. The nodes' eth0 share their rack's L2 bridge, so pods on different nodes of a
  rack reach each other's eth1 directly, with no routing and no NAT.
- `bridge`: a node-local bridge `pnx-<name>` without an address: pods of one node only.

Addresses come from podnet-ipam numbered in the lab's cluster store (`ipam.store`), so
two nodes never hand out one address on a shared segment; no default route (the
range's first address stays out, as a router's would). The topology's part is parsed
in lab/extra_network_spec.py; `render_conflist` is pure, and `attach_extra` runs the
ADDs through the node's agent, as `lab up` attaches eth0.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from podnet.lab.extra_network_spec import ExtraNetwork, ifname
from podnet.lab.state import NETNS_DIR, LabError, LabState, enter

if TYPE_CHECKING:
    from podnet.lab.topology import Pod


def render_conflist(net: ExtraNetwork, lab_store: str, node: Mapping[str, Any]) -> dict[str, Any]:
    """The podnet conflist for `net` on `node` (its lab state entry: the agent socket):
    no default route, no masquerade, addresses numbered in `lab_store`."""
    plugin: dict[str, Any] = {"type": "podnet"}
    if net.type == "macvlan":
        plugin.update(mode="macvlan", master=net.master, macvlanMode=net.mode)
    else:
        plugin.update(mode="bridge", bridge=net.bridge, isGateway=False)
    plugin.update(isDefaultGateway=False, ipMasq=False, agentSocket=node["socket"],
                  ipam={"type": "podnet-ipam", "ranges": [[{"subnet": net.subnet}]], "store": lab_store})
    return {"cniVersion": "1.0.0", "name": net.name, "plugins": [plugin]}


def check_lab_ranges(state: LabState, net: ExtraNetwork) -> None:
    """The topology checked the default ranges; `lab up --cluster-cidr/--service-cidr`
    may have moved them: the subnet must not overlap a node's block or the services."""
    subnet = ipaddress.ip_network(net.subnet)
    ranges = {f"the block of {name}": info.get("block") for name, info in state.data.get("nodes", {}).items()}
    ranges.update({f"the IPv6 block of {name}": info.get("block6") for name, info in state.data.get("nodes", {}).items()})
    for i, cidr in enumerate(str(state.data.get("service_cidr") or "").split(",")):  # a prefix per family
        ranges[f"the service CIDR{' (secondary)' if i else ''}"] = cidr.strip()
    for what, cidr in ranges.items():
        if cidr and ipaddress.ip_network(cidr).version == subnet.version and subnet.overlaps(ipaddress.ip_network(cidr)):
            raise LabError(f"network {net.name}: its subnet {net.subnet} overlaps {what} ({cidr})")


def attach_extra(state: LabState, pod: Pod, networks: Sequence[ExtraNetwork], netns_path: str | None = None,
                 node_info: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """One CNI ADD per extra network of `pod` (eth1, eth2, ... in order), run inside
    its node's namespace like the primary attach; the addresses per network, also
    recorded in the pod's state entry as `networks` (the caller saves the state).
    `netns_path`/`node_info` default to what the state records for the pod."""
    if not pod.networks:
        return {}
    from podnet.runtime.libcni import CniFailure, Conflist

    node = node_info or state.data["nodes"][pod.node]
    netns = netns_path or str(NETNS_DIR / state.data["pods"][pod.key]["netns"])
    by_name = {net.name: net for net in networks}
    cid = f"lab-{state.name}-{pod.namespace}-{pod.name}"
    attached: dict[str, list[str]] = {}
    for position, name in enumerate(pod.networks):
        check_lab_ranges(state, by_name[name])
        config = render_conflist(by_name[name], state.data["store_url"], node)
        conflist = Conflist(config, [str(state.labdir / "bin"), "/usr/lib/cni"], enter=enter(node["netns"]))
        try:
            result = conflist.add(cid, netns, ifname(position),
                                  args=f"K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name}")
        except CniFailure as exc:
            raise LabError(f"attaching pod {pod.key} to network {name} ({ifname(position)}) on {pod.node} failed",
                           str(exc)) from None
        attached[name] = [entry["address"] for entry in result.get("ips", [])]
    entry = state.data.get("pods", {}).get(pod.key)
    if entry is not None:
        entry["networks"] = attached
    return attached


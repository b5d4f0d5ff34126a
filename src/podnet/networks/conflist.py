"""A NetworkRecord as the CNI conflist a runtime executes (pure).

The shape is a contract: `podnet container run` executes exactly this file through
podnet.runtime.libcni.Conflist, and so could podman. `validate()` runs the plugin's own
config and IPAM parsers over it, so a network that was stored can always be attached.
"""

from __future__ import annotations

from typing import Any

from podnet.model.network import NetworkRecord, Subnet
from podnet.networks.subnets import range_bounds

CNI_VERSION = "1.0.0"


def _range(sub: Subnet) -> dict[str, str]:
    out = {"subnet": str(sub.subnet), "gateway": str(sub.gateway)}
    bounds = range_bounds(sub)
    if bounds is not None:
        out["rangeStart"], out["rangeEnd"] = str(bounds[0]), str(bounds[1])
    return out


def render(network: NetworkRecord, agent_socket: str, data_dir: str) -> dict[str, Any]:
    """The conflist document. An internal network gets no default route and no
    masquerade; its isolation from the outside is the forward table's job."""
    plugin: dict[str, Any] = {"type": "podnet", "mode": network.driver}
    if network.driver == "bridge":
        plugin["bridge"] = network.bridge
    else:
        plugin["master"] = network.parent
        if network.vlan is not None:  # the children sit on <master>.<vlan> (kernel/vlan.py)
            plugin["vlan"] = network.vlan
    plugin.update(
        isGateway=True,
        isDefaultGateway=not network.internal,
        ipMasq=not network.internal,
    )
    if network.mtu is not None:
        plugin["mtu"] = network.mtu
    plugin.update(
        agentSocket=agent_socket,
        capabilities={"portMappings": True, "ips": True},
        ipam={
            "type": "podnet-ipam",
            "ranges": [[_range(sub)] for sub in network.subnets],
            "dataDir": data_dir,
        },
    )
    return {"cniVersion": CNI_VERSION, "name": network.name, "plugins": [plugin]}


def validate(conflist: dict[str, Any]) -> None:
    """Parse every plugin config as the plugin will at ADD; InvalidConfig if it would fail."""
    from podnet.cni.config import parse_conf
    from podnet.ipam.config import parse_ipam_config
    from podnet.runtime.libcni import plugin_config

    for plugin in conflist["plugins"]:
        conf = parse_conf(plugin_config(conflist, plugin, None))
        parse_ipam_config(conf.ipam)

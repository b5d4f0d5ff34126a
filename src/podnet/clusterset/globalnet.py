"""Global addressing for clusters whose ranges overlap (Submariner's Globalnet) (pure).

A cluster given a global CIDR (`podnet cluster init --global-cidr G`) is reached by the
rest of the clusterset on G only; its own pod and service ranges stay private to it.
G is cut in two halves, each mapped one to one, so no address is ever allocated (or
leaked, or lost with a gateway):

    lower half of G  <->  the cluster CIDR      every pod's global IP
    upper half of G  <->  the service CIDR      every Service's global IP (its ClusterIP's)

At the gateway in charge the pods' addresses are translated by prefix (nft's
`snat/dnat ip prefix to`, stateful) on the tunnel device: out of the cluster a pod's
source becomes its global IP, into the cluster a pod's global IP becomes the pod. An
exported Service's global IP is an external IP of a `global-<name>` Service the gateway
keeps next to it (agent/clusterset_imports.py `sync_global_services`): the node's service table balances it
as any external IP, so there is no second DNAT to chain.

So G must hold each range in its half: a /16 of pods and a /16 of services need a /15.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

GLOBAL_PREFIX = "global-"  # the Service that carries an exported Service's global IP


@dataclass(frozen=True)
class GlobalLayout:
    pods: ipaddress.IPv4Network  # the half of G mapped onto the cluster CIDR
    services: ipaddress.IPv4Network  # the half mapped onto the service CIDR
    cluster_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network

    @property
    def pod_map(self) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
        """(cluster CIDR, the same-sized start of the pods' half): the prefix map."""
        return self.cluster_cidr, _same_size(self.pods, self.cluster_cidr)

    def pod_ip(self, address: str) -> str:
        return _translate(address, self.cluster_cidr, self.pods)

    def service_ip(self, address: str) -> str:
        return _translate(address, self.service_cidr, self.services)


def layout(global_cidr: str, cluster_cidr: str, service_cidr: str) -> GlobalLayout:
    """How G maps the cluster's ranges; ValueError saying why it cannot."""
    whole = ipaddress.IPv4Network(global_cidr)
    pods, services = ipaddress.IPv4Network(cluster_cidr), ipaddress.IPv4Network(service_cidr)
    if whole.prefixlen >= 31:
        raise ValueError(f"{whole} is too small to hold a cluster's pods and services")
    low, high = whole.subnets(1)
    for what, net, half in (("cluster CIDR", pods, low), ("service CIDR", services, high)):
        if net.num_addresses > half.num_addresses:
            raise ValueError(f"half of {whole} ({half}) cannot map the {what} {net} one to one: the global CIDR "
                             f"must hold twice the larger range (here a /{min(pods.prefixlen, services.prefixlen) - 1}"
                             " or wider)")
        if net.overlaps(whole):
            raise ValueError(f"{whole} overlaps this cluster's own {what} {net}")
    return GlobalLayout(low, high, pods, services)


def _same_size(half: ipaddress.IPv4Network, net: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((half.network_address, net.prefixlen))


def _translate(address: str, source: ipaddress.IPv4Network, target: ipaddress.IPv4Network) -> str:
    ip = ipaddress.IPv4Address(address)
    if ip not in source:
        raise ValueError(f"{ip} is not in {source}")
    return str(target.network_address + (int(ip) - int(source.network_address)))


def global_service_name(name: str) -> str | None:
    """The name of the Service carrying `name`'s global IP (None: too long for a DNS label)."""
    derived = GLOBAL_PREFIX + name
    return derived if len(derived) <= 63 else None

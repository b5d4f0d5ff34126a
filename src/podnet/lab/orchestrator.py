"""The lab as orchestrator: what Kubernetes' API server would know of the lab's pods.

`register(lab)` writes the topology's namespaces (with labels) and pods (labels, named
ports, node, addresses) to the lab's cluster store (objects/store.py), where every
node's policy service reads them, and the plain hosts' addresses (`hosts/<name>`).
Existing records are kept: labels a user changed since stay changed.

Why a module run as a process: an etcd lab store lives on the lab's fabric, reachable
only from inside the lab. The root namespace must never send to lab addresses, so the
lab runs `python -m podnet.lab.orchestrator LAB` inside its first node's namespace
(`in_lab_argv`), and so does any CLI command that needs the store of an etcd lab.
"""

from __future__ import annotations

import sys

from podnet import keys
from podnet.errors import TryAgainLater
from podnet.lab.state import NETNS_DIR, LabError, LabState, enter


def in_lab_argv(state: LabState, argv: list[str]) -> list[str]:
    """`argv` run inside the lab's first node namespace (network only, same mounts)."""
    nodes = state.data.get("nodes") or {}
    if not nodes:
        raise LabError(f"lab {state.name!r} has no nodes yet", "is it up? podnet lab status")
    first = next(iter(nodes.values()))["netns"]
    if not (NETNS_DIR / first).exists():
        raise LabError(f"lab {state.name!r}: namespace {first} is gone", "podnet lab down, then up again")
    return [*enter(first), *argv]


def needs_lab_namespace(url: str) -> bool:
    """A store only reachable from inside the lab (etcd on the lab fabric)."""
    return url.startswith("etcd://")


DNS_NAMESPACE = "kube-system"
DNS_LABELS = {"k8s-app": "kube-dns"}
BUSY_ATTEMPTS = 3  # a busy store (a hundred agents writing on two CPUs) is waited for again, not fatal
DNS_PORTS = ({"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"})


def kube_dns(cluster_ip: str, cluster_ip6: str | None = None) -> dict:
    """The cluster DNS service, as kubeadm installs it: its pods are the nodes' DNS pods.
    In a dual-stack lab it has a ClusterIP of each family (`cluster_ip6`: the IPv6
    service CIDR's 10th), so pods can ask over IPv6 too."""
    spec: dict = {"selector": dict(DNS_LABELS), "clusterIP": cluster_ip,
                  "ports": [{**port, "targetPort": port["name"]} for port in DNS_PORTS]}
    if cluster_ip6:
        spec.update(clusterIPs=[cluster_ip, cluster_ip6], ipFamilyPolicy="RequireDualStack",
                    ipFamilies=["IPv4", "IPv6"])
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": DNS_NAMESPACE, "labels": dict(DNS_LABELS)},
            "spec": spec}


def write_settings(name: str) -> int:
    """The service settings alone, before the agents start: a node renders its pods'
    conflist from them (the macvlan fabric routes every service CIDR via its shim), so
    a dual-stack lab's IPv6 service CIDR must be known before the first pod."""
    from podnet.store import open_store

    state = LabState.load(name)
    with open_store(state.data["store_url"]) as store:
        _ensure_settings(store, state.data)
    return 0


def _ensure_settings(store, data: dict) -> None:
    """The lab's service CIDR(s) and DNS domain in the store, unless set already."""
    from podnet.model.service import ServiceSettings

    dns = data.get("cluster_dns") or {}
    if data.get("service_cidr") and store.get(keys.SERVICE_SETTINGS) is None:
        domain = {"cluster_domain": dns["domain"]} if dns.get("domain") else {}
        store.put(keys.SERVICE_SETTINGS, ServiceSettings(data["service_cidr"], **domain).encode())


def register(name: str) -> int:
    from podnet.model.policy import PodRecord
    from podnet.model.probe import parse_probe

    state = LabState.load(name)
    pods, namespaces = [], {}
    for key, pod in state.data.get("pods", {}).items():
        namespace, _, pod_name = key.partition("/")
        namespaces.setdefault(namespace, {})
        ports = tuple({"name": p.get("name", ""), "port": int(p["port"]), "protocol": p["protocol"]}
                      for p in pod.get("named_ports", []))
        readiness = parse_probe(pod["readiness"]) if pod.get("readiness") else None
        pods.append(PodRecord(namespace, pod_name, pod.get("node", ""),
                              tuple(ip.split("/")[0] for ip in pod.get("ips", [])),
                              dict(pod.get("labels") or {}), ports, readiness))
    for ns in state.data.get("namespace_labels", {}).items():
        namespaces[ns[0]] = dict(ns[1])
    dns = state.data.get("cluster_dns") or {}
    for node, entry in (dns.get("pods") or {}).items():
        namespaces.setdefault(DNS_NAMESPACE, {})
        pods.append(PodRecord(DNS_NAMESPACE, entry["name"], node, tuple(ip.split("/")[0] for ip in entry.get("ips", [])),
                              dict(DNS_LABELS), DNS_PORTS))
    for attempt in range(1, BUSY_ATTEMPTS):  # every write is idempotent: the last attempt's error stands
        try:
            _write_registrations(state.data, pods, namespaces)
            return 0
        except TryAgainLater as exc:
            print(f"store busy ({exc.msg}): registering again ({attempt}/{BUSY_ATTEMPTS})", file=sys.stderr)
    _write_registrations(state.data, pods, namespaces)
    return 0


def _write_registrations(data: dict, pods: list, namespaces: dict) -> None:
    """The pods, namespaces, services and hosts of the lab, in its store."""
    from podnet.model.base import CorruptRecord
    from podnet.model.cluster import HostRecord
    from podnet.objects.registry import parse_documents
    from podnet.objects.store import apply, register_pods
    from podnet.store import open_store

    dns = data.get("cluster_dns") or {}
    with open_store(data["store_url"]) as store:
        _ensure_settings(store, data)
        register_pods(store, pods, namespaces)
        services = ([kube_dns(dns["ip"], dns.get("ip6"))] if dns.get("ip") else []) + list(data.get("services") or [])
        if services:  # the topology's services, once their pods exist
            apply(store, parse_documents(services))
        for host, entry in (data.get("hosts") or {}).items():
            try:  # `host join`'s podnet address stays
                pod_ip = HostRecord.from_json(store.get_json(keys.host(host))).pod_ip
            except CorruptRecord:  # none yet (or unreadable: written anew)
                pod_ip = ""
            store.put(keys.host(host), HostRecord(entry["underlay"], entry["rack"], pod_ip).encode())


if __name__ == "__main__":
    sys.exit(write_settings(sys.argv[1]) if sys.argv[2:] == ["--settings"] else register(sys.argv[1]))

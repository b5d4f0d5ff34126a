"""`podnet connectivity test --clusterset`: the cross-cluster checks of a lab joined to
other labs (clusterset/), planned from the lab states and our store, run like every
other probe (connectivity.py).

- `multicluster/gateway`: each cluster (ours, each peer) has a gateway in charge;
- `multicluster/pod-to-pod`: each of our nodes' first pod -> each peer node's first pod,
  HTTP `GET /peer`: the far pod must see our pod's own address (no masquerade); a
  cluster with a global CIDR is called, and seen, on its pods' global IPs;
- `multicluster/import-dns` (a lab with cluster DNS): `<name>.<ns>.svc.clusterset.local`
  must answer the ServiceImport's ClusterSetIP;
- `multicluster/import`: the ClusterSetIP's first port, from our first pod: the echo must
  answer with the name of one of the pods serving the import now.
A peer that is not a lab on this machine (its store is no lab's) is checked for its
gateway only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnet import keys
from podnet.clusterset.exports import CLUSTERSET_DOMAIN, SERVICE_NAME_LABEL, SOURCE_LABEL
from podnet.clusterset.model import ClusterInfo
from podnet.clusterset.records import read_active, read_local
from podnet.store import Store, open_store

Planned = tuple[str, str, str, str, dict]  # check, source, netns, destination, spec
Judged = tuple[str, str, str, bool, str]  # check, source, destination, ok, detail


def _address(pod: Mapping[str, Any]) -> str | None:
    ips = pod.get("ips") or []
    return ips[0].split("/")[0] if ips else None


def _first_pods(lab: Mapping[str, Any]) -> dict[str, str]:
    """node -> the key of its first pod (topology order) that has an address."""
    out: dict[str, str] = {}
    for key, pod in (lab.get("pods") or {}).items():
        if pod.get("node") not in out and _address(pod):
            out[pod["node"]] = key
    return out


def lab_of_store(url: str) -> dict | None:
    """The state of the lab on this machine whose store is `url`, if any."""
    from podnet.lab.state import RUN_DIR, LabState

    for path in sorted(RUN_DIR.glob("lab-*.json")):
        try:
            data = LabState.load(path.stem[len("lab-"):]).data
        except Exception:  # noqa: BLE001 - a half-written or foreign file is no match
            continue
        if data.get("store_url") == url:
            return data
    return None


def plan(lab: Mapping[str, Any], store: Store) -> tuple[list[Planned], list[Judged]]:
    """Probes to run, and checks already judged from the stores."""
    problems: list[str] = []
    view = read_local(store)
    me = view.me.name if view.me else "this cluster"
    judged: list[Judged] = [_gateway_check(me, view.active)]
    planned: list[Planned] = []
    ours = _first_pods(lab)
    pods = lab.get("pods") or {}
    behind: dict[str, list[str]] = {}  # a peer's global service IP -> the pods it serves from
    for peer in view.peers:
        try:
            with open_store(peer.store, create=False) as remote:
                active, _ = read_active(remote, problems, f"{peer.name}: ")
                other = lab_of_store(peer.store)
                if other is not None and peer.info.global_cidr:
                    behind.update(_global_backends(store, remote, peer.name, other))
        except Exception as exc:  # noqa: BLE001 - a peer that does not answer fails its check
            judged.append(("multicluster/gateway", peer.name, peer.store, False, f"its store does not answer: {exc}"))
            continue
        judged.append(_gateway_check(peer.name, active))
        if other is None:
            continue
        for node, key in ours.items():
            for far in _first_pods(other).values():
                dst = _seen_as(peer.info, _address(other["pods"][far]))
                planned.append(("multicluster/pod-to-pod", f"{key} ({node})", pods[key]["netns"],
                                f"{peer.name} {far} ({dst})",
                                {"kind": "http", "dst": dst, "port": 80, "path": "/peer",
                                 "expect": _seen_as(view.me, _address(pods[key]))}))
    if ours:
        planned += _import_probes(lab, store, pods[next(iter(ours.values()))], next(iter(ours.values())), view,
                                  behind)
    return planned, judged


def _seen_as(info: ClusterInfo | None, address: str | None) -> str | None:
    """`address` of a pod of `info`'s cluster as the other clusters reach it."""
    if info is None or not info.global_cidr or address is None:
        return address
    return info.layout().pod_ip(address)


def _global_backends(store: Store, remote: Store, peer: str, other: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each global service IP of `peer` that our imports hold -> the names of the pods
    that serve it in `peer` (its own derived slices: the exporter serves itself first)."""
    names = {_address(pod): key.split("/", 1)[1] for key, pod in (other.get("pods") or {}).items() if _address(pod)}
    theirs = _derived_addresses(remote, peer)
    out: dict[str, list[str]] = {}
    for service, addresses in _derived_addresses(store, peer).items():
        for address in addresses:
            out[address] = sorted({names.get(a, a) for a in theirs.get(service, ())})
    return out


def _gateway_check(cluster: str, active: Any) -> Judged:
    if active is None:
        return ("multicluster/gateway", cluster, "-", False, "no gateway in charge")
    return ("multicluster/gateway", cluster, active.node, True, f"{active.node} tunnels from {active.address}")


def _import_probes(lab: Mapping[str, Any], store: Store, client: Mapping[str, Any], client_key: str,
                   view: Any, behind: Mapping[str, list[str]]) -> list[Planned]:
    names = _pod_names_by_address(lab, view)
    serving_by_import = _derived_addresses(store)
    dns = lab.get("cluster_dns") or {}
    out: list[Planned] = []
    for entry in store.list(keys.SERVICE_IMPORTS):
        doc = entry.json()
        meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        ns, name, ips, ports = meta.get("namespace"), meta.get("name"), spec.get("ips") or [], spec.get("ports") or []
        if not ips:
            continue
        fqdn = f"{name}.{ns}.svc.{CLUSTERSET_DOMAIN}"
        if dns.get("ip"):
            out.append(("multicluster/import-dns", client_key, client["netns"], fqdn,
                        {"kind": "dns", "dst": dns["ip"], "port": 53, "name": fqdn, "qtype": "A",
                         "expect": f"answer {ips[0]}"}))
        serving = sorted({n for a in serving_by_import.get((ns, name), ()) for n in behind.get(a, [names.get(a, a)])})
        if ports:
            out.append(("multicluster/import", client_key, client["netns"], f"{ns}/{name} {ips[0]}:{ports[0]['port']}",
                        {"kind": "tcp", "dst": ips[0], "port": ports[0]["port"], "expect_any": serving}))
    return out


def _derived_addresses(store: Store, source: str | None = None) -> dict[tuple[str, str], list[str]]:
    """(namespace, import name) -> the addresses of its derived EndpointSlices (those
    from cluster `source` only, when given)."""
    out: dict[tuple[str, str], list[str]] = {}
    for entry in store.list(keys.ENDPOINT_SLICES):
        doc = entry.json()
        meta = doc.get("metadata") or {}
        labels = meta.get("labels") or {}
        name = labels.get(SERVICE_NAME_LABEL)
        if name and (source is None or labels.get(SOURCE_LABEL) == source):
            out.setdefault((meta.get("namespace"), name), []).extend(
                a for e in doc.get("endpoints") or [] for a in e.get("addresses") or [])
    return out


def _pod_names_by_address(lab: Mapping[str, Any], view: Any) -> dict[str, str]:
    """Address -> pod name (the echo's answer) over our lab and the peers' labs."""
    labs = [lab, *(d for d in (lab_of_store(p.store) for p in view.peers) if d)]
    return {_address(pod): key.split("/", 1)[1] for data in labs for key, pod in (data.get("pods") or {}).items()
            if _address(pod)}

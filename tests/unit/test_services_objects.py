"""Service and EndpointSlice parsing (services/objects.py), allocation of ClusterIPs and
node ports in apply's transaction (services/allocate.py), and which addresses back a
service port (services/endpoints.py). Pure, against the in-memory and SQLite stores."""

from __future__ import annotations

import ipaddress
import threading

import pytest
import yaml

from podnet import keys
from podnet.errors import InvalidConfig, ObjectError
from podnet.model.policy import PodRecord
from podnet.model.service import ServiceClaim, ServiceSettings
from podnet.objects import store as repo
from podnet.objects.describe import describe
from podnet.objects.registry import lookup, parse_documents
from podnet.services.endpoints import backing
from podnet.services.kinds import SERVICE, read_service
from podnet.store import open_store


def svc(name: str = "web", namespace: str = "default", **spec) -> dict:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def one(doc: dict):
    (obj,) = parse_documents([doc])
    return obj


@pytest.fixture
def store():
    with open_store("memory://") as s:
        yield s


def applied(store, *docs: dict):
    repo.apply(store, parse_documents(docs))
    return [read_service(store.get(one(d).key).json()) for d in docs]


# -- parsing ------------------------------------------------------------------------


def test_defaults_as_the_api_server_sets_them():
    s = one(svc(ports=[{"port": 80}]))
    assert (s.type, s.cluster_ip, s.affinity_timeout, s.external_policy, s.internal_policy) == (
        "ClusterIP", "", None, "Cluster", "Cluster")
    (port,) = s.ports
    assert (port.protocol, port.target_port, port.node_port) == ("TCP", 80, None)
    assert one(svc(sessionAffinity="ClientIP")).affinity_timeout == 10800
    assert one(svc(selector={})).selector is None  # {} is no selector, as stored by the API


@pytest.mark.parametrize(("spec", "message"), [
    ({"sessionAfinity": "ClientIP"}, r"spec\.sessionAfinity: unknown field"),
    ({"type": "External"}, r"spec\.type: 'External' is not one of"),
    ({"ports": []}, r"spec\.ports: at least one port"),
    ({"ports": [{"port": 80}, {"port": 81}]}, r"spec\.ports\[0\]\.name: required when"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "port names must be unique"),
    ({"ports": [{"port": 70000}]}, r"spec\.ports\[0\]\.port: 70000 is not a port"),
    ({"ports": [{"port": 80, "nodePort": 30001}]}, r"nodePort: only a NodePort or LoadBalancer"),
    ({"ports": [{"port": 80, "targetPort": "Http_"}]}, r"targetPort: 'Http_' is not a DNS label"),
    ({"ports": [{"port": 80, "targetPort": "1234"}]}, r"targetPort: '1234' is not a port name"),
    ({"clusterIP": "None", "type": "NodePort"}, "headless service .* cannot be NodePort"),
    ({"clusterIP": "None", "sessionAffinity": "ClientIP"}, "headless service has no virtual IP"),
    ({"clusterIP": "fe80::1%eth0"}, r"spec\.clusterIP: .*scope ID"),
    ({"externalIPs": ["1.2.3"]}, r"spec\.externalIPs\[0\]: '1\.2\.3' is not an IP address"),
    ({"externalTrafficPolicy": "Local"}, "Local needs something external"),
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
     r"timeoutSeconds: 0 is not 1\.\.86400"),
    ({"clusterIPs": ["10.96.0.5", "10.96.0.6"]}, r"spec\.clusterIPs\[1\]: .* one address per family"),
])
def test_bad_specs_name_the_field(spec, message):
    with pytest.raises(ObjectError, match=message):
        one(svc(**spec))


def test_load_balancer_ingress_is_read_from_status():
    doc = {**svc(type="LoadBalancer"), "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}}
    assert one(doc).load_balancer_ips == ("192.0.2.7",)
    with pytest.raises(ObjectError, match="only a LoadBalancer service has ingress IPs"):
        one({**svc(), "status": doc["status"]})
    with pytest.raises(ObjectError, match=r"document 0: unknown: unknown field|unknown field"):
        one({**svc(), "unknown": 1})


def slice_doc(**body) -> dict:
    doc = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "vm-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "legacy"}},
           "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.5"], "nodeName": "node1"}],
           "ports": [{"name": "http", "port": 8080}]}
    return {**doc, **body}


def test_endpoint_slices_keep_their_body_at_the_top_level():
    piece = one(slice_doc())
    assert (piece.service, piece.endpoints[0].address, piece.endpoints[0].ready, piece.ports[0].port) == (
        "legacy", "192.0.2.5", True, 8080)
    assert one(piece.to_dict()) == piece  # what is stored reads back equal
    with pytest.raises(ObjectError, match="kubernetes.io/service-name: required"):
        one(slice_doc(metadata={"name": "x", "namespace": "default"}))
    with pytest.raises(ObjectError, match=r"endpoints\[0\]\.addresses\[0\]: 192\.0\.2\.5 is not an IPv6"):
        one(slice_doc(addressType="IPv6"))
    with pytest.raises(ObjectError, match="addressType: 'FQDN' is not one of"):
        one(slice_doc(addressType="FQDN"))
    with pytest.raises(ObjectError, match=r"endpoints\[0\]\.addresses: give exactly one"):
        one(slice_doc(endpoints=[{"addresses": ["192.0.2.5", "192.0.2.6"]}]))
    with pytest.raises(ObjectError, match="spec: unknown field"):
        one(slice_doc(spec={}))


# -- allocation ---------------------------------------------------------------------


def test_cluster_ips_come_from_the_service_cidr_above_the_static_band(store):
    services = applied(store, *(svc(f"s{i}") for i in range(40)))
    net = ipaddress.ip_network("10.96.0.0/16")
    addrs = [ipaddress.ip_address(s.cluster_ip) for s in services]
    assert len(set(addrs)) == 40 and all(a in net for a in addrs)
    assert all(int(a) - int(net.network_address) >= 256 for a in addrs)  # the static band stays free
    for s in services:
        claim = ServiceClaim.from_json(store.get(keys.cluster_ip(s.cluster_ip)).json())
        assert claim.service == s.ref


def test_a_requested_address_is_checked_and_claimed(store):
    (dns,) = applied(store, svc("dns", "kube-system", clusterIP="10.96.0.10"))
    assert dns.cluster_ip == "10.96.0.10"
    with pytest.raises(ObjectError, match="10.96.0.10 is already allocated to service kube-system/dns"):
        applied(store, svc("other", clusterIP="10.96.0.10"))
    with pytest.raises(ObjectError, match="not a usable address of the service CIDR"):
        applied(store, svc("far", clusterIP="10.97.0.1"))
    with pytest.raises(ObjectError, match="not a usable address"):
        applied(store, svc("net", clusterIP="10.96.0.0"))


def test_reapply_keeps_the_address_and_a_change_is_refused(store):
    (first,) = applied(store, svc())
    (again,) = applied(store, svc(ports=[{"port": 81}]))
    assert again.cluster_ip == first.cluster_ip
    with pytest.raises(ObjectError, match="immutable"):
        applied(store, svc(clusterIP="10.96.9.9"))
    with pytest.raises(ObjectError, match="immutable"):
        applied(store, svc(clusterIP="None"))


def test_node_ports_in_range_claimed_kept_and_freed(store):
    (s,) = applied(store, svc(type="NodePort", ports=[{"name": "a", "port": 80},
                                                      {"name": "b", "port": 53, "protocol": "UDP", "nodePort": 30053}]))
    tcp, udp = s.ports
    assert 30000 <= tcp.node_port <= 32767 and udp.node_port == 30053
    assert store.get(keys.node_port("udp", 30053)) is not None
    with pytest.raises(ObjectError, match="node port 30053/UDP is already allocated to service default/web"):
        applied(store, svc("other", type="NodePort", ports=[{"port": 53, "protocol": "UDP", "nodePort": 30053}]))
    (tcp_only,) = applied(store, svc("tcp53", type="NodePort", ports=[{"port": 53, "nodePort": 30053}]))
    assert tcp_only.ports[0].node_port == 30053  # TCP and UDP ports are separate claims
    with pytest.raises(ObjectError, match="outside the node port range 30000-32767"):
        applied(store, svc("low", type="NodePort", ports=[{"port": 80, "nodePort": 8080}]))
    (kept,) = applied(store, svc(type="NodePort", ports=[{"name": "a", "port": 80},
                                                         {"name": "b", "port": 53, "protocol": "UDP"}]))
    assert [p.node_port for p in kept.ports] == [tcp.node_port, 30053]
    applied(store, svc())  # back to ClusterIP: its node ports are freed, its address kept
    assert store.get(keys.node_port("tcp", tcp.node_port)) is None
    assert store.get(keys.node_port("udp", 30053)) is None
    repo.delete(store, parse_documents([svc(), svc("tcp53")]))
    assert store.list(keys.CLUSTER_IPS) == [] and store.list(keys.NODE_PORTS) == []


def test_settings_from_the_store_give_the_ranges(store):
    store.put(keys.SERVICE_SETTINGS, ServiceSettings("10.100.0.0/28", (31000, 31001)).encode())
    services = applied(store, *(svc(f"s{i}", type="NodePort") for i in range(2)))
    assert {s.ports[0].node_port for s in services} == {31000, 31001}
    assert all(ipaddress.ip_address(s.cluster_ip) in ipaddress.ip_network("10.100.0.0/28") for s in services)
    with pytest.raises(ObjectError, match="every node port of 31000-31001 is taken"):
        applied(store, svc("s2", type="NodePort"))
    many = applied(store, *(svc(f"c{i}") for i in range(12)))  # 14 usable addresses in a /28
    assert len({s.cluster_ip for s in many + services}) == 14
    with pytest.raises(ObjectError, match="service CIDR 10.100.0.0/28 is full"):
        applied(store, svc("c12"))


@pytest.mark.parametrize("cidr", ["127.0.0.0/16", "169.254.0.0/16", "10.0.0.0/29", "0.0.0.0/0"])
def test_bad_settings_are_refused(cidr):
    with pytest.raises(InvalidConfig):
        ServiceSettings(cidr)


def test_racing_applies_never_share_an_address(tmp_path):
    """Eight writers on one SQLite file, a /27 with 30 addresses for 24 services."""
    path = tmp_path / "store.db"
    with open_store(str(path), create=True) as s:
        s.put(keys.SERVICE_SETTINGS, ServiceSettings("10.100.0.0/27").encode())
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with open_store(str(path)) as s:
                for i in range(3):
                    repo.apply(s, parse_documents([svc(f"w{n}-{i}")]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with open_store(str(path)) as s:
        addrs = [e.json()["spec"]["clusterIP"] for e in s.list(keys.SERVICES)]
        assert len(addrs) == 24 and len(set(addrs)) == 24
        assert len(s.list(keys.CLUSTER_IPS)) == 24


def test_a_damaged_manifest_can_still_be_deleted(store):
    (s,) = applied(store, svc(type="NodePort"))
    store.put(s.key, '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},'
                     ' "spec": {"ports": "broken"}}')
    repo.delete(store, parse_documents([svc()]))
    assert store.list(keys.CLUSTER_IPS) == [] and store.list(keys.NODE_PORTS) == []


# -- backends and describe -------------------------------------------------------------


def pod(name: str, ip: str, labels: dict, ports=(), node: str = "node0") -> PodRecord:
    return PodRecord("default", name, node, (ip,), labels, tuple(ports))


def test_named_target_ports_resolve_per_pod():
    service = one(svc(selector={"app": "web"}, ports=[{"port": 80, "targetPort": "http"}]))
    pods = [pod("a", "10.244.0.2", {"app": "web"}, [{"name": "http", "port": 8080, "protocol": "TCP"}]),
            pod("b", "10.244.1.2", {"app": "web"}, [{"name": "http", "port": 9090, "protocol": "TCP"}], "node1"),
            pod("c", "10.244.1.3", {"app": "web"}),  # no such port: not a backend
            pod("d", "10.244.1.4", {"app": "db"}, [{"name": "http", "port": 80, "protocol": "TCP"}])]
    got = backing(service, service.ports[0], pods, [], {"default/b": False})
    assert [(b.ip, b.port, b.ready, b.node) for b in got] == [
        ("10.244.0.2", 8080, True, "node0"), ("10.244.1.2", 9090, False, "node1")]


def test_describe_lists_backends_with_node_and_readiness(store):
    repo.apply(store, parse_documents([svc("legacy", ports=[{"name": "http", "port": 80}]), slice_doc(
        endpoints=[{"addresses": ["192.0.2.5"], "nodeName": "node1"},
                   {"addresses": ["192.0.2.6"], "conditions": {"ready": False}}])]))
    out = describe(store, lookup("svc"), "legacy", "default")
    ip = out["object"]["spec"]["clusterIP"]
    assert out["details"][:4] == [["IP Family Policy", "SingleStack"], ["IP Families", "IPv4"], ["IP", ip],
                                  ["IPs", ip]]
    assert out["details"][4:] == [["Endpoints of http/TCP", [
        "192.0.2.5:8080  ready  node node1  slice default/vm-1",
        "192.0.2.6:8080  not ready  node -  slice default/vm-1"]]]
    assert SERVICE.columns[1].value(out["object"]) == out["object"]["spec"]["clusterIP"]


def test_a_thousand_services_in_one_apply(store):
    text = "\n---\n".join(yaml.safe_dump(svc(f"s{i}", type="NodePort")) for i in range(1000))
    changes = repo.apply(store, parse_documents(yaml.safe_load_all(text)))
    assert len(changes) == 1000
    assert len({e.key for e in store.list(keys.CLUSTER_IPS)}) == 1000
    assert len({e.key for e in store.list(keys.NODE_PORTS)}) == 1000

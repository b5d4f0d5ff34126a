"""Cluster DNS without root: the zone from services and pods (dns/cluster.py), SRV on the
wire (dns/answer.py), the CNI result's search list (cni/config.py conf_dns), and the
lab's DNS probe (observe/probe.py) against a real server on 127.0.0.1."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, DNSRecord

from podnet import keys
from podnet.cni.config import conf_dns
from podnet.dns.answer import Answerer
from podnet.dns.cluster import ZoneCache, build_cluster_zone, dashed
from podnet.dns.server import DnsServer
from podnet.errors import InvalidConfig
from podnet.model.cluster import NodeLease
from podnet.model.policy import PodRecord
from podnet.model.service import Readiness
from podnet.objects.registry import parse_documents
from podnet.observe import probe

PORTS = ({"name": "http", "port": 8080, "protocol": "TCP"},)


def objects(*docs):
    return parse_documents([{"apiVersion": doc.pop("apiVersion", "v1"), **doc} for doc in docs])


def manifest(name, namespace="default", **spec):
    spec.setdefault("selector", {"app": "web"})
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": "http"}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def service(name, namespace="default", **spec):
    (svc,) = objects(manifest(name, namespace, **spec))
    return svc


PODS = [PodRecord("default", "a", "n0", ("10.244.0.2",), {"app": "web"}, PORTS),
        PodRecord("default", "b", "n1", ("10.244.1.2",), {"app": "web"}, PORTS),
        PodRecord("other", "c", "n1", ("10.244.1.9",), {"app": "web"}, PORTS)]


def zone(*services, pods=PODS, slices=(), ready=None):
    return build_cluster_zone("cluster.local", services, pods, slices, ready or {},
                              ["10.96.0.0/16", "10.244.0.0/16"])


def test_a_service_answers_with_its_cluster_ip_srv_and_ptr():
    z = zone(service("web", clusterIP="10.96.0.20",
                     ports=[{"name": "http", "port": 80, "targetPort": "http"}, {"name": "x", "port": 81, "protocol": "UDP"}]))
    assert z.lookup("Web.Default.svc.cluster.local.", "A") == ["10.96.0.20"]
    assert z.lookup("web.default.svc.cluster.local", "AAAA") == []  # exists, no IPv6 address: NODATA
    assert z.lookup("_http._tcp.web.default.svc.cluster.local", "SRV") == ["0 100 80 web.default.svc.cluster.local."]
    assert z.lookup("_x._udp.web.default.svc.cluster.local", "SRV") == ["0 100 81 web.default.svc.cluster.local."]
    assert z.lookup("_x._tcp.web.default.svc.cluster.local", "SRV") is None
    assert z.lookup("20.0.96.10.in-addr.arpa", "PTR") == ["web.default.svc.cluster.local"]
    assert z.lookup("web.other.svc.cluster.local", "A") is None


def test_names_on_the_way_exist_and_the_rest_of_the_zone_does_not():
    z = zone(service("web", clusterIP="10.96.0.20"))
    for name in ("cluster.local", "svc.cluster.local", "default.svc.cluster.local", "pod.cluster.local"):
        assert z.lookup(name, "A") == [], name
    assert z.lookup("nope.svc.cluster.local", "A") is None
    assert z.is_local("nope.svc.cluster.local") and z.is_local("cluster.local.")
    assert z.is_local("99.99.96.10.in-addr.arpa") and z.is_local("9.9.244.10.in-addr.arpa")
    assert not z.is_local("example.com") and not z.is_local("1.2.0.192.in-addr.arpa")


def test_headless_answers_the_ready_endpoints_each_by_its_own_name():
    z = zone(service("hl", clusterIP="None"), ready={"default/b": False})
    base = "hl.default.svc.cluster.local"
    assert z.lookup(base, "A") == ["10.244.0.2"]  # b is not ready; c is in another namespace
    assert z.lookup(f"10-244-0-2.{base}", "A") == ["10.244.0.2"]
    assert z.lookup(f"_http._tcp.{base}", "SRV") == [f"0 100 8080 10-244-0-2.{base}."]
    assert z.lookup("2.0.244.10.in-addr.arpa", "PTR") == [f"10-244-0-2.{base}"]
    both = zone(service("hl", clusterIP="None"))
    assert sorted(both.lookup(base, "A")) == ["10.244.0.2", "10.244.1.2"]
    assert all(v.startswith("0 50 8080 ") for v in both.lookup(f"_http._tcp.{base}", "SRV"))


def test_headless_service_of_endpoint_slices_uses_their_hostnames():
    svc = service("vm", clusterIP="None", selector=None, ports=[{"name": "ssh", "port": 22}])
    (piece,) = objects({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": "vm-1", "namespace": "default",
                                     "labels": {"kubernetes.io/service-name": "vm"}},
                        "addressType": "IPv4", "ports": [{"name": "ssh", "port": 22, "protocol": "TCP"}],
                        "endpoints": [{"addresses": ["192.0.2.5"], "hostname": "db"},
                                      {"addresses": ["192.0.2.6"], "conditions": {"ready": False}}]})
    z = zone(svc, slices=[piece])
    assert z.lookup("vm.default.svc.cluster.local", "A") == ["192.0.2.5"]
    assert z.lookup("db.vm.default.svc.cluster.local", "A") == ["192.0.2.5"]


def test_pod_records_answer_only_addresses_pods_of_that_namespace_hold():
    z = zone()
    assert z.lookup("10-244-1-9.other.pod.cluster.local", "A") == ["10.244.1.9"]
    assert z.lookup("10-244-1-9.default.pod.cluster.local", "A") is None
    assert dashed("fd00::5") == "fd00--5"


def test_srv_answers_go_on_the_wire():
    z = zone(service("web", clusterIP="10.96.0.20"))
    answerer = Answerer(z.lookup, is_local=z.is_local)
    query = DNSRecord.question("_http._tcp.web.default.svc.cluster.local", "SRV")
    reply = DNSRecord.parse(answerer.answer(bytes(query.pack()), "10.244.0.2", udp=True).payload)
    (rr,) = reply.rr
    assert rr.rtype == QTYPE.SRV and (rr.rdata.port, str(rr.rdata.target)) == (80, "web.default.svc.cluster.local.")
    missing = DNSRecord.parse(answerer.answer(bytes(DNSRecord.question("x.svc.cluster.local").pack()),
                                              None, udp=True).payload)
    assert missing.header.rcode == 3 and missing.header.aa == 1


def test_cni_result_search_list_follows_the_pod_namespace():
    conf = {"dns": {"nameservers": ["10.96.0.10"]}, "clusterDomain": "cluster.local"}
    assert conf_dns(conf, {"K8S_POD_NAMESPACE": "team-a"}) == {
        "nameservers": ["10.96.0.10"], "options": ["ndots:5"],
        "search": ["team-a.svc.cluster.local", "svc.cluster.local", "cluster.local"]}
    assert conf_dns(conf, {})["search"] == ["svc.cluster.local", "cluster.local"]
    assert conf_dns(conf, {"K8S_POD_NAMESPACE": "Bad_NS"})["search"] == ["svc.cluster.local", "cluster.local"]
    kept = conf_dns({**conf, "dns": {"nameservers": ["10.96.0.10"], "search": ["corp.example"], "options": ["ndots:2"]}},
                    {"K8S_POD_NAMESPACE": "x"})
    assert kept["search"][-1] == "corp.example" and kept["options"] == ["ndots:2"]
    assert conf_dns({"dns": {"nameservers": ["1.1.1.1"]}}, {"K8S_POD_NAMESPACE": "x"}) == {"nameservers": ["1.1.1.1"]}
    with pytest.raises(InvalidConfig, match="clusterDomain"):
        conf_dns({"clusterDomain": "bad domain"}, {})


@pytest.mark.parametrize("tcp", [False, True])
def test_the_lab_probe_reads_real_answers(tcp):
    z = zone(service("web", clusterIP="10.96.0.20"), service("hl", clusterIP="None"))
    with DnsServer("127.0.0.1", 0, z.lookup, is_local=z.is_local) as server:
        def ask(name, qtype="A"):
            return probe.dns("127.0.0.1", server.port, name, qtype, 2.0, tcp)[1]

        assert ask("web.default.svc.cluster.local") == "answer 10.96.0.20"
        assert ask("hl.default.svc.cluster.local") == "answer 10.244.0.2,10.244.1.2"
        assert ask("_http._tcp.web.default.svc.cluster.local", "SRV") == \
            "answer 0 100 80 web.default.svc.cluster.local"
        assert ask("20.0.96.10.in-addr.arpa", "PTR") == "answer web.default.svc.cluster.local"
        assert ask("nope.default.svc.cluster.local") == "NXDOMAIN"
        assert ask("example.com") == "REFUSED"


def test_the_zone_kept_change_by_change_equals_one_built_from_scratch():
    """ZoneCache sets again only what a change touched; after every step its records
    are those of a zone built from all the objects at once (with the same readiness:
    judged by the pod's node, and never while that node's lease is gone)."""
    cache = ZoneCache("cluster.local", ["10.96.0.0/16"])
    lease = NodeLease("n1", "10.244.1.0/24", "172.31.0.11", "eth0", "vxlan", {}, 0.0).encode()
    steps = [
        (keys.object_key(keys.SERVICES, "web", "default"), manifest("web", clusterIP="10.96.0.20")),
        (keys.object_key(keys.SERVICES, "hl", "default"), manifest("hl", clusterIP="None")),
        (keys.pod("default", "a"), PODS[0]),
        (keys.pod("default", "b"), PODS[1]),  # on n1, which has no lease yet: not in hl
        (keys.node("n1"), lease),
        (keys.readiness("default", "a"), Readiness(False, "n0")),
        (keys.pod("default", "b"), PodRecord("default", "b", "n1", ("10.244.1.7",), {"app": "web"}, PORTS)),
        (keys.node("n1"), None),  # the lease expired
        (keys.readiness("default", "a"), None),
        (keys.object_key(keys.SERVICES, "web", "default"), None),
        (keys.pod("default", "a"), None),
    ]
    for revision, (key, value) in enumerate(steps, start=1):
        if value is None:
            cache.delete(key, revision)
        else:
            cache.put(key, value.encode() if isinstance(value, PodRecord | Readiness) else value, revision)
        cache.refresh()
        pods = list(cache.pods.values())
        ready = {p.ref: cache.ready(p) for p in pods}
        whole = build_cluster_zone("cluster.local", cache.services.values(), pods, [], ready)
        assert cache.zone.records() == whole.records(), (key, value)
    assert cache.zone.lookup("hl.default.svc.cluster.local", "A") == []  # b's node is gone, a is deleted


def test_a_headless_service_drops_the_pods_of_a_node_whose_lease_went():
    cache = ZoneCache("cluster.local")
    cache.put(keys.object_key(keys.SERVICES, "hl", "default"), manifest("hl", clusterIP="None"), 1)
    cache.put(keys.pod("default", "b"), PODS[1].encode(), 2)
    cache.put(keys.node("n1"), "{}", 3)
    cache.refresh()
    assert cache.zone.lookup("hl.default.svc.cluster.local", "A") == ["10.244.1.2"]
    cache.put(keys.node("n1"), "{}", 4)  # renewed
    assert cache.refresh() == 0
    cache.delete(keys.node("n1"), 5)
    cache.refresh()
    assert cache.zone.lookup("hl.default.svc.cluster.local", "A") == []


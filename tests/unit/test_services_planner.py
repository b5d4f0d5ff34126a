"""One node's plan from the cluster's services (services/planner.py): pure."""

from __future__ import annotations

from podnet.model.policy import PodRecord
from podnet.objects.registry import parse_documents
from podnet.services.plan import Backend
from podnet.services.planner import node_plan, port_id


def service(name: str = "web", **spec):
    spec.setdefault("ports", [{"port": 80, "targetPort": 8080}])
    spec.setdefault("selector", {"app": "web"})
    spec.setdefault("clusterIP", "10.96.1.1")
    (svc,) = parse_documents([{"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": name, "namespace": "default"}, "spec": spec}])
    return svc


PODS = [PodRecord("default", "a", "node0", ("10.244.0.2",), {"app": "web"}),
        PodRecord("default", "b", "node1", ("10.244.1.2",), {"app": "web"}),
        PodRecord("default", "c", "node1", ("10.244.1.3",), {"app": "web"}),
        PodRecord("other", "d", "node0", ("10.244.0.9",), {"app": "web"})]


def plan(*services, ready=None, node="node0"):
    return node_plan(services, PODS, [], ready or {}, node, ("172.31.0.1",), ("10.244.0.0/16",))


def test_ready_backends_of_the_namespace_with_their_locality():
    (port,) = plan(service(), ready={"default/c": False}).services
    assert port.backends == (Backend("10.244.0.2", 8080, True), Backend("10.244.1.2", 8080, False))
    assert (port.protocol, port.port, port.cluster_ips, port.ref) == ("tcp", 80, ("10.96.1.1",), "default/web:80")
    (seen_from_node1,) = plan(service(), node="node1").services
    assert [b.local for b in seen_from_node1.backends] == [False, True, True]


def test_headless_and_unallocated_services_are_not_planned():
    assert plan(service(clusterIP="None")).services == ()
    assert plan(service(clusterIP=None)).services == ()


def test_policies_affinity_and_external_addresses_carry_over():
    svc = service(type="LoadBalancer", externalIPs=["192.0.2.9", "2001:db8::9"], externalTrafficPolicy="Local",
                  internalTrafficPolicy="Local", sessionAffinity="ClientIP",
                  ports=[{"port": 80, "nodePort": 30080}])
    (port,) = plan(svc).services
    assert (port.node_port, port.external_ips, port.external_local, port.internal_local, port.affinity_timeout) == (
        30080, ("192.0.2.9",), True, True, 10800)  # an IPv6 external IP is not for an IPv4 service


def test_ids_are_stable_distinct_and_sorted():
    first = plan(service("a"), service("b", clusterIP="10.96.1.2"))
    again = plan(service("b", clusterIP="10.96.1.2"), service("a"))
    assert first == again
    ids = [p.id for p in first.services]
    assert len(set(ids)) == 2 and ids == sorted(ids)
    assert all(len(i) == 16 and set(i) <= set("0123456789abcdef") for i in ids)
    svc = service("a")
    assert port_id(svc, svc.ports[0]) in ids

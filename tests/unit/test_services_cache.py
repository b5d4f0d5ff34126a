"""The incremental plan (services/cache.py) against planner.node_plan from scratch: pure.

Random sequences of stored objects written and deleted (pods, their readiness,
services with and without selectors, endpoint slices, malformed records) must give,
after every refresh, the very plan a full planning of the same objects gives, the same
checksum, the ids of exactly the ports that changed, and the unchanged ports as the
same objects."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnet import keys
from podnet.errors import PodnetError
from podnet.model.policy import PodRecord
from podnet.model.probe import parse_probe
from podnet.model.service import Readiness
from podnet.services.cache import PlanCache
from podnet.services.endpoints import readiness
from podnet.services.generation import plan_generation
from podnet.services.kinds import read_service, read_slice
from podnet.services.planner import node_plan
from podnet.store.base import Entry

NODE, NODE_IPS, CIDRS = "node0", ("172.31.0.1",), ("10.244.0.0/16",)
NAMESPACES = ("a", "b")
LABELS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=2)
SELECTORS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), min_size=1, max_size=2)
IPS = ["10.244.0.2", "10.244.0.3", "10.244.1.2", "fd00:244::2"]
PROBE = parse_probe({"tcpSocket": {"port": 80}})


def service_doc(ns: str, name: str, selector: dict | None, cluster_ip: str, target: int | str, udp: bool,
                two: bool) -> dict:
    ports = [{"name": "web", "port": 80, "targetPort": target, "protocol": "UDP" if udp else "TCP"}]
    if two:
        ports.append({"name": "alt", "port": 81, "targetPort": 8081})
    spec: dict = {"clusterIP": cluster_ip, "ports": ports}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


@st.composite
def writes(draw) -> tuple[str, str | None]:
    """One change: (key, stored text), or (key, None) for a delete."""
    ns = draw(st.sampled_from(NAMESPACES[:1] * 3 + NAMESPACES[1:]))
    kind = draw(st.sampled_from(["pod", "pod", "readiness", "service", "slice"]))
    if kind == "pod":
        name = draw(st.sampled_from(["p0", "p1", "p2", "p3"]))
        key = keys.pod(ns, name)
        ports = draw(st.sampled_from([(), ({"name": "http", "port": 8080},), ({"name": "http", "port": 8090},),
                                      ({"name": "http", "port": 8080, "protocol": "UDP"},)]))
        text = PodRecord(ns, name, draw(st.sampled_from(["node0", "node1"])),
                         tuple(draw(st.lists(st.sampled_from(IPS), max_size=2, unique=True))), draw(LABELS), ports,
                         PROBE if draw(st.booleans()) else None).encode()
    elif kind == "readiness":
        key = keys.readiness(ns, draw(st.sampled_from(["p0", "p1", "p2", "p9"])))
        text = Readiness(draw(st.booleans()), "node0").encode()
    elif kind == "service":
        name = draw(st.sampled_from(["s0", "s0", "s1", "s2"]))
        key = keys.object_key(keys.SERVICES, name, ns)
        selector = draw(st.none() | SELECTORS)
        doc = service_doc(ns, draw(st.sampled_from([name, name, name, "s9"])),  # s9: stored under another name
                          selector, draw(st.sampled_from(["10.96.0.1", "10.96.0.2", "fd00:96::1", "None"])),
                          draw(st.sampled_from([8080, "http"])), draw(st.booleans()), draw(st.booleans()))
        text = json.dumps(doc)
    else:
        name = draw(st.sampled_from(["e0", "e1"]))
        key = keys.object_key(keys.ENDPOINT_SLICES, name, ns)
        endpoints = [{"addresses": [ip], "conditions": {"ready": draw(st.booleans())},
                      "nodeName": draw(st.sampled_from(["node0", "node1"]))}
                     for ip in draw(st.lists(st.sampled_from(IPS[:3]), min_size=1, max_size=3, unique=True))]
        text = json.dumps({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                           "metadata": {"name": name, "namespace": ns,
                                        "labels": {"kubernetes.io/service-name": draw(st.sampled_from(["s0", "s0", "s1"]))}},
                           "addressType": "IPv4", "endpoints": endpoints,
                           "ports": [{"name": "web", "port": draw(st.sampled_from([8080, 9090]))}]})
    how = draw(st.sampled_from(["put", "put", "put", "delete", "bad"]))
    if how == "delete":
        return key, None
    return key, (text if how == "put" else draw(st.sampled_from(["{not json", '{"apiVersion": "v1"}'])))


def _slice(name: str, service: str, ips: list[str], port: int = 8080) -> str:
    return json.dumps({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": name, "namespace": "a", "labels": {"kubernetes.io/service-name": service}},
                       "addressType": "IPv4", "ports": [{"name": "web", "port": port}],
                       "endpoints": [{"addresses": [ip], "nodeName": "node1"} for ip in ips]})


# where every example starts: each kind of input already backs something
BASE = [
    (keys.object_key(keys.SERVICES, "s0", "a"), json.dumps(service_doc("a", "s0", None, "10.96.0.1", 8080, False, False))),
    (keys.object_key(keys.SERVICES, "s1", "a"), json.dumps(service_doc("a", "s1", {"app": "x"}, "10.96.0.2", "http",
                                                                        False, True))),
    (keys.object_key(keys.ENDPOINT_SLICES, "e0", "a"), _slice("e0", "s0", ["10.244.1.2", "10.244.0.3"])),
    (keys.pod("a", "p0"), PodRecord("a", "p0", "node0", ("10.244.0.2",), {"app": "x"},
                                    ({"name": "http", "port": 8080},)).encode()),
    (keys.pod("a", "p1"), PodRecord("a", "p1", "node1", ("10.244.1.2",), {"app": "x", "tier": "y"},
                                    ({"name": "http", "port": 8090},), PROBE).encode()),
    (keys.readiness("a", "p1"), Readiness(True, "node1").encode()),
]


def from_scratch(stored: dict[str, str]):
    """What the agent planned before the cache: parse everything, plan everything."""
    return _from_scratch(stored)[0]


def _from_scratch(stored: dict[str, str]):
    """The plan from scratch, and the keys whose records it could read (one parse of each)."""
    services, slices, pods, judged, valid = [], [], [], {}, set()
    for key, text in stored.items():
        try:
            raw = json.loads(text)
            if key.startswith(keys.SERVICES):
                svc = read_service(raw, key)
                if svc.key != key:  # the cache refuses a service stored under another name
                    continue
                services.append(svc)
            elif key.startswith(keys.ENDPOINT_SLICES):
                slices.append(read_slice(raw, key))
            elif key.startswith(keys.PODS):
                pods.append(PodRecord.from_json(raw, key))
            else:
                judged[keys.object_ref(keys.READINESS, key)] = Readiness.from_json(raw, key).ready
        except (PodnetError, ValueError):
            continue
        valid.add(key)
    return node_plan(services, pods, slices, readiness(pods, judged), NODE, NODE_IPS, CIDRS), valid


def fresh() -> PlanCache:
    cache = PlanCache(NODE, CIDRS)
    cache.node_ips = NODE_IPS
    return cache


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(writes(), min_size=1, max_size=4), min_size=1, max_size=12))
def test_every_refresh_gives_the_plan_a_full_planning_gives(batches) -> None:
    cache, stored, revision = fresh(), {}, 0
    before = cache.plan()
    for batch in [BASE, *batches]:
        for key, text in batch:  # several changes, then one refresh (one watch wake-up)
            revision += 1
            if text is None:
                stored.pop(key, None)
                cache.delete(key, revision)
            else:
                stored[key] = text
                cache.put(key, text, revision)
        changed = cache.refresh()
        after = cache.plan()
        expected, valid = _from_scratch(stored)
        assert after == expected
        assert cache.generation() == plan_generation(after)
        old, new = {p.id: p for p in before.services}, {p.id: p for p in after.services}
        assert changed >= {i for i in {**old, **new} if old.get(i) != new.get(i)}
        assert all(new[i] is old[i] for i in new if i in old and i not in changed)  # kept: the same object
        assert all(old.get(i) != new.get(i) for i in changed)  # nothing reported that did not change
        assert set(cache.errors) == set(stored) - valid
        before = after


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(writes(), max_size=15), st.lists(writes(), max_size=15))
def test_a_listing_after_missed_changes_catches_up(first, missed) -> None:
    """`sync` (start, periodic pass, after a compacted watch) gives what the store holds,
    whatever the cache saw before."""
    cache, stored = fresh(), {}
    revisions: dict[str, int] = {}
    for n, (key, text) in enumerate([*first, *missed], start=1):
        if text is None:
            stored.pop(key, None)
            revisions.pop(key, None)
        else:
            stored[key], revisions[key] = text, n
        if n <= len(first):  # the cache saw only the first ones
            cache.delete(key, n) if text is None else cache.put(key, text, n)
    cache.refresh()
    for prefix in (keys.SERVICES, keys.ENDPOINT_SLICES, keys.PODS, keys.READINESS):
        cache.sync(prefix, [Entry(k, stored[k], revisions[k], revisions[k]) for k in sorted(stored)
                            if k.startswith(prefix)])
    cache.refresh()
    assert cache.plan() == from_scratch(stored)


def test_a_replayed_older_event_changes_nothing() -> None:
    cache = fresh()
    svc = json.dumps(service_doc("a", "s0", {"app": "x"}, "10.96.0.1", 8080, False, False))
    pod = PodRecord("a", "p0", "node0", ("10.244.0.2",), {"app": "x"})
    cache.put(keys.object_key(keys.SERVICES, "s0", "a"), svc, 1)
    cache.put(keys.pod("a", "p0"), pod.encode(), 5)
    cache.put(keys.pod("a", "p0"), PodRecord("a", "p0", "node0", ("10.244.0.3",), {"app": "x"}).encode(), 4)
    cache.delete(keys.pod("a", "p0"), 3)
    cache.refresh()
    (port,) = cache.plan().services
    assert [b.ip for b in port.backends] == ["10.244.0.2"]


def test_a_pod_change_plans_only_the_services_selecting_it() -> None:
    cache = fresh()
    for i in range(50):
        doc = service_doc("a", f"s{i}", {"app": f"x{i}"}, f"10.96.0.{i + 1}", 8080, False, False)
        cache.put(keys.object_key(keys.SERVICES, f"s{i}", "a"), json.dumps(doc), i + 1)
    for i in range(50):
        cache.put(keys.pod("a", f"p{i}"), PodRecord("a", f"p{i}", "node1", (f"10.244.1.{i + 1}",),
                                                    {"app": f"x{i}"}).encode(), 100 + i)
    assert len(cache.refresh()) == 50
    planned = []
    real = cache._plan_service
    cache._plan_service = lambda svc: planned.append(svc and svc.name) or real(svc)  # type: ignore[method-assign]
    cache.put(keys.pod("a", "p7"), PodRecord("a", "p7", "node1", ("10.244.1.7",), {"app": "x8"}).encode(), 200)
    changed = cache.refresh()
    assert sorted(planned) == ["s7", "s8"] and len(changed) == 2


def test_the_checksum_follows_every_field_and_not_the_order() -> None:
    from dataclasses import replace

    from podnet.services.plan import Backend, NodePlan, ServicePort

    a = ServicePort("a", "ns/a:80", "tcp", 80, ("10.96.0.1",), backends=(Backend("10.244.0.2", 80),))
    b = replace(a, id="b", ref="ns/b:80", cluster_ips=("10.96.0.2",))
    base = NodePlan(NODE_IPS, CIDRS, (a, b))
    assert plan_generation(base) == plan_generation(NodePlan(NODE_IPS, CIDRS, (b, a)))
    variants = [replace(a, **change) for change in (
        {"ref": "ns/a:http"}, {"port": 81}, {"protocol": "udp"}, {"node_port": 30001},
        {"external_ips": ("192.0.2.1",)}, {"backends": ()}, {"backends": (Backend("10.244.0.2", 80, True),)},
        {"affinity_timeout": 10}, {"external_local": True}, {"internal_local": True})]
    seen = {plan_generation(base), plan_generation(NodePlan(("172.31.0.2",), CIDRS, (a, b))),
            plan_generation(NodePlan(NODE_IPS, (), (a, b))), *(plan_generation(NodePlan(NODE_IPS, CIDRS, (v, b)))
                                                               for v in variants)}
    assert len(seen) == 3 + len(variants)
    assert all(0 <= g < 1 << 32 for g in seen)  # one nft mark

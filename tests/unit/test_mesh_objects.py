"""The control plane's one loader of mesh objects (mesh/objects.py): what is in force
from a store, damaged records left out and named without raising, one traffic policy
per service and one PeerAuthentication per namespace, and the order of the routes
attached to a service port."""

from __future__ import annotations

from typing import Any

from podnet import keys
from podnet.mesh import model
from podnet.mesh.objects import MeshObjects, load_mesh
from podnet.objects import store as objects
from podnet.objects.registry import parse_document
from podnet.store.base import dumps
from podnet.store.memory import MemoryStore


def route(name: str, service: str = "web", port: int | None = 80, namespace: str = "shop") -> dict[str, Any]:
    parent: dict[str, Any] = {"kind": "Service", "name": service, **({"port": port} if port else {})}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"parentRefs": [parent], "rules": [{"backendRefs": [{"name": f"{service}-v1", "port": 80}]}]}}


def policy(name: str, service: str, namespace: str = "shop", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mesh.podnet.io/v1", "kind": "MeshTrafficPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"targetRef": {"kind": "Service", "name": service}, **spec}}


def authz(name: str, service: str, *accounts: str) -> dict[str, Any]:
    return {"apiVersion": "mesh.podnet.io/v1", "kind": "MeshAuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"targetRef": {"kind": "Service", "name": service},
                     "from": [{"serviceAccount": a} for a in accounts]}}


def peer(name: str, namespace: str, mode: str) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"mtls": {"mode": mode}}}


def applied(*docs: dict[str, Any]) -> MemoryStore:
    store = MemoryStore()
    objects.apply(store, [parse_document(doc, i) for i, doc in enumerate(docs)])
    return store


def put_raw(store: MemoryStore, prefix: str, namespace: str, name: str, doc: Any) -> str:
    """Write a record around apply (as a hand edit or another version might)."""
    key = keys.object_key(prefix, name, namespace)
    store.put(key, doc if isinstance(doc, str) else dumps(doc))
    return key


def test_an_empty_store_has_no_mesh_objects():
    assert load_mesh(MemoryStore()) == MeshObjects()
    assert load_mesh(MemoryStore()).mtls_mode("shop") == model.MTLS_PERMISSIVE


def test_every_kind_is_loaded_into_its_index():
    store = applied(route("web"), policy("web", "web", timeout="2s"), policy("api", "api"),
                    authz("from-front", "web", "frontend"), authz("from-batch", "web", "batch"),
                    authz("api", "api", "web"), peer("default", "shop", "STRICT"))
    mesh = load_mesh(store)
    assert mesh.problems == ()
    assert [(r.namespace, r.name, r.service, r.port) for r in mesh.routes] == [("shop", "web", "web", 80)]
    assert {ref: (p.name, p.timeout) for ref, p in mesh.traffic.items()} == {
        ("shop", "web"): ("web", 2.0), ("shop", "api"): ("api", None)}
    assert {ref: [p.name for p in ps] for ref, ps in mesh.authz.items()} == {
        ("shop", "web"): ["from-batch", "from-front"], ("shop", "api"): ["api"]}
    assert mesh.authz[("shop", "web")][1].allowed == ("spiffe://cluster.local/ns/shop/sa/frontend",)
    assert mesh.peer_auth == {"shop": model.PeerAuthentication("shop", "default", model.MTLS_STRICT)}
    assert mesh.mtls_mode("shop") == model.MTLS_STRICT and mesh.mtls_mode("jobs") == model.MTLS_PERMISSIVE


def test_routes_for_a_service_port_come_by_name_with_the_portless_ones():
    store = applied(route("b-route"), route("a-route"), route("c-every-port", port=None),
                    route("d-other-port", port=8080), route("e-other-service", service="api"),
                    route("f-other-namespace", namespace="jobs"))
    mesh = load_mesh(store)
    assert [r.name for r in mesh.routes_for("shop", "web", 80)] == ["a-route", "b-route", "c-every-port"]
    assert [r.name for r in mesh.routes_for("shop", "web", 8080)] == ["c-every-port", "d-other-port"]
    assert [r.name for r in mesh.routes_for("shop", "api", 80)] == ["e-other-service"]
    assert [r.name for r in mesh.routes_for("jobs", "web", 80)] == ["f-other-namespace"]
    assert mesh.routes_for("shop", "db", 5432) == ()


def test_damaged_records_are_named_and_the_rest_stays_in_force():
    store = applied(route("good"), policy("web", "web"), peer("default", "shop", "STRICT"))
    bad_json = put_raw(store, keys.MESH_HTTP_ROUTES, "shop", "broken", "{not json")
    bad_weight = route("heavy")
    bad_weight["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    heavy = put_raw(store, keys.MESH_HTTP_ROUTES, "shop", "heavy", bad_weight)
    elsewhere = put_raw(store, keys.MESH_HTTP_ROUTES, "jobs", "good", route("good"))  # says namespace shop
    put_raw(store, keys.MESH_TRAFFIC_POLICIES, "shop", "zz-second", policy("zz-second", "web"))
    put_raw(store, keys.MESH_PEER_AUTHENTICATIONS, "shop", "open", peer("open", "shop", "DISABLE"))
    wrong_kind = put_raw(store, keys.MESH_AUTHORIZATION_POLICIES, "shop", "web", policy("web", "web"))

    mesh = load_mesh(store)
    assert [r.name for r in mesh.routes] == ["good"]
    assert mesh.traffic[("shop", "web")].name == "web" and mesh.peer_auth["shop"].name == "default"
    assert mesh.authz == {}
    problems = "\n".join(mesh.problems)
    assert len(mesh.problems) == 6, problems
    assert f"{bad_json}: skipped:" in problems
    assert f"{heavy}: skipped: HTTPRoute shop/heavy: spec.rules[0].backendRefs[0].weight: -1" in problems
    assert f"{elsewhere}: skipped: the manifest names {keys.object_key(keys.MESH_HTTP_ROUTES, 'good', 'shop')}" \
        in problems
    assert "MeshTrafficPolicy shop/zz-second: skipped: service web already has shop/web" in problems
    assert "PeerAuthentication shop/open: skipped: namespace shop already has shop/default" in problems
    assert f"{wrong_kind}: skipped: kind: 'MeshTrafficPolicy' where a MeshAuthorizationPolicy belongs" in problems


def test_the_first_by_name_wins_when_two_policies_reached_the_store():
    store = MemoryStore()
    put_raw(store, keys.MESH_TRAFFIC_POLICIES, "shop", "b", policy("b", "web", timeout="2s"))
    put_raw(store, keys.MESH_TRAFFIC_POLICIES, "shop", "a", policy("a", "web", timeout="1s"))
    mesh = load_mesh(store)
    assert mesh.traffic[("shop", "web")].timeout == 1.0
    assert mesh.problems == ("MeshTrafficPolicy shop/b: skipped: service web already has shop/a",)

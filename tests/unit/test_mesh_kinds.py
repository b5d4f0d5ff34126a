"""The mesh's kinds through the object registry (mesh/manifests.py, mesh/kinds.py):
every field into mesh/model.py's values, every refusal with its field path, the
canonical manifest read back to the same value, `podnet get` columns, admission of
one policy per target, and `podnet apply|get|describe|delete` of examples/mesh/
in process against a SQLite store."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from podnet.cli import main
from podnet.errors import ObjectError
from podnet.mesh import model
from podnet.mesh.durations import format_duration, parse_duration
from podnet.mesh.kinds import AUTHORIZATION_POLICY, HTTP_ROUTE, PEER_AUTHENTICATION, TRAFFIC_POLICY
from podnet.objects import store as objects
from podnet.objects.registry import lookup, parse_document
from podnet.schema.fields import Loc
from podnet.store import open_store
from podnet.store.memory import MemoryStore

EXAMPLE = Path(__file__).parents[2] / "examples" / "mesh" / "canary.yaml"

ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"team": "web"}},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
        "rules": [
            {"matches": [{"path": {"type": "Exact", "value": "/api"},
                          "headers": [{"name": "X-Canary", "value": "yes"},
                                      {"name": "user-agent", "value": "^curl/.*", "type": "RegularExpression"}],
                          "method": "POST"},
                         {"path": {"value": "/v2"}}],
             "backendRefs": [{"name": "web-v2", "port": 8080, "subset": {"version": "v2"}}],
             "timeouts": {"request": "1m30s", "backendRequest": "500ms"}},
            {"backendRefs": [{"name": "web-v1", "port": 80, "weight": 90},
                             {"name": "web-old", "namespace": "legacy", "port": 80, "weight": 0},
                             {"name": "web-v2", "port": 8080, "weight": 10}],
             "timeouts": {"request": "0s"}},
        ]}}

POLICY = {
    "apiVersion": "mesh.podnet.io/v1", "kind": "MeshTrafficPolicy",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "targetRef": {"kind": "Service", "name": "web"},
        "retries": {"attempts": 3, "perTryTimeout": "250ms", "retryOn": ["5xx", "reset"], "budgetPercent": 20},
        "timeout": "2s",
        "rateLimit": {"requestsPerSecond": 100, "burst": 20},
        "circuitBreaker": {"maxConnections": 64, "maxPendingRequests": 0},
        "outlierDetection": {"consecutive5xxErrors": 3, "interval": "2s", "baseEjectionTime": "30s"},
        "fault": {"delay": {"percent": 12.5, "fixedDelay": "100ms"}, "abort": {"httpStatus": 500}},
    }}

AUTHZ = {
    "apiVersion": "mesh.podnet.io/v1", "kind": "MeshAuthorizationPolicy",
    "metadata": {"name": "web-callers", "namespace": "shop"},
    "spec": {"targetRef": {"kind": "Service", "name": "web"}, "action": "ALLOW",
             "from": [{"identity": "spiffe://cluster.local/ns/edge/sa/gateway"},
                      {"serviceAccount": "frontend"},
                      {"serviceAccount": "batch", "namespace": "jobs"}]}}

PEER = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "shop"}, "spec": {"mtls": {"mode": "STRICT"}}}


def parse(doc: dict[str, Any]) -> Any:
    return parse_document(doc, 0)


def changed(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`doc` with the field at `path` ("spec.rules.0.timeouts") set (or removed: ...)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    at: Any = out
    for part in parents:
        at = at[int(part)] if isinstance(at, list) else at[part]
    if value is ...:
        del at[int(last) if isinstance(at, list) else last]
    elif isinstance(at, list):
        at[int(last)] = value
    else:
        at[last] = value
    return out


def refused(doc: dict[str, Any]) -> str:
    with pytest.raises(ObjectError) as caught:
        parse(doc)
    return caught.value.msg


# --- HTTPRoute ---------------------------------------------------------------------------


def test_an_http_route_reads_every_field():
    obj = parse(ROUTE)
    assert obj.kind == "HTTPRoute" and obj.key == "mesh/httproutes/shop/web" and dict(obj.labels) == {"team": "web"}
    assert obj.value == model.HTTPRoute("shop", "web", "web", 80, (
        model.RouteRule(
            (model.RouteMatch(model.PATH_EXACT, "/api", (model.HeaderMatch("x-canary", "yes"),
                                                         model.HeaderMatch("user-agent", "^curl/.*", regex=True)),
                              "POST"),
             model.RouteMatch(model.PATH_PREFIX, "/v2")),
            (model.BackendRef("web-v2", "shop", 8080, 1, (("version", "v2"),)),),
            90.0, 0.5),
        model.RouteRule(
            (model.RouteMatch(),),
            (model.BackendRef("web-v1", "shop", 80, 90), model.BackendRef("web-old", "legacy", 80, 0),
             model.BackendRef("web-v2", "shop", 8080, 10)),
            None, None)))


def test_a_route_without_port_attaches_to_every_port():
    assert parse(changed(ROUTE, "spec.parentRefs.0.port", ...)).value.port is None


@pytest.mark.parametrize(("path", "value", "message"), [
    ("spec.parentRefs", [], "spec.parentRefs: 0 given: exactly one Service is required"),
    ("spec.parentRefs", ..., "spec.parentRefs: required"),
    ("spec.parentRefs.0.kind", "Gateway", "spec.parentRefs[0].kind: 'Gateway': must be Service"),
    ("spec.parentRefs.0.group", "gateway.networking.k8s.io", "spec.parentRefs[0].group:"),
    ("spec.parentRefs.0.namespace", "other", "spec.parentRefs[0].namespace: 'other': must be the object's own"),
    ("spec.parentRefs.0.port", 0, "spec.parentRefs[0].port: 0 is not a port"),
    ("spec.parentRefs.0.sectionName", "http", "spec.parentRefs[0].sectionName: unknown field"),
    ("spec.hostnames", ["web"], "spec.hostnames: unknown field"),
    ("spec.rules", [], "spec.rules: at least one rule is required"),
    ("spec.rules.0.filters", [], "spec.rules[0].filters: unknown field"),
    ("spec.rules.0.matches.0.path.type", "RegularExpression",
     "spec.rules[0].matches[0].path.type: 'RegularExpression' is not one of PathPrefix, Exact"),
    ("spec.rules.0.matches.0.path.value", "api", "spec.rules[0].matches[0].path.value: 'api' is not a path"),
    ("spec.rules.0.matches.0.path.value", "/a b", "spec.rules[0].matches[0].path.value: '/a b' is not a path"),
    ("spec.rules.0.matches.0.method", "get", "spec.rules[0].matches[0].method: 'get' is not one of GET"),
    ("spec.rules.0.matches.0.queryParams", [], "spec.rules[0].matches[0].queryParams: unknown field"),
    ("spec.rules.0.matches.0.headers.0.name", "x canary",
     "spec.rules[0].matches[0].headers[0].name: 'x canary' is not an HTTP header name"),
    ("spec.rules.0.matches.0.headers.0.value", "a\nb", "spec.rules[0].matches[0].headers[0].value:"),
    ("spec.rules.0.matches.0.headers.0.type", "Prefix", "spec.rules[0].matches[0].headers[0].type: 'Prefix'"),
    ("spec.rules.0.matches.0.headers.1.value", "([", "spec.rules[0].matches[0].headers[1].value: '([' is not a "
                                                      "regular expression"),
    ("spec.rules.0.matches.0.headers.1.name", "X-CANARY", "spec.rules[0].matches[0].headers: a header is matched "
                                                          "twice"),
    ("spec.rules.0.backendRefs", [], "spec.rules[0].backendRefs: no backend with a weight above 0"),
    ("spec.rules.0.backendRefs.0.weight", 0, "spec.rules[0].backendRefs: no backend with a weight above 0"),
    ("spec.rules.1.backendRefs.2.weight", 1000001, "spec.rules[1].backendRefs[2].weight: 1000001 is not 0..1000000"),
    ("spec.rules.1.backendRefs.2.weight", -1, "spec.rules[1].backendRefs[2].weight: -1 is not 0..1000000"),
    ("spec.rules.1.backendRefs.2.weight", "10", "spec.rules[1].backendRefs[2].weight: '10' is not an integer"),
    ("spec.rules.1.backendRefs.1.port", ..., "spec.rules[1].backendRefs[1].port: required"),
    ("spec.rules.1.backendRefs.1.kind", "Pod", "spec.rules[1].backendRefs[1].kind: 'Pod': a backend is a Service"),
    ("spec.rules.1.backendRefs.1.name", "Web", "spec.rules[1].backendRefs[1].name: 'Web' is not a DNS label"),
    ("spec.rules.1.backendRefs.1.namespace", "a.b", "spec.rules[1].backendRefs[1].namespace: 'a.b' is not a DNS"),
    ("spec.rules.0.backendRefs.0.subset", {}, "spec.rules[0].backendRefs[0].subset: empty"),
    ("spec.rules.0.backendRefs.0.subset", {"version": "v 2"}, "spec.rules[0].backendRefs[0].subset: label value"),
    ("spec.rules.0.timeouts.backendRequest", "2m",
     "spec.rules[0].timeouts.backendRequest: 2m is longer than request 1m30s"),
    ("spec.rules.0.timeouts.request", "-1s", "spec.rules[0].timeouts.request: '-1s' is negative"),
    ("spec.rules.0.timeouts.request", "soon", "spec.rules[0].timeouts.request: 'soon' is not a duration"),
    ("spec.rules.0.timeouts.request", 5, "spec.rules[0].timeouts.request: 5 has no unit"),
    ("spec.rules.0.timeouts.idle", "1s", "spec.rules[0].timeouts.idle: unknown field"),
])
def test_a_bad_route_is_refused_naming_the_field(path, value, message):
    assert refused(changed(ROUTE, path, value)).startswith(f"HTTPRoute shop/web: {message}")


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds", "shortest"), [
    ("500ms", 0.5, "500ms"), ("2s", 2.0, "2s"), ("1m", 60.0, "1m"), ("1m30s", 90.0, "1m30s"),
    ("1.5s", 1.5, "1s500ms"), ("1h2m3s4ms", 3723.004, "1h2m3s4ms"), ("250us", 0.00025, "250us"),
    ("0.1s", 0.1, "100ms"), ("24h", 86400.0, "24h"),
])
def test_durations_read_go_and_gateway_api_text_and_write_it_back(text, seconds, shortest):
    assert parse_duration(text, Loc("d")) == seconds
    assert format_duration(seconds) == shortest and parse_duration(shortest, Loc("d")) == seconds


@pytest.mark.parametrize(("value", "message"), [
    ("-5s", "'-5s' is negative"), ("5", "'5' is not a duration"), ("5 s", "'5 s' is not a duration"),
    ("", "'' is not a duration"), ("1d", "'1d' is not a duration"), (1.5, "1.5 has no unit"),
    (None, "None is not a duration"), ("0s", "'0s' is zero"), ("24h1ms", "'24h1ms' is longer than 24h"),
])
def test_bad_durations_are_refused_with_the_field(value, message):
    with pytest.raises(ObjectError) as caught:
        parse_duration(value, Loc("MeshTrafficPolicy a/b", "spec.timeout"))
    assert caught.value.msg == f"MeshTrafficPolicy a/b: spec.timeout: {message}"


# --- MeshTrafficPolicy -------------------------------------------------------------------


def test_a_traffic_policy_reads_every_field():
    obj = parse(POLICY)
    assert obj.key == "mesh/trafficpolicies/shop/web"
    assert obj.value == model.MeshTrafficPolicy(
        "shop", "web", "web", model.Retries(3, 0.25, ("5xx", "reset"), 20.0), 2.0, model.RateLimit(100, 20),
        model.CircuitBreaker(64, 0), model.OutlierDetection(3, 2.0, 30.0), model.Fault(12.5, 0.1, 100.0, 500))


def test_a_traffic_policy_fills_in_defaults():
    spec = {"targetRef": {"kind": "Service", "name": "web"}, "retries": {}, "outlierDetection": {},
            "fault": {"abort": {"percent": 5, "httpStatus": 503}}}
    value = parse({**POLICY, "spec": spec}).value
    assert value == model.MeshTrafficPolicy("shop", "web", "web", retries=model.Retries(),
                                            outlier=model.OutlierDetection(), fault=model.Fault(abort_percent=5.0))
    bare = parse({**POLICY, "spec": {"targetRef": {"kind": "Service", "name": "web"}}}).value
    assert bare == model.MeshTrafficPolicy("shop", "web", "web")


@pytest.mark.parametrize(("path", "value", "message"), [
    ("spec", ..., "spec: must be a mapping"),
    ("spec.targetRef", ..., "spec.targetRef: required"),
    ("spec.targetRef.kind", ..., "spec.targetRef.kind: None: must be Service"),
    ("spec.targetRef.port", 80, "spec.targetRef.port: unknown field"),
    ("spec.retries.attempts", 0, "spec.retries.attempts: 0 is not 1..10"),
    ("spec.retries.attempts", 11, "spec.retries.attempts: 11 is not 1..10"),
    ("spec.retries.perTryTimeout", "fast", "spec.retries.perTryTimeout: 'fast' is not a duration"),
    ("spec.retries.retryOn", ["5xx", "timeout"], "spec.retries.retryOn[1]: 'timeout' is not one of 5xx"),
    ("spec.retries.retryOn", ["5xx", "5xx"], "spec.retries.retryOn: give each condition once"),
    ("spec.retries.retryOn", [], "spec.retries.retryOn: give each condition once, at least one"),
    ("spec.retries.budgetPercent", 0, "spec.retries.budgetPercent: 0 is not 1..100"),
    ("spec.retries.budgetPercent", 101, "spec.retries.budgetPercent: 101 is not 1..100"),
    ("spec.timeout", "0s", "spec.timeout: '0s' is zero"),
    ("spec.timeout", "-2s", "spec.timeout: '-2s' is negative"),
    ("spec.rateLimit.requestsPerSecond", 0, "spec.rateLimit.requestsPerSecond: 0 is below 1"),
    ("spec.rateLimit.requestsPerSecond", ..., "spec.rateLimit.requestsPerSecond: required"),
    ("spec.rateLimit.burst", 0, "spec.rateLimit.burst: 0 is below 1"),
    ("spec.circuitBreaker", {}, "spec.circuitBreaker: empty"),
    ("spec.circuitBreaker.maxConnections", 0, "spec.circuitBreaker.maxConnections: 0 is below 1"),
    ("spec.circuitBreaker.maxPendingRequests", -1, "spec.circuitBreaker.maxPendingRequests: -1 is below 0"),
    ("spec.outlierDetection.consecutive5xxErrors", 0, "spec.outlierDetection.consecutive5xxErrors: 0 is below 1"),
    ("spec.outlierDetection.interval", "1x", "spec.outlierDetection.interval: '1x' is not a duration"),
    ("spec.outlierDetection.baseEjectionTime", "-1m", "spec.outlierDetection.baseEjectionTime: '-1m' is negative"),
    ("spec.fault", {}, "spec.fault: empty"),
    ("spec.fault.delay.percent", 100.5, "spec.fault.delay.percent: 100.5 is not 0..100"),
    ("spec.fault.delay.fixedDelay", ..., "spec.fault.delay.fixedDelay: required"),
    ("spec.fault.abort.httpStatus", 302, "spec.fault.abort.httpStatus: 302 is not 400..599"),
    ("spec.fault.abort.httpStatus", ..., "spec.fault.abort.httpStatus: required"),
    ("spec.mirror", {}, "spec.mirror: unknown field"),
])
def test_a_bad_traffic_policy_is_refused_naming_the_field(path, value, message):
    assert refused(changed(POLICY, path, value)).startswith(f"MeshTrafficPolicy shop/web: {message}")


# --- MeshAuthorizationPolicy and PeerAuthentication ------------------------------------


def test_an_authorization_policy_turns_every_caller_into_a_spiffe_id():
    obj = parse(AUTHZ)
    assert obj.key == "mesh/authorizationpolicies/shop/web-callers"
    assert obj.value == model.MeshAuthorizationPolicy("shop", "web-callers", "web", (
        "spiffe://cluster.local/ns/edge/sa/gateway", "spiffe://cluster.local/ns/shop/sa/frontend",
        "spiffe://cluster.local/ns/jobs/sa/batch"))
    assert parse(changed(AUTHZ, "spec.from", ...)).value.allowed == ()  # allow-nothing


@pytest.mark.parametrize(("path", "value", "message"), [
    ("spec.action", "DENY", "spec.action: 'DENY': only ALLOW is supported"),
    ("spec.from.0", {"identity": "spiffe://cluster.local/ns/a/sa/b", "serviceAccount": "c"},
     "spec.from[0]: give either identity or serviceAccount"),
    ("spec.from.0", {}, "spec.from[0]: give either identity or serviceAccount"),
    ("spec.from.0.identity", "https://cluster.local/ns/a/sa/b", "spec.from[0].identity: 'https://cluster.local"),
    ("spec.from.0.identity", "spiffe://cluster.local/ns/a", "spec.from[0].identity: 'spiffe://cluster.local/ns/a'"),
    ("spec.from.0.namespace", "edge", "spec.from[0].namespace: goes with serviceAccount"),
    ("spec.from.1.serviceAccount", "Front_End", "spec.from[1].serviceAccount: 'Front_End' is not a DNS label"),
    ("spec.from.2", {"serviceAccount": "frontend", "namespace": "shop"}, "spec.from: an identity is listed twice"),
    ("spec.from.2.principals", ["x"], "spec.from[2].principals: unknown field"),
    ("spec.targetRef.name", ..., "spec.targetRef.name: required"),
])
def test_a_bad_authorization_policy_is_refused_naming_the_field(path, value, message):
    assert refused(changed(AUTHZ, path, value)).startswith(f"MeshAuthorizationPolicy shop/web-callers: {message}")


def test_peer_authentication_modes_and_versions():
    assert parse(PEER).value == model.PeerAuthentication("shop", "default", model.MTLS_STRICT)
    assert parse(changed(PEER, "spec", ...)).value.mode == model.MTLS_PERMISSIVE
    older = parse(changed(PEER, "apiVersion", "security.istio.io/v1beta1"))
    assert older == parse(PEER) and older.to_dict()["apiVersion"] == "security.istio.io/v1"


@pytest.mark.parametrize(("path", "value", "message"), [
    ("spec.selector", {"matchLabels": {"app": "web"}}, "spec.selector: not supported by podnet's mesh"),
    ("spec.portLevelMtls", {"80": {"mode": "DISABLE"}}, "spec.portLevelMtls: not supported"),
    ("spec.mtls.mode", "UNSET", "spec.mtls.mode: 'UNSET' is not one of STRICT, PERMISSIVE, DISABLE"),
    ("apiVersion", "security.istio.io/v1alpha3", "apiVersion: 'security.istio.io/v1alpha3' is not the apiVersion"),
])
def test_a_bad_peer_authentication_is_refused_naming_the_field(path, value, message):
    assert message in refused(changed(PEER, path, value))


# --- the stored form, get columns and names ------------------------------------------------


@pytest.mark.parametrize("doc", [ROUTE, POLICY, AUTHZ, PEER, changed(POLICY, "spec.fault", {"delay": {
    "fixedDelay": "1s"}}), changed(ROUTE, "spec.parentRefs.0.port", ...)], ids=lambda d: d["kind"])
def test_the_stored_manifest_reads_back_to_the_same_object(doc):
    obj = parse(doc)
    stored = json.loads(json.dumps(obj.to_dict()))
    assert parse(stored) == obj and parse(stored).to_dict() == stored


def test_the_canonical_form_fills_defaults_and_keeps_labels():
    stored = parse(ROUTE).to_dict()
    assert stored["metadata"] == {"name": "web", "namespace": "shop", "labels": {"team": "web"}}
    assert stored["spec"]["rules"][1] == {
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [{"name": "web-v1", "port": 80, "weight": 90},
                        {"name": "web-old", "namespace": "legacy", "port": 80, "weight": 0},
                        {"name": "web-v2", "port": 8080, "weight": 10}]}  # "0s": no timeout
    assert parse(AUTHZ).to_dict()["spec"]["from"][1] == {"identity": "spiffe://cluster.local/ns/shop/sa/frontend"}


def columns(kind, doc) -> dict[str, Any]:
    stored = parse(doc).to_dict()
    return {column.title: column.value(stored) for column in kind.columns}


def test_get_columns():
    assert columns(HTTP_ROUTE, ROUTE) == {"PARENT": "web:80", "RULES": 2,
                                          "BACKENDS": "web-v2:1;web-v1:90,legacy/web-old:0,web-v2:10"}
    assert columns(HTTP_ROUTE, changed(ROUTE, "spec.parentRefs.0.port", ...))["PARENT"] == "web"
    assert columns(TRAFFIC_POLICY, POLICY) == {"TARGET": "web", "RETRIES": 3, "TIMEOUT": "2s", "RATE": "100/s"}
    bare = {**POLICY, "spec": {"targetRef": {"kind": "Service", "name": "api"}}}
    assert columns(TRAFFIC_POLICY, bare) == {"TARGET": "api", "RETRIES": "-", "TIMEOUT": "-", "RATE": "-"}
    assert columns(AUTHORIZATION_POLICY, AUTHZ) == {"TARGET": "web", "FROM": 3}
    assert columns(PEER_AUTHENTICATION, PEER) == {"MODE": "STRICT"}


@pytest.mark.parametrize(("name", "kind"), [
    ("httproute", HTTP_ROUTE), ("HTTPRoutes", HTTP_ROUTE), ("mtp", TRAFFIC_POLICY),
    ("meshtrafficpolicies", TRAFFIC_POLICY), ("map", AUTHORIZATION_POLICY), ("pa", PEER_AUTHENTICATION),
    ("peerauthentications", PEER_AUTHENTICATION)])
def test_the_registry_knows_the_names(name, kind):
    assert lookup(name) is kind


# --- admission: one traffic policy per service, one PeerAuthentication per namespace ---------


def test_a_second_traffic_policy_for_a_service_is_refused_naming_the_first():
    store = MemoryStore()
    objects.apply(store, [parse(POLICY)])
    second = changed(POLICY, "metadata.name", "web-more")
    with pytest.raises(ObjectError) as caught:
        objects.apply(store, [parse(second)])
    assert caught.value.msg == ("MeshTrafficPolicy shop/web-more: spec.targetRef: service shop/web already has "
                                "MeshTrafficPolicy shop/web")
    assert "podnet delete mtp shop/web" in caught.value.details
    assert [c.what for c in objects.apply(store, [parse(changed(POLICY, "spec.timeout", "3s"))])] == ["configured"]
    other = changed(changed(second, "spec.targetRef.name", "api"), "spec.timeout", "3s")
    assert [c.what for c in objects.apply(store, [parse(other)])] == ["created"]
    assert [e.key for e in store.list("mesh/trafficpolicies/")] == ["mesh/trafficpolicies/shop/web",
                                                                  "mesh/trafficpolicies/shop/web-more"]


def test_two_traffic_policies_for_one_service_in_one_file_are_refused_together():
    store = MemoryStore()
    with pytest.raises(ObjectError, match="already has MeshTrafficPolicy shop/a"):
        objects.apply(store, [parse(changed(POLICY, "metadata.name", n)) for n in ("a", "b")])
    assert store.list("mesh/") == []


def test_a_second_peer_authentication_in_a_namespace_is_refused():
    store = MemoryStore()
    objects.apply(store, [parse(PEER)])
    with pytest.raises(ObjectError, match="PeerAuthentication shop/strict: namespace shop already has "
                                          "PeerAuthentication shop/default"):
        objects.apply(store, [parse(changed(PEER, "metadata.name", "strict"))])
    elsewhere = changed(changed(PEER, "metadata.name", "strict"), "metadata.namespace", "jobs")
    assert [c.what for c in objects.apply(store, [parse(elsewhere)])] == ["created"]


# --- podnet apply|get|describe|delete of the example, against SQLite -------------------------


def run(capsys, db: str, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--store", db])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_canary_example_through_the_cli(tmp_path, capsys):
    db = str(tmp_path / "cluster.db")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}], "clusterIP": "10.96.0.20"}}
    with open_store(db) as store:
        objects.apply(store, [parse(service)])
    assert run(capsys, db, "apply", "-f", str(EXAMPLE)) == (
        0, "httproute/default/web-canary created\nmeshtrafficpolicy/default/web created\n"
           "peerauthentication/default/default created\n", "")
    assert run(capsys, db, "apply", "-f", str(EXAMPLE))[1].count("unchanged") == 3

    code, out, _ = run(capsys, db, "get", "httproutes", "-o", "json")
    (route,) = json.loads(out)
    assert code == 0 and route == parse(next(yaml.safe_load_all(EXAMPLE.read_text()))).to_dict()
    code, out, _ = run(capsys, db, "get", "httproutes")
    assert code == 0 and "web-v1:90,web-v2:10" in out and "web:80" in out
    code, out, _ = run(capsys, db, "get", "pa")
    assert code == 0 and "STRICT" in out

    code, out, _ = run(capsys, db, "describe", "httproute", "default/web-canary")
    assert code == 0 and "Kind:       HTTPRoute (gateway.networking.k8s.io/v1)" in out
    assert "Parent:     default/web  10.96.0.20:80" in out
    assert "weight 90 (90%)  default/web-v1  (no such service)" in out
    code, out, _ = run(capsys, db, "describe", "mtp", "default/web")
    assert code == 0 and "Target:     default/web  10.96.0.20:80" in out

    assert run(capsys, db, "delete", "-f", str(EXAMPLE))[1].count("deleted") == 3
    with open_store(db) as store:
        assert store.list("mesh/") == []


def test_a_refused_mesh_file_changes_nothing(tmp_path, capsys):
    db = str(tmp_path / "cluster.db")
    open_store(db).close()
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("weight: 10", "weight: -10"))
    code, out, err = run(capsys, db, "apply", "-f", str(bad))
    assert code == 1 and out == ""
    assert "HTTPRoute default/web-canary: spec.rules[0].backendRefs[1].weight: -10 is not 0..1000000" in err
    with open_store(db) as store:
        assert store.list("mesh/") == []

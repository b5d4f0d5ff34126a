"""`podnet dashboard` without a cluster: the server's routes against a fake data source
(read-only, escaping, event-stream framing, the loopback guards), the page's model
(observe/dashboard/snapshot.py), the live hub, the flow cursor, and the data source on
a real SQLite store."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from podnet import keys
from podnet.cli import main
from podnet.errors import PodnetError
from podnet.model.policy import PodRecord
from podnet.observe.dashboard import snapshot as model
from podnet.observe.dashboard.data import ClusterSource, trace_query
from podnet.observe.dashboard.hub import Hub
from podnet.observe.dashboard.server import DashboardServer, check_bind, make_server, sse_frame
from podnet.observe.flows import FlowCursor
from podnet.store import open_store

HOSTILE = '<img src=x onerror="alert(1)">&</script>'


def snap(**over: Any) -> dict[str, Any]:
    base = {"title": "lab t", "time": 1.0, "store": {"backend": "sqlite", "latency_ms": 0.3}, "counts": {},
            "degraded": [], "racks": [{"rack": 0, "nodes": ["node0"]}], "routers": [], "outside": None,
            "nodes": [{"name": "node0", "health": "ok", "lease_age_s": 3.0}], "links": [],
            "pods": [{"ref": "default/a", "node": "node0", "labels": {"note": HOSTILE}}], "services": []}
    return {**base, **over}


class FakeSource:
    """What ClusterSource answers, set by the test."""

    def __init__(self) -> None:
        self.snap = snap()
        self.pending: list[dict[str, Any]] = []
        self.traced: list[dict[str, Any]] = []
        self.trace_error: Exception | None = None
        self.lock = threading.Lock()

    def snapshot(self) -> dict[str, Any]:
        return self.snap

    def flows(self) -> list[dict[str, Any]]:
        with self.lock:
            out, self.pending = self.pending, []
        return out

    def trace(self, src: str, dst: str, port: int | None, protocol: str, live: bool) -> dict[str, Any]:
        if self.trace_error is not None:
            raise self.trace_error
        self.traced.append({"src": src, "dst": dst, "port": port, "protocol": protocol, "live": live})
        return {"src": {"name": src}, "dst": {"name": dst}, "hops": [], "verdict": "unknown", "died_at": None,
                "reason": HOSTILE}


@pytest.fixture
def served() -> Iterator[tuple[DashboardServer, FakeSource]]:
    source = FakeSource()
    server = make_server(source, "127.0.0.1", 0, interval=0.05)
    server.serve_in_thread()
    try:
        yield server, source
    finally:
        server.close()


def request(server: DashboardServer, method: str, path: str, host: str | None = None,
            body: bytes | None = None, **extra: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    headers = {**({"Host": host} if host else {}), **{k.replace("_", "-"): v for k, v in extra.items()}}
    if path.startswith("/api/trace"):
        headers.setdefault("X-Podnet-Dashboard", "1")  # what the page's script sends
    conn.request(method, path, body=body, headers=headers)
    reply = conn.getresponse()
    out = reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    conn.close()
    return out


# ---------------------------------------------------------------- routes


def test_the_page_and_its_files_are_served_with_a_strict_policy(served):
    server, _ = served
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"/static/app.js" in body
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, body = request(server, "GET", f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(kind) and body
    for path in ("/static/../server.py", "/static/%2e%2e/data.py", "/static/nosuch.js", "/nosuch"):
        assert request(server, "GET", path)[0] == 404, path


def test_the_page_loads_nothing_from_elsewhere():
    folder = resources.files("podnet.observe.dashboard") / "static"
    for item in folder.iterdir():
        text = item.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, item.name
        assert "//cdn" not in text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO"])
def test_every_method_but_get_is_refused(served, method):
    server, _ = served
    status, headers, _ = request(server, method, "/api/snapshot", body=b"{}" if method in ("POST", "PUT") else None)
    assert status == 405 and headers["allow"] == "GET"


def test_snapshot_json_carries_no_markup_and_reads_back_the_same(served):
    server, source = served
    status, headers, body = request(server, "GET", "/api/snapshot")
    assert status == 200 and headers["content-type"] == "application/json"
    assert b"<" not in body and b">" not in body and b"&" not in body
    assert json.loads(body)["pods"][0]["labels"]["note"] == HOSTILE == source.snap["pods"][0]["labels"]["note"]


def test_the_script_never_writes_html():
    script = (resources.files("podnet.observe.dashboard") / "static" / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "textContent" in script


def test_a_request_naming_another_host_is_refused(served):
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1."""
    server, _ = served
    port = server.server_address[1]
    assert request(server, "GET", "/api/snapshot", host=f"evil.example:{port}")[0] == 421
    assert request(server, "GET", "/api/snapshot", host=f"localhost:{port}")[0] == 200


def test_another_site_cannot_use_the_api(served):
    """A page elsewhere may make the browser send a GET (an <img>, a form): refused."""
    server, source = served
    assert request(server, "GET", "/api/snapshot", Sec_Fetch_Site="cross-site")[0] == 403
    assert request(server, "GET", "/api/snapshot", Sec_Fetch_Site="same-origin")[0] == 200
    assert request(server, "GET", "/api/trace?src=a&dst=b", Sec_Fetch_Site="cross-site")[0] == 403
    assert request(server, "GET", "/api/trace?src=a&dst=b&live=yes", X_Podnet_Dashboard="")[0] == 403
    assert source.traced == []
    assert request(server, "GET", "/", Sec_Fetch_Site="cross-site")[0] == 200  # a link to the page is fine


def test_a_non_loopback_address_needs_allow_remote():
    with pytest.raises(PodnetError) as refused:
        make_server(FakeSource(), "0.0.0.0", 0)
    assert "--allow-remote" in refused.value.details and "0.0.0.0" in refused.value.msg
    for host in ("10.1.2.3", "192.168.0.1", "example.com"):
        with pytest.raises(PodnetError):
            check_bind(host, allow_remote=False)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        check_bind(host, allow_remote=False)
    check_bind("0.0.0.0", allow_remote=True)


def test_the_cli_refuses_a_remote_host_before_reading_anything(capsys, tmp_path):
    code = main(["dashboard", "--store", str(tmp_path / "none.db"), "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 1 and "not a loopback address" in err and "--allow-remote" in err
    code = main(["dashboard", "--store", str(tmp_path / "none.db"), "--port", "0"])
    assert code == 1 and "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- trace


def test_trace_arguments_are_checked_and_passed_on(served):
    server, source = served
    status, _, body = request(server, "GET", "/api/trace?src=default/a&dst=default/b&port=80&protocol=UDP&live=yes")
    assert status == 200 and json.loads(body)["reason"] == HOSTILE and b"<" not in body
    assert source.traced == [{"src": "default/a", "dst": "default/b", "port": 80, "protocol": "udp", "live": True}]
    for query, field in (("dst=default/b", "src"), ("src=a&dst=b&port=70000", "port"), ("src=a&dst=b&port=x", "port"),
                         ("src=a&dst=b&protocol=gre", "protocol"), ("src=a&dst=b&live=maybe", "live")):
        status, _, body = request(server, "GET", f"/api/trace?{query}")
        assert status == 400 and json.loads(body)["error"].startswith(field), query
    assert trace_query({"src": "a", "dst": "b"}) == {"src": "a", "dst": "b", "port": None, "protocol": "tcp",
                                                     "live": False}


def test_a_trace_that_fails_is_an_error_answer_not_a_dead_server(served):
    server, source = served
    source.trace_error = ModuleNotFoundError("No module named 'podnet.observe.trace'")
    assert request(server, "GET", "/api/trace?src=a&dst=b")[0] == 501
    source.trace_error = PodnetError("no pod 'x/y'", "pods: default/a")
    status, _, body = request(server, "GET", "/api/trace?src=x/y&dst=b")
    assert status == 400 and json.loads(body) == {"error": "no pod 'x/y'", "details": "pods: default/a"}
    source.trace_error = RuntimeError("boom")
    assert request(server, "GET", "/api/trace?src=a&dst=b")[0] == 500
    assert request(server, "GET", "/api/snapshot")[0] == 200


# ---------------------------------------------------------------- live events


def read_events(reply: http.client.HTTPResponse, count: int) -> list[tuple[str, Any]]:
    """The next `count` events of a stream (comments and retry lines skipped)."""
    out: list[tuple[str, Any]] = []
    name, data = None, []
    while len(out) < count:
        line = reply.fp.readline().decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data.append(line[len("data: "):])
        elif not line and name is not None:
            assert len(data) == 1, data  # one JSON value on one line
            out.append((name, json.loads(data[0])))
            name, data = None, []
    return out


def test_events_stream_the_snapshot_then_each_new_flow_and_each_change(served):
    server, source = served
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request("GET", "/api/events")
    reply = conn.getresponse()
    assert reply.status == 200 and reply.getheader("Content-Type").startswith("text/event-stream")
    assert read_events(reply, 1) == [("snapshot", source.snap)]
    with source.lock:
        source.pending = [{"seq": 1, "verdict": "deny", "rule": "np:default/x ingress\n\nevent: forged"},
                          {"seq": 2, "verdict": "allow", "rule": HOSTILE}]
    assert [e[1]["seq"] for e in read_events(reply, 2)] == [1, 2]
    source.snap = snap(nodes=[{"name": "node0", "health": "down", "lease_age_s": 9.0}])
    name, data = read_events(reply, 1)[0]
    assert name == "snapshot" and data["nodes"][0]["health"] == "down"
    conn.close()


def test_an_event_is_one_frame_whatever_its_text():
    frame = sse_frame("flow", {"rule": "a\nb\r\n\nevent: snapshot", "note": HOSTILE})
    assert frame.startswith(b"event: flow\ndata: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 3
    assert b"<" not in frame


def test_the_hub_tells_only_of_real_changes():
    source = FakeSource()
    hub = Hub(source, interval=60)
    hub.poll()
    sub = hub.subscribe()
    assert sub.events.get_nowait()[0] == "snapshot"
    source.snap = snap(time=2.0, nodes=[{"name": "node0", "health": "ok", "lease_age_s": 4.0}])
    hub.poll()  # only clocks moved
    assert sub.events.empty()
    source.pending = [{"seq": 1}]
    hub.poll()
    assert sub.events.get_nowait() == ("flow", {"seq": 1}) and sub.events.empty()
    late = hub.subscribe()  # joins later: the snapshot and the recent flows at once
    assert [late.events.get_nowait()[0] for _ in range(2)] == ["snapshot", "flow"]
    hub.stop()
    assert sub.events.get_nowait() is None


# ---------------------------------------------------------------- the model


def agent(name: str, peers: list[tuple[str, str]]) -> dict[str, Any]:
    return {"node.status": {"node": name, "peers": [{"name": n, "state": s} for n, s in peers]}}


def test_health_links_and_racks_are_joined_from_status_and_lab():
    status = {"nodes": [
        {"name": "node0", "lease": True, "agent": "answers", "peers_ok": 1, "peers": 1, "refused": []},
        {"name": "node1", "lease": True, "agent": "answers", "peers_ok": 0, "peers": 1, "refused": []},
        {"name": "node2", "lease": True, "agent": "does not answer: refused"}],
        "degraded": ["node node2: agent does not answer (refused)"], "store": {"backend": "sqlite"}}
    agents = {"node0": agent("node0", [("node1", "ok")]), "node1": agent("node1", [("node0", "refused: overlap")])}
    lab = {"nodes": {"node0": {"rack": 0}, "node1": {"rack": 1}, "node2": {"rack": 1}, "node3": {"rack": 0}},
           "outside": {"ip": "198.51.100.1", "underlay": "172.31.0.254"}}
    pods = [{"ref": "default/b", "node": "node2", "ips": ["10.244.2.2"], "ready": True},
            {"ref": "default/a", "node": "node0", "ips": ["10.244.0.2"], "ready": False}]
    out = model.build(status, agents, lab, pods, [], title="lab t", now=5.0)
    health = {n["name"]: n["health"] for n in out["nodes"]}
    assert health == {"node0": "ok", "node1": "warn", "node2": "down", "node3": "down"}
    assert next(n for n in out["nodes"] if n["name"] == "node2")["reasons"] == ["agent does not answer (refused)"]
    assert out["links"] == [{"a": "node0", "b": "node1", "state": "node0: ok; node1: refused: overlap",
                             "health": "down"}]
    assert out["racks"] == [{"rack": 0, "label": "rack 0", "nodes": ["node0", "node3"]},
                            {"rack": 1, "label": "rack 1", "nodes": ["node1", "node2"]}]
    assert out["routers"] == [{"name": "rtr", "racks": [0, 1]}] and out["outside"]["ip"] == "198.51.100.1"
    assert [(p["ref"], p["health"]) for p in out["pods"]] == [("default/a", "warn"), ("default/b", "down")]


def test_a_machine_out_of_reach_is_unknown_not_down():
    status = {"nodes": [{"name": "far", "lease": True, "agent": model.NOT_REACHABLE}]}
    out = model.build(status, {}, None, [{"ref": "x/p", "node": "far"}], [], title="c", now=0)
    assert out["nodes"][0]["health"] == "unknown" and out["pods"][0]["health"] == "unknown"
    assert out["routers"] == [] and out["outside"] is None and out["racks"] == [{"rack": 0, "label": "nodes", "nodes": ["far"]}]


def test_flows_are_named_by_their_pods():
    flow = model.name_flow({"src": "10.0.0.1", "dst": "10.0.0.9"}, {"10.0.0.1": "default/a"})
    assert (flow["src_name"], flow["dst_name"]) == ("default/a", "")


# ---------------------------------------------------------------- flows and the store


def test_the_flow_cursor_pages_and_never_repeats(monkeypatch):
    logged = {"n0": [{"seq": i, "time": float(i)} for i in range(1, 6)], "n1": [{"seq": 1, "time": 2.5}]}
    asked = []

    def call(sock, op, timeout, since, limit):
        asked.append((sock, since))
        if sock == "/down.sock":
            raise PodnetError("agent does not answer")
        items = [f for f in logged[sock] if f["seq"] > since][:limit]
        return {"flows": items, "next": items[-1]["seq"] if items else since}

    monkeypatch.setattr("podnet.rpc.client.call", call)
    cursor = FlowCursor({"a": "n0", "b": "n1", "c": "/down.sock"}, page=2)
    assert [f["time"] for f in cursor.fetch()] == [1.0, 2.0, 2.5, 3.0, 4.0, 5.0]
    assert ("n0", 2) in asked and ("n0", 4) in asked
    assert cursor.fetch() == []
    logged["n0"].append({"seq": 6, "time": 6.0})
    assert cursor.fetch() == [{"seq": 6, "time": 6.0}]


def test_a_restarted_agent_s_verdicts_are_read_from_its_first_number(monkeypatch):
    """An agent numbers from 1 again after a restart (a new `boot`): its first verdicts
    are not skipped while their numbers are below the old cursor."""
    agent = {"boot": "b1", "logged": [{"seq": i, "time": float(i)} for i in range(1, 4)]}

    def call(sock, op, timeout, since, limit):
        items = [f for f in agent["logged"] if f["seq"] > since][:limit]
        return {"flows": items, "next": items[-1]["seq"] if items else since, "boot": agent["boot"]}

    monkeypatch.setattr("podnet.rpc.client.call", call)
    cursor = FlowCursor({"a": "n0"})
    assert len(cursor.fetch()) == 3 and cursor.fetch() == []
    agent.update(boot="b2", logged=[{"seq": 1, "time": 10.0}])  # restarted, one new verdict
    assert cursor.fetch() == [{"seq": 1, "time": 10.0}]
    assert cursor.fetch() == []


def test_the_data_source_reads_pods_services_and_endpoints_from_a_store(tmp_path: Path):
    url = str(tmp_path / "podnet.db")
    with open_store(url) as store:
        for name, ip in (("a", "10.244.0.5"), ("b", "10.244.1.5")):
            pod = PodRecord("default", name, node="node0", ips=(ip,), labels={"app": "web"},
                            ports=({"name": "http", "port": 8080, "protocol": "TCP"},))
            store.put(pod.key, pod.encode())
        store.put(keys.object_key(keys.SERVICES, "web", "default"), json.dumps({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                     "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}}))
    source = ClusterSource(url, {"node0": str(tmp_path / "no-agent.sock")})
    try:
        out = source.snapshot()
    finally:
        source.close()
    assert [p["ref"] for p in out["pods"]] == ["default/a", "default/b"]
    assert [n["health"] for n in out["nodes"]] == ["down"]  # its agent does not answer
    (svc,) = out["services"]
    assert svc["ref"] == "default/web" and svc["cluster_ip"] == "10.96.0.10"
    assert [(e["ip"], e["port"]) for e in svc["ports"][0]["endpoints"]] == [("10.244.0.5", 8080), ("10.244.1.5", 8080)]


# ---------------------------------------------------------------- the command


def test_an_etcd_lab_is_refused_with_the_reason(capsys, monkeypatch):
    from podnet.config import Target

    monkeypatch.setattr("podnet.cli.dashboard.target", lambda args: Target(lab="e1", source="--lab"))
    monkeypatch.setattr("podnet.cli.dashboard.store_location", lambda where: "etcd://172.31.0.200:2379")
    assert main(["dashboard", "--lab", "e1", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "etcd inside the lab" in err and "sqlite-store labs and real stores" in err


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_the_command_prints_its_url_serves_and_ends_cleanly_on_ctrl_c(tmp_path: Path, stop: str):
    import signal
    import subprocess
    import sys

    db = tmp_path / "podnet.db"
    open_store(str(db)).close()
    proc = subprocess.Popen([sys.executable, "-m", "podnet.cli", "dashboard", "--store", str(db), "--port", "0",
                             "--socket", str(tmp_path / "no-agent.sock")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # as from a terminal: a suite run as a background job hands its
                            # children SIGINT ignored, and Python then never raises KeyboardInterrupt
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert line.startswith("podnet dashboard: http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[2]
        with urllib.request.urlopen(f"{url}api/snapshot", timeout=10) as reply:
            assert reply.status == 200 and json.load(reply)["store"]["backend"] == "sqlite"
        proc.send_signal(getattr(signal, stop))
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""Readiness probes: the declaration (model/probe.py), the kubelet's thresholds
(services/probes.py), one probe against a real socket on 127.0.0.1
(agent/readiness_service.py), and how pods and the lab topology carry them."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from podnet.agent.readiness_service import run_probe
from podnet.errors import InvalidConfig
from podnet.lab import topology
from podnet.model.policy import PodRecord
from podnet.model.probe import ReadinessProbe, parse_probe
from podnet.services.probes import ProbeState


def test_defaults_and_round_trip():
    probe = parse_probe({"tcpSocket": {"port": "http"}})
    assert (probe.kind, probe.port, probe.period, probe.timeout, probe.success_threshold,
            probe.failure_threshold) == ("tcp", "http", 10, 1, 1, 3)
    http_probe = parse_probe({"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2})
    assert parse_probe(http_probe.to_dict()) == http_probe
    assert http_probe.to_dict() == {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1,
                                    "failureThreshold": 2}


@pytest.mark.parametrize(("raw", "message"), [
    ({}, "exactly one of tcpSocket or httpGet"),
    ({"tcpSocket": {"port": 80}, "httpGet": {"port": 80}}, "exactly one"),
    ({"exec": {"command": ["true"]}}, r"readinessProbe\.exec: unknown field"),
    ({"tcpSocket": {"port": 0}}, r"tcpSocket\.port: 0 is not a port"),
    ({"tcpSocket": {"port": "HTTP"}}, "is not a port number or a port name"),
    ({"httpGet": {"port": 80, "path": "no-slash"}}, "absolute path"),
    ({"httpGet": {"port": 80, "path": "/a b"}}, "absolute path"),
    ({"tcpSocket": {"port": 80}, "periodSeconds": 0}, r"periodSeconds: 0 is not an integer 1\.\.3600"),
    ({"tcpSocket": {"port": 80}, "failureThreshold": True}, "failureThreshold"),
])
def test_bad_probes_are_refused_with_the_path(raw, message):
    with pytest.raises(InvalidConfig, match=message):
        parse_probe(raw)


def test_thresholds_as_the_kubelet_applies_them():
    state = ProbeState(ReadinessProbe("tcp", 80, success_threshold=2, failure_threshold=3))
    assert not state.ready
    assert [state.record(ok) for ok in (True, False, True, True)] == [False, False, False, True]
    assert state.ready
    assert [state.record(ok, "refused") for ok in (False, False, True, False, False, False)] == [
        False, False, False, False, False, True]
    assert not state.ready and state.last_error == "refused"


@pytest.fixture
def http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_probes_against_real_sockets(http_server):
    assert run_probe(ReadinessProbe("http", http_server, "/ok"), "127.0.0.1", http_server) == (True, "HTTP 200")
    assert run_probe(ReadinessProbe("http", http_server, "/no"), "127.0.0.1", http_server) == (False, "HTTP 503")
    assert run_probe(ReadinessProbe("tcp", http_server), "127.0.0.1", http_server)[0]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: refused
        ok, why = run_probe(ReadinessProbe("tcp", port), "127.0.0.1", port)
    assert not ok and "ConnectionRefusedError" in why


def test_pod_records_carry_the_probe_and_old_records_stay_byte_equal():
    plain = PodRecord("default", "a", "node0", ("10.244.0.2",), {"app": "a"}, ({"name": "http", "port": 80,
                                                                               "protocol": "TCP"},))
    assert "readinessProbe" not in plain.encode()
    probed = PodRecord(**{**plain.__dict__, "readiness": parse_probe({"tcpSocket": {"port": "http"}})})
    again = PodRecord.from_json(probed.to_json())
    assert again.readiness == probed.readiness and again.named_ports() == {"http": 80}
    broken = probed.to_json()
    broken["spec"]["readinessProbe"] = {"tcpSocket": {"port": -1}}
    with pytest.raises(Exception, match="readinessProbe"):
        PodRecord.from_json(broken)


def test_lab_topologies_take_probes_and_services():
    doc = {"nodes": [{"name": "node0"}],
           "pods": [{"name": "web", "node": "node0", "labels": {"app": "web"},
                     "ports": [{"port": 80, "protocol": "TCP", "name": "http"}],
                     "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1}}],
           "services": [{"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
                                                               "ports": [{"port": 80, "targetPort": "http"}]}}]}
    t = topology.parse(doc)
    assert t.pods[0].readiness.port == "http" and t.services[0]["kind"] == "Service"
    bad_port = {**doc, "pods": [{**doc["pods"][0], "readinessProbe": {"tcpSocket": {"port": "admin"}}}]}
    with pytest.raises(topology.TopologyError, match="no port named 'admin'"):
        topology.parse(bad_port)
    bad_service = {**doc, "services": [{"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}],
                                                                              "typo": 1}}]}
    with pytest.raises(topology.TopologyError, match=r"spec\.typo: unknown field"):
        topology.parse(bad_service)

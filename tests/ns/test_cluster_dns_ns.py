"""The agent's cluster DNS service on the real kernel: it answers inside the DNS pod's
namespace (its sockets made there, none in the agent's own), follows the store, and
serves again when the pod's namespace is made anew under the same path."""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

import pytest

from podnet.agent.cluster_dns_service import ClusterDnsService
from podnet.cluster.options import NodeOptions
from podnet.objects.registry import parse_documents
from podnet.objects.store import apply
from podnet.observe import probe
from podnet.store import open_store

pytestmark = pytest.mark.root

SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"}, "ports": [{"port": 80}]}}


def ask(sandbox, ns: str, name: str) -> str:
    spec = {"kind": "dns", "dst": "127.0.0.1", "port": 53, "name": name, "timeout": 0.5}
    out = sandbox.exec(ns, [sys.executable, "-I", "-S", probe.__file__, json.dumps(spec)]).stdout
    return json.loads(out)["detail"]


def eventually(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_serves_in_the_pod_namespace_follows_the_store_and_survives_a_new_namespace(sandbox):
    ns = sandbox.netns("dns")
    path = sandbox.path(ns)
    with open_store("memory://") as store:
        agent = SimpleNamespace(node_options=NodeOptions("n0", cluster_dns_netns=path), dns_upstream=None,
                                store_path="memory://", service=SimpleNamespace(store=lambda _path: store))
        service = ClusterDnsService(agent)
        service.start()
        try:
            assert eventually(lambda: service.status()["serving"]), service.status()
            assert ask(sandbox, ns, "web.default.svc.cluster.local") == "NXDOMAIN"
            apply(store, parse_documents([SERVICE]))
            assert eventually(lambda: ask(sandbox, ns, "web.default.svc.cluster.local") == "answer 10.96.0.20")
            sandbox.delete_netns(ns)
            assert sandbox.netns("dns") == ns  # the same path, a new namespace
            assert eventually(lambda: ask(sandbox, ns, "web.default.svc.cluster.local") == "answer 10.96.0.20")
        finally:
            service.stop()
        assert not service.status()["serving"]
        assert ask(sandbox, ns, "web.default.svc.cluster.local") == "Connection refused"  # its sockets went with it

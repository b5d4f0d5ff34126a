"""`podnet probe --to svc/...|VIP[:PORT]`: which targets are services, and their
frontends from the store (observe/service_probe.py)."""

from __future__ import annotations

import pytest

from podnet.objects import store as repo
from podnet.objects.registry import parse_documents
from podnet.observe.service_probe import Frontend, ServiceProbeError, frontends, is_service_target
from podnet.store import open_store


def svc(name: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


@pytest.fixture
def store():
    with open_store("memory://") as s:
        repo.apply(s, parse_documents([
            svc("web", clusterIP="10.96.0.20", externalIPs=["192.0.2.9"],
                ports=[{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
            svc("db", clusterIP="None", ports=[{"port": 5432}])]))
        yield s


@pytest.mark.parametrize(("text", "expected"), [
    ("svc/shop/web", True), ("10.96.0.20", True), ("10.96.0.20:80", True), ("fd00::1", True),
    ("app=web", False), ("namespace=shop,app", False), (None, False), ("", False)])
def test_which_targets_are_services(text, expected):
    assert is_service_target(text) is expected


def test_frontends_by_name_by_address_and_by_external_ip(store):
    assert frontends(store, "svc/shop/web") == ("shop/web", [Frontend("10.96.0.20", 80, "tcp"),
                                                            Frontend("10.96.0.20", 53, "udp")])
    assert frontends(store, "10.96.0.20:53")[1] == [Frontend("10.96.0.20", 53, "udp")]
    assert frontends(store, "192.0.2.9:80")[1] == [Frontend("192.0.2.9", 80, "tcp")]


@pytest.mark.parametrize(("target", "message"), [
    ("svc/shop/nope", "service shop/nope not found"),
    ("svc/shop/db", "headless"),
    ("10.96.0.99", "no service has the address 10.96.0.99"),
    ("10.96.0.20:8080", "has no port 8080"),
])
def test_clear_errors(store, target, message):
    with pytest.raises(ServiceProbeError, match=message):
        frontends(store, target)

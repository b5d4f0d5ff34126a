"""decode_pod (model/policy.py): a stored pod's text parsed once per process for every
agent service that follows pods/, with the same checks as PodRecord.from_json."""

from __future__ import annotations

import json

import pytest

from podnet.errors import PodnetError
from podnet.model.policy import PodRecord, decode_pod
from podnet.services.watched import WatchedObjects
from podnet.store.base import PUT, Event

POD = PodRecord("x", "a", "node0", ("10.250.0.2",), {"app": "a"}, ({"name": "http", "port": 80},))


def test_a_pod_is_parsed_as_from_json_does_and_once():
    text = POD.encode()
    first = decode_pod(text, POD.key)
    assert first == PodRecord.from_json(json.loads(text), POD.key) == POD
    assert decode_pod(text, POD.key) is first
    moved = PodRecord("x", "a", "node1", ("10.250.1.2",), {"app": "a"})
    assert decode_pod(moved.encode(), POD.key) == moved  # a new text is parsed again


@pytest.mark.parametrize("text, why", [
    ("{not json", "not JSON"),
    (json.dumps({**POD.to_json(), "status": {"podIPs": ["10.250.0.300"]}}), "podIPs"),
])
def test_a_bad_pod_raises_each_time_naming_its_key(text, why):
    for _ in range(2):
        with pytest.raises(PodnetError, match=why) as caught:
            decode_pod(text, POD.key)
        assert POD.key in str(caught.value.msg)


def test_the_services_and_dns_caches_share_one_parse():
    services, dns = WatchedObjects(), WatchedObjects(track_nodes=True)
    event = Event(PUT, POD.key, POD.encode(), 7)
    services.feed([event])
    dns.feed([event])
    assert services.pods[POD.key] is dns.pods[POD.key]
    services.feed([Event(PUT, POD.key, "{not json", 8)])
    assert POD.key not in services.pods and "not JSON" in services.errors[POD.key]

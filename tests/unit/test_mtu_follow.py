"""agent/mtu_follow.py's pure parts: which interfaces of which pods a node re-sizes, and
what a change records; and a pod that fails is named without stopping the others."""

from __future__ import annotations

from podnet.agent.mtu_follow import MtuChange, new_change, pod_interfaces, resize_pods
from podnet.model.endpoint import EndpointRecord


def _record(node: str, netns: str, state: str = "ready") -> EndpointRecord:
    return EndpointRecord(state=state, attach_id="a1", mode="bridge", netns=netns, host_netns=(1, 2),
                          host_links=("pn0123456789a",), node=node,
                          result={"interfaces": [{"name": "pn0123456789a"}, {"name": "eth0", "sandbox": netns}]})


def test_only_this_nodes_ready_pods_and_their_own_interfaces() -> None:
    records = [_record("node0", "/run/netns/p1"), _record("node1", "/run/netns/p2"),
               _record("node0", "/run/netns/p3", state="pending"), _record("node0", "")]
    assert pod_interfaces(records, "node0") == [(("pn0123456789a",), "/run/netns/p1", "eth0")]


class FakeIpr:
    def __init__(self, broken: set[str]) -> None:
        self.broken = broken
        self.set: dict[str, int] = {}

    def link_lookup(self, ifname: str) -> list[int]:
        return [hash(ifname)]

    def link(self, verb: str, index: int, mtu: int) -> None:
        name = next(n for n in ("pnbad", "pngood") if hash(n) == index)
        if name in self.broken:
            raise OSError("no such device")
        self.set[name] = mtu


def test_a_pod_that_fails_is_named_and_the_others_still_resized(tmp_path) -> None:
    change = new_change(1500, 9000, 1450, 8950)
    assert isinstance(change, MtuChange) and change.to_json()["pods"] == [1450, 8950]
    ipr = FakeIpr({"pnbad"})
    gone = str(tmp_path / "no-such-netns")  # the pod is being deleted: host side only, not an error
    resize_pods(ipr, [(("pnbad",), gone, "eth0"), (("pngood",), gone, "eth0")], 8950, change)
    assert ipr.set == {"pngood": 8950}
    assert change.failed and change.failed[0].startswith(f"{gone} eth0: no such device")
    assert change.to_json()["failed"] == change.failed and change.resized == []


def test_the_underlay_is_looked_at_once_per_look_seconds_however_often_the_loop_wakes() -> None:
    from podnet.agent.mtu_follow import LOOK_SECONDS, UnderlayLook

    now = [100.0]
    look = UnderlayLook(clock=lambda: now[0])
    assert look.due()
    assert not look.due()  # the loop woke again at once: no second request
    now[0] += LOOK_SECONDS / 2
    assert not look.due()
    now[0] += LOOK_SECONDS / 2
    assert look.due()


"""`podnet peers` of the gossip fabric without root or a real agent: the pure summary
(observe/peers_view.py) over fake `gossip.status` answers, then the command end to end
against tiny fake agents on Unix sockets in tmp_path (the real wire and rpc client)."""

from __future__ import annotations

import copy
import json
import socketserver
import threading
from collections.abc import Callable, Iterator

import pytest

from podnet.cli import main
from podnet.errors import PodnetError
from podnet.observe import peers_view as view
from podnet.rpc import wire

NOW = 1733390100.0


def status(name: str, peers: list[dict], owners: dict | None = None, deaths: dict | None = None,
           dns: list[dict] | None = None) -> dict:
    """A gossip.status answer in the shape the agent gives."""
    owners = owners if owners is not None else {"node0": ["10.244.0.0/24", "10.244.1.0/24"],
                                                "node1": ["10.244.2.0/24"]}
    return {"name": name, "address": f"172.31.0.1{name[-1]}:6783", "encrypted": False, "peers": peers,
            "connections": [{"peer": p["name"], "address": f"{p['underlay']}:6783", "outbound": True,
                             "authenticated": True, "since": NOW - 60, "last_seen": NOW - 1}
                            for p in peers if p["direct"]],
            "ring": {"range": "10.244.0.0/16", "block_prefix": 24, "owners": owners,
                     "members": sorted(owners), "deaths": deaths or {}},
            "dns": dns if dns is not None else [{"name": "web-0", "ip": "10.244.0.5", "node": "node0", "ttl": 30}]}


def peer(name: str, path: str = "fast", via: str | None = None, last_seen: float | None = NOW - 2) -> dict:
    return {"name": name, "via": via or name, "direct": via is None, "path": path, "encrypted": path == "sleeve",
            "underlay": f"172.31.0.1{name[-1]}", "last_seen": last_seen}


def mesh() -> list[dict]:
    """node0 reaches node1 directly and node2 through node1; node1 reaches both directly."""
    return [view.node_answer("node0", status("node0", [peer("node1"), peer("node2", "sleeve", via="node1")])),
            view.node_answer("node1", status("node1", [peer("node0"), peer("node2", last_seen=None)]))]


# --- the pure summary ---------------------------------------------------------------

def test_a_healthy_mesh_exits_0_with_a_row_per_peer_as_each_node_sees_it() -> None:
    nodes = mesh()
    assert view.problems(nodes) == [] and view.exit_status(nodes) == 0
    assert [(r["node"], r["peer"], r["connection"], r["path"], r["encrypted"], r["last seen"])
            for r in view.peer_rows(nodes, NOW)] == [
        ("node0", "node1", "direct", "fast", "no", "2s"),
        ("node0", "node2", "via node1", "sleeve", "yes", "2s"),
        ("node1", "node0", "direct", "fast", "no", "2s"),
        ("node1", "node2", "direct", "fast", "no", "-")]


def test_an_unreachable_peer_exits_1_and_says_from_where() -> None:
    nodes = mesh()
    nodes[1]["peers"][1]["path"] = "unreachable"
    assert view.problems(nodes) == ["node1: peer node2 is unreachable"]
    assert view.exit_status(nodes) == 1


def test_a_node_that_does_not_answer_is_a_row_with_its_error() -> None:
    nodes = [*mesh(), view.node_error("node2", "no podnet agent answers on /run/node2.sock")]
    assert view.exit_status(nodes) == 1
    assert view.problems(nodes) == ["node2: no answer (no podnet agent answers on /run/node2.sock)"]
    assert view.peer_rows(nodes, NOW)[-1]["error"] == "no podnet agent answers on /run/node2.sock"
    # the ring and DNS are summarised from the nodes that answered
    assert {r["seen by"] for r in view.ring_rows(nodes)} == {"all"}
    assert view.dns_rows(nodes)[0]["known to"] == "2/2"


def test_a_node_with_no_peers_says_so() -> None:
    rows = view.peer_rows([view.node_answer("", status("node0", []))], NOW)
    assert [(r["node"], r["connection"]) for r in rows] == [("node0", "no peers")]


@pytest.mark.parametrize(("last_seen", "shown"), [(None, "-"), (NOW - 3.4, "3s"), (NOW - 3.6, "4s"),
                                                  (NOW + 5, "0s"), (NOW - 3600, "3600s")])
def test_age_in_whole_seconds(last_seen, shown) -> None:
    assert view.age(last_seen, NOW) == shown


def test_blocks_are_compacted_in_address_order() -> None:
    assert view.compact_blocks(["10.244.3.0/24", "10.244.1.0/24", "10.244.0.0/24", "fd00::/120",
                                "10.244.5.0/24", "fd00::100/120"]) == [
        "10.244.0.0/23", "10.244.3.0/24", "10.244.5.0/24", "fd00::/119"]
    assert view.compact_blocks([]) == []


def test_ring_rows_group_the_nodes_that_agree() -> None:
    nodes = mesh()
    assert view.ring_rows(nodes) == [
        {"owner": "node0", "blocks": "2", "cidrs": "10.244.0.0/23", "seen by": "all"},
        {"owner": "node1", "blocks": "1", "cidrs": "10.244.2.0/24", "seen by": "all"}]
    nodes[1]["ring"]["owners"] = {"node1": ["10.244.0.0/24", "10.244.2.0/24"]}  # a partition not yet healed
    assert [(r["owner"], r["cidrs"], r["seen by"]) for r in view.ring_rows(nodes)] == [
        ("node0", "10.244.0.0/23", "node0"), ("node1", "10.244.2.0/24", "node0"),
        ("node1", "10.244.0.0/24, 10.244.2.0/24", "node1")]


def test_dead_peers_show_their_votes_and_who_reclaimed() -> None:
    deaths = {"node3": {"reclaimed_by": None, "votes": {"node1": "seen", "node0": "gone"}}}
    nodes = [view.node_answer("node0", status("node0", [peer("node1")], deaths=deaths))]
    assert view.death_rows(nodes) == [{"peer": "node3", "reclaimed by": "not yet",
                                       "votes": "node0: gone, node1: seen", "seen by": "node0"}]
    deaths["node3"]["reclaimed_by"] = "node0"
    assert view.death_rows(nodes)[0]["reclaimed by"] == "node0"
    assert view.death_rows(mesh()) == []


def test_dns_rows_merge_nodes_and_count_who_knows_each() -> None:
    nodes = mesh()
    nodes[1]["dns"].append({"name": "db-0", "ip": "10.244.2.7", "node": "node1", "ttl": 30})
    assert view.dns_rows(nodes) == [
        {"name": "db-0", "ip": "10.244.2.7", "node": "node1", "ttl": "30", "known to": "1/2"},
        {"name": "web-0", "ip": "10.244.0.5", "node": "node0", "ttl": "30", "known to": "2/2"}]


def test_rm_is_refused_for_the_asked_node_itself_and_for_unknown_peers() -> None:
    node0 = status("node0", [peer("node1")], deaths={"node3": {"reclaimed_by": None, "votes": {}}})
    assert "is the asked node itself" in view.rm_refusal(node0, "node0")
    assert view.rm_refusal(node0, "node9") == "peer 'node9' is unknown to node0 (known: node0, node1, node3)"
    assert view.rm_refusal(node0, "node3") is None  # known only as a dead peer: what rm is for
    assert view.rm_refusal(node0, "node1") is None
    assert view.rm_asker(["node0", "node1"], "node0") == "node1"
    assert view.rm_asker(["node0", "node1"], "node3") == "node0"
    assert view.rm_asker(["node0"], "node0") is None


def test_rm_summary() -> None:
    answer = {"removed": "node3", "taker": "node0", "blocks": ["10.244.3.0/24", "10.244.2.0/24"]}
    assert view.rm_summary(answer) == "removed peer node3: 2 block(s) (10.244.2.0/23) now owned by node0"
    assert view.rm_summary({"removed": "node3", "taker": "node0", "blocks": []}) == \
        "removed peer node3: it owned no blocks"


# --- the command against fake agents ------------------------------------------------

Handler = Callable[[dict], object]


class FakeAgent(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An agent socket answering ops from a dict op -> handler(message); a handler's
    PodnetError becomes the agent's error reply. Records the messages it was sent."""

    daemon_threads = True

    def __init__(self, path: str, ops: dict[str, Handler]) -> None:
        self.ops, self.seen = ops, []
        super().__init__(path, _Reply)


class _Reply(socketserver.BaseRequestHandler):
    server: FakeAgent

    def handle(self) -> None:
        meta, _body, fds = wire.recv_request(self.request)
        wire.close_fds(fds)
        message = json.loads(meta)
        self.server.seen.append(message)
        try:
            code, reply = 0, {"result": self.server.ops[message["op"]](message)}
        except PodnetError as err:
            code, reply = 1, {"error": err.to_cni("1.0.0")}
        wire.send(self.request, wire.pack_reply(code, json.dumps(reply).encode()))


@pytest.fixture
def agents(tmp_path, monkeypatch) -> Iterator[Callable[..., FakeAgent]]:
    """start(node, ops) serves a fake agent for `node`; `podnet peers --lab fake` asks
    every started node, plus any node put in `missing` (a socket nobody serves)."""
    servers: dict[str, FakeAgent] = {}
    sockets: dict[str, str] = {}

    def start(node: str, ops: dict[str, Handler] | None = None) -> FakeAgent:
        path = str(tmp_path / f"{node}.sock")
        sockets[node] = path
        if ops is None:  # a node whose agent is down
            return None  # type: ignore[return-value]
        server = servers[node] = FakeAgent(path, ops)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        return server

    monkeypatch.setattr("podnet.cli.peers.node_sockets",
                        lambda args: sockets if args.lab == "fake" else {"": args.socket})
    yield start
    for server in servers.values():
        server.shutdown()
        server.server_close()


def answers_with(answer: dict) -> dict[str, Handler]:
    return {"gossip.status": lambda _m: copy.deepcopy(answer)}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["peers", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def cells(out: str) -> list[list[str]]:
    """The cells of every rich table printed, row by row."""
    return [[cell.strip() for cell in line.replace("┃", "│").split("│")[1:-1]]
            for line in out.splitlines() if "│" in line or "┃" in line]


def test_status_of_a_lab_prints_peers_ring_and_dns(agents, capsys) -> None:
    node0, node1 = mesh()
    node0["ring"]["deaths"] = {"node3": {"reclaimed_by": "node0", "votes": {"node0": "gone", "node1": "gone"}}}
    agents("node0", answers_with(node0))
    agents("node1", answers_with(node1))
    code, out, err = run(capsys, "--lab", "fake")
    rows = cells(out)
    assert code == 0 and err == ""
    node0_to_node2 = next(r for r in rows if r[:2] == ["node0", "node2"])
    assert node0_to_node2[2:6] == ["via node1", "sleeve", "yes", "172.31.0.12"]
    assert node0_to_node2[6].endswith("s")  # its age: computed against the clock (see test_age_in_whole_seconds)
    assert ["node0", "2", "10.244.0.0/23", "all"] in rows
    assert ["node3", "node0", "node0: gone, node1: gone", "node0"] in rows
    assert ["web-0", "10.244.0.5", "node0", "30", "2/2"] in rows
    for title in ("Peers (as each node sees them)", "Ring ownership", "Dead peers", "DNS"):
        assert title in out


def test_status_exits_1_on_a_node_that_does_not_answer_without_a_traceback(agents, capsys) -> None:
    node0, _ = mesh()
    agents("node0", answers_with(node0))
    agents("node1")  # its socket is not served
    code, out, err = run(capsys, "status", "--lab", "fake")
    assert code == 1 and "Traceback" not in out + err
    node1_row = next(r for r in cells(out) if r[0] == "node1")
    assert node1_row[2].startswith("no answer: no podnet agent answers on")


def test_status_exits_1_on_an_unreachable_peer(agents, capsys) -> None:
    node0, node1 = mesh()
    node1["peers"][1]["path"] = "unreachable"
    agents("node0", answers_with(node0))
    agents("node1", answers_with(node1))
    code, out, _ = run(capsys, "--lab", "fake")
    assert code == 1 and ["node1", "node2", "direct", "unreachable"] in [r[:4] for r in cells(out)]


def test_status_json_round_trips_the_node_answers(agents, capsys) -> None:
    node0, node1 = mesh()
    agents("node0", answers_with(node0))
    agents("node1", answers_with(node1))
    agents("node2")
    code, out, _ = run(capsys, "--lab", "fake", "-o", "json")
    assert code == 1
    assert json.loads(out) == [node0, node1, {"node": "node2", "error": json.loads(out)[2]["error"]}]
    assert "no podnet agent answers" in json.loads(out)[2]["error"]


def test_rm_asks_the_first_other_node_and_prints_what_moved(agents, capsys) -> None:
    node0, node1 = mesh()
    node0["ring"]["owners"]["node3"] = ["10.244.3.0/24"]
    removed = {"removed": "node3", "taker": "node0", "blocks": ["10.244.3.0/24"]}
    agents("node3", answers_with(status("node3", [])))
    asked = agents("node0", {**answers_with(node0), "gossip.rm": lambda _m: removed})
    agents("node1", answers_with(node1))
    code, out, err = run(capsys, "rm", "node3", "--lab", "fake")
    assert (code, out, err) == (0, "removed peer node3: 1 block(s) (10.244.3.0/24) now owned by node0\n", "")
    assert [m["op"] for m in asked.seen] == ["gossip.status", "gossip.rm"] and asked.seen[1]["peer"] == "node3"


def test_rm_of_the_asked_node_itself_is_refused_before_asking_rm(agents, capsys) -> None:
    node0, _ = mesh()
    asked = agents("node0", {**answers_with(node0), "gossip.rm": lambda m: pytest.fail("rm must not be sent")})
    code, out, err = run(capsys, "rm", "node0", "--socket", str(asked.server_address))
    assert code == 1 and out == ""
    assert err == "podnet: peers rm: peer 'node0' is the asked node itself: ask another node to remove it\n"
    assert [m["op"] for m in asked.seen] == ["gossip.status"]


def test_rm_refused_by_the_agent_shows_its_reason(agents, capsys) -> None:
    node0, _ = mesh()

    def refuse(message: dict) -> dict:
        raise PodnetError(f"peer {message['peer']} is still alive", "it was seen 1s ago")

    agents("node0", {**answers_with(node0), "gossip.rm": refuse})
    code, out, err = run(capsys, "rm", "node1", "--lab", "fake")
    assert (code, out) == (1, "")
    assert err == "podnet: peers rm node1: peer node1 is still alive\n  it was seen 1s ago\n"


def test_rm_of_an_unknown_peer_or_in_a_lab_of_one(agents, capsys) -> None:
    node0, _ = mesh()
    agents("node0", answers_with(node0))
    code, _, err = run(capsys, "rm", "node9", "--lab", "fake")
    assert code == 1 and "peer 'node9' is unknown to node0" in err
    code, _, err = run(capsys, "rm", "node0", "--lab", "fake")
    assert code == 1 and "is the only node" in err

"""`podnet agent`'s gossip flags (cli/agent.py `_gossip_options`, `_cmd_agent`): each bad
value is refused with exit 2 and a message naming its flag; good ones reach the node's
GossipOptions. No agent runs: `run_agent` is replaced, as in test_agent_init.py."""

from __future__ import annotations

import pytest

from podnet.cli import main
from podnet.cluster.options import GOSSIP_PORT


@pytest.fixture
def started(monkeypatch, tmp_path) -> list[tuple]:
    calls: list[tuple] = []
    monkeypatch.setattr("podnet.agent.daemon.run_agent", lambda *args: calls.append(args) or 0)
    monkeypatch.delenv("PODNET_STATE_DIR", raising=False)
    monkeypatch.delenv("PODNET_GOSSIP_PASSWORD", raising=False)
    monkeypatch.setenv("PODNET_AGENT_SOCKET", str(tmp_path / "a.sock"))
    return calls


def gossip(*flags: str) -> list[str]:
    return ["agent", "--node", "n1", "--fabric", "gossip", "--store", "none", *flags]


def refused(argv: list[str], started: list, capsys, *named: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in named), err
    assert started == []
    return err


def options(started: list):
    """The GossipOptions the agent would have started with."""
    (args,) = started
    store, node = args[1], args[4]
    assert store is None  # the node's own store in its state dir
    return node.gossip


def test_a_gossip_node_starts_with_its_options(started, tmp_path):
    key = tmp_path / "secret"
    key.write_text("s3cret\n")
    assert main(gossip("--peer", "10.0.0.2", "--peer", "10.0.0.3:7000", "--ipalloc-init", "n2, n1,n2",
                       "--reclaim-grace", "30", "--dns-domain", "weave.local", "--key-file", str(key))) == 0
    g = options(started)
    assert g.peers == (("10.0.0.2", GOSSIP_PORT), ("10.0.0.3", 7000))
    assert g.ipalloc_init == ("n1", "n2") and g.reclaim_grace == 30.0
    assert g.dns_domain == "weave.local" and g.key_file == str(key)


def test_the_gossip_port_is_the_default_port_of_a_peer(started):
    assert main(gossip("--gossip-port", "7783", "--peer", "10.0.0.2")) == 0
    g = options(started)
    assert g.port == 7783 and g.peers == (("10.0.0.2", 7783),)


def test_gossip_without_a_store_flag_is_taken_as_store_none(started):
    assert main(["agent", "--node", "n1", "--fabric", "gossip"]) == 0
    assert options(started).peers == ()


def test_store_none_without_a_node_is_refused(started, capsys):
    refused(["agent", "--store", "none"], started, capsys, "--store none", "--node")


def test_store_none_with_another_fabric_is_refused(started, capsys):
    refused(["agent", "--node", "n1", "--store", "none"], started, capsys, "--store none", "--fabric gossip")
    refused(["agent", "--node", "n1", "--fabric", "host-gw", "--store", "none"], started, capsys, "--store none")


@pytest.mark.parametrize("store", ["/x", "etcd://127.0.0.1:2379/podnet"])
def test_gossip_with_a_shared_store_is_refused(started, capsys, store):
    refused(["agent", "--node", "n1", "--fabric", "gossip", "--store", store], started, capsys,
            "--fabric gossip", "--store none")


@pytest.mark.parametrize("peer", ["10.0.0.2:99999", "10.0.0.2:0", "10.0.0.2:x", "peer.example.com",
                                  "peer.example.com:6783", "10.0.0.256"])
def test_a_bad_peer_is_refused(started, capsys, peer):
    refused(gossip("--peer", peer), started, capsys, "--peer", peer)


def test_ipalloc_init_without_this_node_needs_a_peer(started, capsys):
    refused(gossip("--ipalloc-init", "n2,n3"), started, capsys, "--ipalloc-init", "n1", "--peer")
    assert main(gossip("--ipalloc-init", "n2,n3", "--peer", "10.0.0.2")) == 0
    assert options(started).ipalloc_init == ("n2", "n3")


def test_a_bad_ipalloc_init_name_is_refused(started, capsys):
    refused(gossip("--ipalloc-init", "n1,bad/name"), started, capsys, "--ipalloc-init", "bad/name")


@pytest.mark.parametrize("grace", ["0.5", "0", "-10"])
def test_a_reclaim_grace_under_one_second_is_refused(started, capsys, grace):
    refused(gossip("--reclaim-grace", grace), started, capsys, "--reclaim-grace")


def test_a_reclaim_grace_of_one_second_is_taken(started):
    assert main(gossip("--reclaim-grace", "1")) == 0
    assert options(started).reclaim_grace == 1.0


def test_a_reclaim_grace_of_nan_is_refused(started, capsys):
    refused(gossip("--reclaim-grace", "nan"), started, capsys, "--reclaim-grace")


@pytest.mark.parametrize("domain", ["bad_domain!", "-x.local", "a..b", ""])
def test_a_bad_dns_domain_is_refused(started, capsys, domain):
    refused(gossip(f"--dns-domain={domain}"), started, capsys, "--dns-domain")


@pytest.mark.parametrize("port", ["0", "65536"])
def test_a_bad_gossip_port_is_refused(started, capsys, port):
    refused(gossip("--gossip-port", port), started, capsys, "--gossip-port")


def test_a_bad_gossip_port_is_named_even_with_a_portless_peer(started, capsys):
    refused(gossip("--gossip-port", "0", "--peer", "10.0.0.2"), started, capsys, "--gossip-port")


def test_a_missing_key_file_is_refused(started, capsys, tmp_path):
    missing = tmp_path / "no-such-key"
    refused(gossip("--key-file", str(missing)), started, capsys, "--key-file", str(missing))
    refused(gossip("--key-file", str(tmp_path)), started, capsys, "--key-file")  # a directory


def test_gossip_flags_are_not_checked_for_another_fabric(started):
    assert main(["agent", "--node", "n1", "--peer", "not-an-address", "--reclaim-grace", "0"]) == 0
    assert started[0][4].gossip is None


def test_an_ipv6_peer_without_a_port_takes_the_gossip_port(started):
    assert main(gossip("--peer", "fd00::2")) == 0
    assert options(started).peers == (("fd00::2", GOSSIP_PORT),)

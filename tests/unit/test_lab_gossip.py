"""`lab up --fabric gossip`'s agent flags (lab/gossip.py): one seed, one ring, one secret."""

from __future__ import annotations

import stat

from podnet.lab.gossip import KEY_FILE, gossip_argv
from podnet.lab.topology import default_topology


def test_every_node_but_the_first_joins_through_the_first_and_the_ring_covers_all():
    topology = default_topology(3, 1)
    seed = topology.nodes[0]
    first = gossip_argv(topology, seed, 6.0, None)
    assert first == ["--ipalloc-init", "node0,node1,node2", "--reclaim-grace", "6.0"]
    other = gossip_argv(topology, topology.nodes[2], 6.0, None)
    assert other == [*first, "--peer", seed.underlay_ip]


def test_with_encrypt_every_agent_reads_one_root_only_secret(tmp_path):
    topology = default_topology(2, 1)
    a = gossip_argv(topology, topology.nodes[0], 10.0, tmp_path)
    b = gossip_argv(topology, topology.nodes[1], 10.0, tmp_path)
    key = tmp_path / KEY_FILE
    assert a[a.index("--key-file") + 1] == b[b.index("--key-file") + 1] == str(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text()) == 64
    secret = key.read_text()
    gossip_argv(topology, topology.nodes[1], 10.0, tmp_path)
    assert key.read_text() == secret  # made once

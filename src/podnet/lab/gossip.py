"""How `lab up --fabric gossip` starts each node's agent: one seed peer, one ring.

Every node joins through the first one (Weave's one seed peer) and the ring is first
split among all the topology's nodes (`--ipalloc-init`, Weave's `seed=`); with
`--encrypt` the lab makes one random cluster secret (root-only) that every agent reads
(`--key-file`), so peers authenticate and pods talk over the encrypted sleeve.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from podnet.fileio import write_atomic
from podnet.lab.topology import Node, Topology

KEY_FILE = "gossip.key"


def gossip_argv(topology: Topology, node: Node, reclaim_grace: float, key_dir: Path | None) -> list[str]:
    """The agent flags of `node`'s gossip (after --store none --fabric gossip);
    `key_dir`: where the lab's secret lives (None: no secret)."""
    seed = topology.nodes[0]
    argv = ["--ipalloc-init", ",".join(n.name for n in topology.nodes), "--reclaim-grace", str(reclaim_grace)]
    if key_dir is not None:
        argv += ["--key-file", str(cluster_key(key_dir))]
    return argv if node.name == seed.name else [*argv, "--peer", seed.underlay_ip]


def cluster_key(key_dir: Path) -> Path:
    """The lab's cluster secret, made once."""
    path = key_dir / KEY_FILE
    if not path.exists():
        write_atomic(path, secrets.token_hex(32), 0o600)
    return path

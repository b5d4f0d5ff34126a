"""A gossip node's saved state (agent/gossip_service.py `_save`/`_load`): the ring and
the documents, with their stamps, outlive a restart; a saved ring of another cluster
shape is not used."""

from __future__ import annotations

from types import SimpleNamespace

from podnet.agent.gossip_service import GossipService
from podnet.cluster.options import NodeOptions
from podnet.gossip.blocks import BlockSpace
from podnet.gossip.peers import GossipPeer
from podnet.gossip.ring_sync import RingSync
from podnet.state import StatePaths

SPACE = BlockSpace.of("10.244.0.0/21", 24)


def service(tmp_path, space: BlockSpace = SPACE) -> GossipService:
    agent = SimpleNamespace(node_options=NodeOptions("n1", "gossip", str(space.cidr), space.prefix),
                            state=StatePaths(tmp_path))
    svc = GossipService(agent)
    svc.space = space
    return svc


def test_the_ring_and_the_documents_outlive_a_restart(tmp_path):
    before = service(tmp_path)
    before.sync = RingSync("n1", SPACE.empty_ring().claim_initial(["n1", "n2"]), 60.0)
    before.peer = GossipPeer("n1", ("127.0.0.1", 0))
    before.peer.put("store/policy/networkpolicies/default/deny", {"spec": {}})
    before.peer.put("store/nodes/n2", {"block": "10.244.4.0/24"})
    before.peer.delete("store/nodes/n2")  # a tombstone is saved too
    before._save(force=True)

    ring, docs = service(tmp_path)._load()
    assert ring == before.sync.ring()
    after = GossipPeer("n1", ("127.0.0.1", 0))
    after.restore(docs)
    for key in ("store/policy/networkpolicies/default/deny", "store/nodes/n2"):
        assert after.document(key) == before.peer.document(key)  # same value, stamp and writer
    assert after.document("store/nodes/n2").deleted


def test_a_saved_ring_of_another_cluster_shape_is_not_used(tmp_path):
    before = service(tmp_path)
    before.sync = RingSync("n1", SPACE.empty_ring().claim_initial(["n1"]), 60.0)
    before.peer = GossipPeer("n1", ("127.0.0.1", 0))
    before._save(force=True)
    ring, _ = service(tmp_path, BlockSpace.of("10.244.0.0/20", 24))._load()
    assert not ring.tokens  # the peers bring this cluster's ring instead

"""EtcdStore: the Store port on an etcd v3 cluster (etcd 3.4+), for real multi-node clusters.

Why etcd: several machines must share IPAM blocks, node leases and endpoints, and
etcd gives exactly the primitives the Store port was modelled on (one global revision,
compare-and-swap transactions, leases, watch from a revision), replicated with Raft.

Mapping (the contract is store/base.py; differences are stated here, once):
- Keys live under `prefix` (default "/podnet/"); values are the UTF-8 JSON text.
- Revisions are etcd's: Entry.revision is the key's mod revision, Event.revision the
  revision of the change. They are cluster-wide, so writes by anyone else in the same
  etcd (other prefixes too) also advance revision(). etcd starts at revision 1 with
  nothing written; revision() reports that as 0, as the other backends do. All writes
  of one transaction (and of one delete_prefix) share one revision, as etcd commits
  them in one Txn.
- TTL: every put with a ttl gets its own lease of ceil(ttl) seconds (etcd raises it to
  its minimum, 1.5 election timeouts). The server expires leases by its own clock: that
  is what removes a dead agent's keys. On top of that, this store judges the leases it
  granted or refreshed itself by its `clock`: such a key is invisible at once when its
  TTL has passed, and the store revokes the lease on its next call that meets it (or
  on its next write or watch), so the expiry is a delete event right away instead of
  up to ~1.5 s later. (Before revoking,
  it asks the server whether someone else kept the lease alive meanwhile; if so, the
  lease is left to them.) Entry.expires_at of a key leased by another client is read
  from the server (LeaseTimeToLive, whole seconds) and reused until about a second
  before it runs out (leases.py; a lookup per foreign lease per listing made every
  listing of a 50-node lab's block claims 50 calls), so it may be early by a
  renewal, never late. list_hint() and snapshot_hint() ask nothing: such a key's
  expiry is the one known already, else None (the agents' loops, 400 lookups a
  second in a 50-node lab, learn of expiries as delete events).
- refresh() is a lease keepalive when the key's lease has the requested TTL: the
  revision does not change. etcd cannot change a lease's TTL nor attach a lease
  without a write, so refresh() of a key with a different TTL, or with no TTL, re-puts
  the same value on a new lease (guarded by the key's revision): the revision changes.
- compare_and_put: one Txn comparing the mod revision (expected 0: create revision 0).
- watch: an etcd watch from from_revision + 1. The stream is kept open between calls
  on the same prefix, so a watch loop pays no set-up per call. etcd 3.4 delivers
  history (a watch starting in the past) from a background loop every 100 ms, and its
  progress notifications are unreliable for such watchers, so a watch that starts in
  the past and finds nothing waits up to _CATCHUP seconds, even with timeout 0, before
  it concludes so. A compacted from_revision raises RevisionCompacted. An empty answer
  after a timeout rests on the watched member's progress answer, not on a read of the
  cluster's head (watch.py); watch_hint's, for loops that watch again anyway, on the
  kept stream's silence alone.
- history: etcd compacts only when told (or with --auto-compaction-*). With
  history=N this store compacts revisions older than head - N after its writes, as
  SqliteStore keeps N events; by default it leaves compaction to the server.

Transactions (etcd has no interactive ones) are optimistic, validated and
all-or-nothing: transactions.py says how. Failover between the members is channel.py's;
threads (one private asyncio loop for all gRPC work) are loop.py's.

The parts, one job each:
- store.py: EtcdStore, the Store API; it only dispatches to the parts below.
- channel.py: endpoints, one gRPC channel per member, failover, gRPC error mapping.
- loop.py: the shared asyncio loop thread and the synchronous calls onto it.
- keys.py: store keys <-> etcd keys under the prefix; revision conventions.
- leases.py: TTL leases: grant, keepalive, revoke, judging our own by our clock.
- operations.py: get/list/put/compare_and_put/delete/refresh outside a transaction,
  and compaction.
- transactions.py: transaction(): snapshot reads, staged writes, the guarded commit.
- tx.py: one thread's open transaction (snapshot revision, reads, staged writes).
- watch.py: watch streams kept open per prefix, catch-up, re-opening after failure.
- grpc_engine.py: the gRPC engine of the process, chosen before grpc is imported.
"""

from podnet.store.etcd import grpc_engine  # noqa: F401 - first: before anything imports grpc
from podnet.store.etcd.channel import parse_endpoints
from podnet.store.etcd.store import DEFAULT_PREFIX, EtcdStore

__all__ = ["DEFAULT_PREFIX", "EtcdStore", "parse_endpoints"]

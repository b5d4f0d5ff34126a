"""SqliteStore: the default Store, one SQLite file shared by every podnet process.

Why SQLite: it is in the standard library (the thin plugin can open it in ~1 ms), it
gives real ACID transactions across processes, and in WAL mode readers never wait
for writers. The plugin, the agent and (in the lab) several nodes' agents open the
same file at once.

Concurrency: every write runs inside `BEGIN IMMEDIATE`, so writers serialise on
SQLite's file lock and a transaction never has to be retried half way. Threads of one
process first queue on a process-local lock (waking at once instead of sleeping in
SQLite's busy handler). Connections are pooled, not per thread, so an agent that
starts a thread per request does not leak one connection per thread.

Two rules keep the processes sharing the file safe: a process never open()+close()s
a live database file (that drops its SQLite locks: schema.py), and a forked child
never uses nor closes a connection it inherited (pool.py).

The parts, one job each (standard library only: podnet-ipam runs on them):
- store.py: SqliteStore, the Store API; it only dispatches to the parts below.
- pool.py: this process's connections to the file, fork safety, busy errors.
- schema.py: the file (its mode) and the tables, created once.
- transactions.py: BEGIN IMMEDIATE / savepoints, which connection a statement runs
  on, compaction of the history on commit.
- operations.py: get/list/put/compare_and_put/delete/refresh, TTL expiry as deletes.
- watch.py: the shared watch tail (one thread per store and process) and watch().
"""

from podnet.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]

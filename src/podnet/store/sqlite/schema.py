"""The store's file and its tables.

Layout:
- `kv(key, value, revision, create_revision, expires_at)`: the live keys;
- `events(revision, kind, key, value)`: the history watch() replays. Its
  AUTOINCREMENT rowid *is* the global revision, so a write costs one insert more;
- `meta(name, value)`: `compacted` = the newest revision dropped from history.
"""

from __future__ import annotations

import os
import sqlite3

from podnet.errors import StoreError
from podnet.store.sqlite.pool import Pool, map_error

SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        revision INTEGER NOT NULL,
        create_revision INTEGER NOT NULL,
        expires_at REAL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS kv_expiry ON kv(expires_at) WHERE expires_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS events (
        revision INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT
    )""",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta(name, value) VALUES ('compacted', 0)",
)


def ensure_schema(pool: Pool, conn: sqlite3.Connection) -> None:
    """Create tables once; later opens only read user_version (fast path)."""
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        pool.retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        pool.retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            for stmt in _SCHEMA:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise map_error(exc, pool.path) from exc


def require_file(path: str) -> None:
    """A store that must exist already (the caller makes no stores)."""
    if not os.path.isfile(path):
        raise StoreError(f"store {path} does not exist",
                         "check the path; podnet makes a store only where told to "
                         "(podnet agent --init, podnet lab up, podnet network create)")


def prepare_path(path: str) -> None:
    """Parent directory 0700 and the file 0600: reservations and leases are not
    every local user's business, and SQLite's -wal/-shm files copy the db's mode."""
    if path == ":memory:" or path.startswith("file:"):
        raise StoreError(f"unsupported store path {path!r}: use memory:// or a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {parent}: {exc}") from exc
    if os.path.exists(path):
        # Never open()+close() a live database: closing any fd of a file drops every
        # POSIX lock this process holds on it, SQLite's included, and another process
        # would then think it is the last user and delete the -wal/-shm files.
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    os.close(fd)

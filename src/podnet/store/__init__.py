"""The Store port and its backends; `open_store` picks one from a URL or a path.

Backends are imported only when asked for, so opening a SQLite store never pays for
another backend's imports.

A SQLite file is made only where the caller says it makes stores (`create=True`, the
default of the library API: the CNI path's dataDir stores, `network create`, `lab up`,
`agent --init`). A command that names an existing cluster (`podnet agent --store`, the
CLI's `--store`/context) passes `create=False`: a mistyped path is an error naming
the path, never a new empty store, which would look like "no policy, no networks".
"""

from __future__ import annotations

import os
from typing import Any

from podnet.errors import InvalidConfig
from podnet.store.base import Entry, Event, RevisionCompacted, Store

__all__ = ["Entry", "Event", "RevisionCompacted", "Store", "missing_store", "open_store", "set_watch_batch"]

_SQLITE = "sqlite://"
_MEMORY = "memory://"
_ETCD = "etcd://"

WATCH_BATCH_RANGE = (0.01, 5.0)  # seconds: below, a busy store's tail would spin; above, a change waits too long
_watch_batch: float | None = None  # set_watch_batch(): this process's stores' batch


def set_watch_batch(seconds: float | None) -> None:
    """How long the stores this process opens from now on gather a busy store's
    changes before their watchers see them (`podnet agent --watch-batch`; None: the
    backend's default: SQLite 0.05 s, etcd none). On SQLite it is the tail's poll (a
    quiet store still wakes its watchers at once); on etcd, how long a watch keeps
    gathering after its first event. It caps how often a stream of changes makes every
    loop of the process react, as kube-proxy's --iptables-min-sync-period does. Why it
    is a setting: each agent of a lab crowded onto two CPUs reacting to every commit of
    a stream of pods kept the machine saturated (lab/crowding.py)."""
    global _watch_batch
    if seconds is not None:
        low, high = WATCH_BATCH_RANGE
        if not low <= seconds <= high:  # (also refuses nan)
            raise InvalidConfig(f"watch batch {seconds:g}s is out of range",
                                f"give {low:g} to {high:g} seconds")
    _watch_batch = seconds


def open_store(url_or_path: str, *, create: bool = True, **options: Any) -> Store:
    """A Store for a location: "memory://" -> MemoryStore; "sqlite:///abs/path",
    "sqlite://rel/path" or a bare path -> SqliteStore;
    "etcd://host:port[,host:port...][/prefix]" -> EtcdStore (prefix default /podnet/).
    `create=False`: a SQLite file that does not exist is a StoreError naming it (and
    nothing is made, not even its directory). Options go to the backend."""
    target = str(url_or_path)
    if target.startswith(_MEMORY):
        from podnet.store.memory import MemoryStore

        return MemoryStore(**options)
    if target.startswith(_ETCD):
        if _watch_batch is not None:
            options.setdefault("watch_batch", _watch_batch)
        return _open_etcd(target, options)
    path = _sqlite_path(target)
    from podnet.store.sqlite import SqliteStore

    if _watch_batch is not None:
        options.setdefault("poll_interval", _watch_batch)
    return SqliteStore(path, create=create, **options)


def missing_store(url_or_path: str) -> str | None:
    """The file of a SQLite location that does not exist yet; None when it exists or
    the location is not a file (memory://, etcd://: nothing to look for)."""
    target = str(url_or_path)
    if target.startswith((_MEMORY, _ETCD)):
        return None
    path = _sqlite_path(target)
    return None if os.path.exists(path) else path


def _sqlite_path(target: str) -> str:
    if not target:
        raise InvalidConfig("store location is empty")
    if target.startswith(_SQLITE):
        path = target[len(_SQLITE) :]
        if not path:
            raise InvalidConfig(f"store URL {target!r} names no file")
        return path
    if "://" in target:
        scheme = target.split("://", 1)[0]
        raise InvalidConfig(
            f"unsupported store URL {target!r}",
            f"scheme {scheme!r} is unknown; use memory://, sqlite:///path, etcd://host:port or a path",
        )
    return target


def _open_etcd(url: str, options: dict[str, Any]) -> Store:
    """etcd://h1:p1,h2:p2/some/prefix -> EtcdStore(["h1:p1", "h2:p2"], "/some/prefix/")."""
    hosts, _, path = url[len(_ETCD) :].partition("/")
    if not hosts:
        raise InvalidConfig(f"store URL {url!r} names no etcd endpoint")
    try:
        from podnet.store.etcd import DEFAULT_PREFIX, EtcdStore
    except ImportError as exc:
        raise InvalidConfig(
            f"store URL {url!r} needs the etcd client", f"pip install aetcd ({exc})"
        ) from exc
    prefix = f"/{path.strip('/')}/" if path.strip("/") else DEFAULT_PREFIX
    return EtcdStore(hosts, prefix, **options)

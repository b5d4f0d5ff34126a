"""The Store port and its backends; `open_store` picks one from a URL or a path.

Backends are imported only when asked for, so opening a SQLite store never pays for
another backend's imports.
"""

from __future__ import annotations

from typing import Any

from podnet.errors import InvalidConfig
from podnet.store.base import Entry, Event, RevisionCompacted, Store

__all__ = ["Entry", "Event", "RevisionCompacted", "Store", "open_store"]

_SQLITE = "sqlite://"
_MEMORY = "memory://"
_ETCD = "etcd://"


def open_store(url_or_path: str, **options: Any) -> Store:
    """A Store for a location: "memory://" -> MemoryStore; "sqlite:///abs/path",
    "sqlite://rel/path" or a bare path -> SqliteStore;
    "etcd://host:port[,host:port...][/prefix]" -> EtcdStore (prefix default /podnet/).
    Options go to the backend."""
    target = str(url_or_path)
    if not target:
        raise InvalidConfig("store location is empty")
    if target.startswith(_MEMORY):
        from podnet.store.memory import MemoryStore

        return MemoryStore(**options)
    if target.startswith(_ETCD):
        return _open_etcd(target, options)
    if target.startswith(_SQLITE):
        target = target[len(_SQLITE) :]
        if not target:
            raise InvalidConfig(f"store URL {url_or_path!r} names no file")
    elif "://" in target:
        scheme = target.split("://", 1)[0]
        raise InvalidConfig(
            f"unsupported store URL {url_or_path!r}",
            f"scheme {scheme!r} is unknown; use memory://, sqlite:///path, etcd://host:port or a path",
        )
    from podnet.store.sqlite import SqliteStore

    return SqliteStore(target, **options)


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

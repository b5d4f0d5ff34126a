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


def open_store(url_or_path: str, **options: Any) -> Store:
    """A Store for a location: "memory://" -> MemoryStore; "sqlite:///abs/path",
    "sqlite://rel/path" or a bare path -> SqliteStore. Options go to the backend."""
    target = str(url_or_path)
    if not target:
        raise InvalidConfig("store location is empty")
    if target.startswith(_MEMORY):
        from podnet.store.memory import MemoryStore

        return MemoryStore(**options)
    if target.startswith(_SQLITE):
        target = target[len(_SQLITE) :]
        if not target:
            raise InvalidConfig(f"store URL {url_or_path!r} names no file")
    elif "://" in target:
        scheme = target.split("://", 1)[0]
        raise InvalidConfig(
            f"unsupported store URL {url_or_path!r}",
            f"scheme {scheme!r} is unknown; use memory://, sqlite:///path or a path",
        )
    from podnet.store.sqlite import SqliteStore

    return SqliteStore(target, **options)

"""The stores that hold endpoints of this machine, noted where the agent finds them.

A network keeps its endpoints in the store its config names (`store`, `dataDir`), else
in the default store of whoever serves it: the agent's `--store`, or the plugin's
fallback's default (/var/lib/podnet/store.db) when no agent answers. The agent's
start-up resync must know every one of them, or it deletes the links and NAT rules of
their pods as orphans (issue 10, item 5). So:

- The fallback notes each store it ADDs into in the directory beside the agent socket
  it stood in for (`<socket>.stores/`, one file per store, named by a hash of its
  location, holding the location as JSON). It knows that socket (it just found no
  agent there), and so does the agent: the one thing both always share, lab nodes
  included (one socket each).
- The agent remembers every store it opens under `meta/stores/` of its own store,
  which survives a reboot (/run does not). Its resync reads both, and remembers the
  noted stores from then on.

Locations read back are checked again before they are opened. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress

from podnet import keys
from podnet.fileio import write_atomic
from podnet.store.base import Store

REGISTRY_SUFFIX = ".stores"
_URL_SCHEMES = ("etcd://", "sqlite:///")


def registry_for(socket_path: str) -> str:
    """The directory where stores used for the agent at `socket_path` are noted."""
    return socket_path + REGISTRY_SUFFIX


def is_location(value: object) -> bool:
    """A store location as configs name them: an absolute path, sqlite:///path or an
    etcd:// URL (memory:// holds nothing another process could find)."""
    return (isinstance(value, str) and "\n" not in value and "\0" not in value
            and (value.startswith(_URL_SCHEMES) or (value.startswith("/") and "://" not in value)))


def exists(location: str) -> bool:
    """Could the store still hold anything? An SQLite file must exist (opening one
    would create it); an etcd URL is asked."""
    if location.startswith("etcd://"):
        return True
    return os.path.exists(location.removeprefix("sqlite://"))


def note(registry: str, location: str) -> None:
    """Note a store in the registry (once; atomically). Best effort: a registry that
    cannot be written must not fail a CNI call (the agent then may not know the store)."""
    if not is_location(location):
        return
    path = os.path.join(registry, hashlib.sha256(location.encode()).hexdigest()[:16])
    if os.path.exists(path):
        return
    with suppress(OSError):  # the writer removes its temp file on failure
        os.makedirs(registry, mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps(location), 0o600)


def noted(registry: str) -> list[str]:
    """Every location noted in the registry, in the order of the notes' names;
    unreadable notes and locations that are none are skipped."""
    try:
        names = sorted(os.listdir(registry))
    except OSError:
        return []
    found = []
    for name in names:
        if name.endswith(".tmp"):
            continue
        try:
            with open(os.path.join(registry, name), encoding="utf-8") as f:
                location = json.loads(f.read(8192))
        except (OSError, ValueError):
            continue
        if is_location(location) and location not in found:
            found.append(location)
    return found


def remember(default: Store, location: str) -> None:
    """Remember a store under `meta/stores/` of the agent's own store."""
    key = keys.stored_store(location)
    if default.get(key) is None:
        default.put(key, json.dumps(location))


def known(default: Store, default_location: str, registry: str | None, remember_noted: bool) -> list[str]:
    """The default store's location, then every store it remembers and every store
    noted in the registry, that still exists. `remember_noted` (the agent): noted ones
    are remembered from now on, since the registry lives in /run."""
    remembered = []
    for entry in default.list(keys.STORES):
        try:
            location = json.loads(entry.value)
        except ValueError:
            continue
        if is_location(location):
            remembered.append(location)
    locations = [default_location]
    for location in remembered + (noted(registry) if registry else []):
        if location in locations or not exists(location):
            continue
        if remember_noted and location not in remembered:
            remember(default, location)
        locations.append(location)
    return locations

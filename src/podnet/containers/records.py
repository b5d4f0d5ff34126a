"""The `containers/<name>` records. Every write is a compare-and-put, so two `run
--name x` at once cannot both win, and a reaper that is late never overwrites a newer
container that reused the name (updates are keyed by name *and* id)."""

from __future__ import annotations

import json
from collections.abc import Callable

from podnet.containers.spec import ContainerNotFound, NameInUse
from podnet.store.base import Store, dumps

PREFIX = "containers/"


def key(name: str) -> str:
    return PREFIX + name


class Records:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, name: str) -> dict | None:
        return self.store.get_json(key(name))

    def require(self, name: str) -> dict:
        record = self.get(name)
        if record is None:
            raise ContainerNotFound(f"no such container: {name}")
        return record

    def list(self) -> list[dict]:
        return [entry.json() for entry in self.store.list(PREFIX)]

    def create(self, record: dict) -> None:
        if self.store.compare_and_put(key(record["name"]), dumps(record), 0) is None:
            raise NameInUse(
                f"container name {record['name']!r} is already in use",
                f"remove it first (podnet container rm {record['name']}) or choose another --name",
            )

    def update(self, name: str, container_id: str, change: Callable[[dict], dict | None]) -> dict | None:
        """Apply `change` to the record of this very container (name and id) and
        write it back atomically; `change` returns None to leave it alone. Returns
        the written record, or None (absent, another id, or no change)."""
        while True:
            entry = self.store.get(key(name))
            if entry is None:
                return None
            current = json.loads(entry.value)
            if current.get("id") != container_id:
                return None
            new = change(dict(current))
            if new is None:
                return None
            if self.store.compare_and_put(key(name), dumps(new), entry.revision) is not None:
                return new

    def patch(self, name: str, container_id: str, **fields: object) -> dict | None:
        return self.update(name, container_id, lambda rec: {**rec, **fields})

    def delete(self, name: str, container_id: str) -> bool:
        entry = self.store.get(key(name))
        if entry is None or json.loads(entry.value).get("id") != container_id:
            return False
        return self.store.delete(key(name), expected_revision=entry.revision)

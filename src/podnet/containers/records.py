"""The `containers/<name>` records. Every write is a compare-and-put, so two `run
--name x` at once cannot both win, and a reaper that is late never overwrites a newer
container that reused the name (updates are keyed by name *and* id)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from podnet import keys
from podnet.containers.spec import ContainerNotFound, NameInUse
from podnet.model.base import CorruptRecord
from podnet.model.container import ContainerRecord
from podnet.store.base import Entry, Store

log = logging.getLogger("podnet.containers")


class Records:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._reported: set[tuple[str, int]] = set()

    def get(self, name: str) -> ContainerRecord | None:
        """The record, None if absent; CorruptRecord if it does not decode (so
        `inspect` says what is wrong with it)."""
        entry = self.store.get(keys.container(name))
        return None if entry is None else ContainerRecord.from_entry(entry)

    def require(self, name: str) -> ContainerRecord:
        record = self.get(name)
        if record is None:
            raise ContainerNotFound(f"no such container: {name}")
        return record

    def list(self) -> list[ContainerRecord]:
        """Every container whose record decodes. A corrupt one is skipped, as `ls` and
        the agent's sweep always passed over what they could not use, with a warning
        once per written value (the sweep lists every few seconds)."""
        out = []
        for entry in self.store.list(keys.CONTAINERS):
            try:
                out.append(ContainerRecord.from_entry(entry))
            except CorruptRecord as err:
                self._report(entry, err)
        return out

    def create(self, record: ContainerRecord) -> None:
        if self.store.compare_and_put(record.key, record.encode(), 0) is None:
            raise NameInUse(
                f"container name {record.name!r} is already in use",
                f"remove it first (podnet container rm {record.name}) or choose another --name",
            )

    def update(self, name: str, container_id: str,
               change: Callable[[ContainerRecord], ContainerRecord | None]) -> ContainerRecord | None:
        """Apply `change` to the record of this very container (name and id) and
        write it back atomically; `change` returns None to leave it alone. Returns
        the written record, or None (absent, another id, or no change)."""
        key = keys.container(name)
        while True:
            entry = self.store.get(key)
            if entry is None:
                return None
            current = ContainerRecord.from_entry(entry)
            if current.id != container_id:
                return None
            new = change(current)
            if new is None:
                return None
            if self.store.compare_and_put(key, new.encode(), entry.revision) is not None:
                return new

    def patch(self, name: str, container_id: str, **fields: object) -> ContainerRecord | None:
        return self.update(name, container_id, lambda rec: rec.but(**fields))

    def delete(self, name: str, container_id: str) -> bool:
        entry = self.store.get(keys.container(name))
        if entry is None or ContainerRecord.from_entry(entry).id != container_id:
            return False
        return self.store.delete(entry.key, expected_revision=entry.revision)

    def _report(self, entry: Entry, err: CorruptRecord) -> None:
        if (entry.key, entry.revision) not in self._reported:
            self._reported.add((entry.key, entry.revision))
            log.warning("skipping %s", err.msg)

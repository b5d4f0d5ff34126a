"""One thread's open etcd transaction (transactions.py): its snapshot, what it read,
what it will write."""

from __future__ import annotations

from dataclasses import dataclass, field

from podnet.store.base import Entry


@dataclass(slots=True)
class Staged:
    """A write a transaction will send at commit; value None is a delete; keep != 0
    is a refresh of that existing lease (a keepalive after commit, not a write)."""

    value: str | None
    ttl: float | None
    expires_at: float | None
    base: Entry | None  # the key in the snapshot
    keep: int = 0


@dataclass(slots=True)
class Tx:
    """One thread's open transaction: its snapshot, what it read, what it will write."""

    depth: int = 1
    floor: int = 0  # the newest revision this store had seen when the block began
    rev: int | None = None  # snapshot revision (the first read's)
    staged: dict[str, Staged] = field(default_factory=dict)
    undo: list[tuple[str, Staged | None]] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)
    reads: dict[str, int] = field(default_factory=dict)  # key -> mod revision (0: absent)
    listed: dict[str, int] = field(default_factory=dict)  # keys seen only through list()
    ranges: set[tuple[bytes, bytes]] = field(default_factory=set)
    seen: dict[str, tuple[Entry | None, int]] = field(default_factory=dict)  # entry, lease

    def provisional(self) -> int:
        return (self.floor if self.rev is None else self.rev) + 1

    def stage(self, key: str, staged: Staged) -> None:
        self.undo.append((key, self.staged.get(key)))
        self.staged[key] = staged

    def rollback_to(self, mark: int) -> None:
        while len(self.undo) > mark:
            key, old = self.undo.pop()
            if old is None:
                self.staged.pop(key, None)
            else:
                self.staged[key] = old

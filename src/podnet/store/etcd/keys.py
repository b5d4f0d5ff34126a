"""Store keys and revisions as etcd sees them: keys live under the store's prefix."""

from __future__ import annotations

from aetcd import rpc

from podnet.store.base import check_key


def range_end(start: bytes) -> bytes:
    """etcd's range end for "every key starting with start" (b"\\0": to the end)."""
    stripped = start.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def within(key: bytes, start: bytes, end: bytes) -> bool:
    return start <= key and (end == b"\0" or key < end)


def user_revision(revision: int) -> int:
    """etcd's revision 1 is a new cluster with nothing written: the contract says 0."""
    return 0 if revision <= 1 else revision


def mod_is(raw: bytes, revision: int) -> rpc.Compare:
    """The Txn compare "raw's mod revision is still `revision`" (0: still absent)."""
    return rpc.Compare(
        key=raw, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision
    )


class Keyspace:
    """The prefix podnet's keys live under: store keys to etcd keys and back."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode()

    def key(self, key: str) -> bytes:
        return self.prefix + check_key(key).encode()

    def range(self, prefix: str) -> tuple[bytes, bytes]:
        start = self.prefix + prefix.encode()
        return (start or b"\0"), range_end(start)

    def name(self, raw: bytes) -> str:
        return raw[len(self.prefix) :].decode()

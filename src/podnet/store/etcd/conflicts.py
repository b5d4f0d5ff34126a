"""Which of a failed transaction's reads no longer hold: the keys and prefixes a
StoreConflict names, so a conflict in the field says what it lost to.

Only the failure path pays for it: one read-only Txn per max_txn_ops keys read (each
key's current mod revision against the one the block saw) and one small Range per
prefix listed (a key written there after the snapshot). The answer is what is true a
moment after the commit failed, so it may name a later write as well; it explains,
it never decides anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aetcd import rpc

from podnet.store.etcd.channel import Channel
from podnet.store.etcd.keys import Keyspace

SHOWN = 4  # culprits named in the message; the rest are counted


async def culprits(
    channel: Channel,
    keys: Keyspace,
    seen: dict[str, int],
    ranges: Iterable[tuple[bytes, bytes]],
    snapshot: int,
    max_ops: int,
) -> list[str]:
    """What changed since `snapshot`: keys of `seen` (key -> mod revision the block saw,
    0: absent) whose mod revision moved, and for each listed range the prefix with the
    first key written there after the snapshot (`prefix*: key`)."""
    out: list[str] = []
    items = sorted(seen.items())
    for start in range(0, len(items), max_ops):
        chunk = items[start : start + max_ops]
        reads = [rpc.RequestOp(request_range=rpc.RangeRequest(key=keys.key(k), keys_only=True)) for k, _ in chunk]
        resp = await channel.kv("Txn", rpc.TxnRequest(success=reads), "a conflict's explanation")
        for (key, was), answer in zip(chunk, resp.responses, strict=True):
            kvs = answer.response_range.kvs
            now = int(kvs[0].mod_revision) if kvs else 0
            if now != was:
                out.append(key)
    for begin, end in sorted(ranges):
        request = rpc.RangeRequest(key=begin, range_end=end, keys_only=True, limit=1,
                                   min_mod_revision=snapshot + 1)
        resp: Any = await channel.kv("Range", request, "a conflict's explanation")
        if resp.kvs:
            out.append(f"{keys.name(begin)}*: {keys.name(resp.kvs[0].key)}")
    return out


def describe(found: list[str] | None) -> str:
    """`found` for a message: the first few, and how many more (None: unknown)."""
    if found is None:
        return "what changed could not be read"
    if not found:
        return "changed meanwhile: nothing any more (a write that came and went)"
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return "changed meanwhile: " + ", ".join(found[:SHOWN]) + more

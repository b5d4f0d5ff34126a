"""Who owns an in-flight operation, and is that owner still alive?

A pid alone is not enough (pids are reused), so an owner names the start time too,
from /proc/<pid>/stat. And a pid means something only in the /proc of the machine
(and boot) that wrote it, while a store may be shared by many machines: so an owner
tag written into a shared record is `<node>:<boot_id>:<pid>:<starttime>`
(podnet/identity.py decides the node). A tag of another node is not this machine's to
judge: it is never "dead" here. Tags written before nodes were recorded,
`<pid>:<starttime>`, are judged in the local /proc as they always were (the caller
checks first that the record is of its own namespace). Resync and IPAM roll back work
whose owner is dead. Standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

ALIVE = "alive"
DEAD = "dead"
FOREIGN = "foreign"  # another node's process: not ours to judge


@dataclass(frozen=True)
class Owner:
    """One parsed owner tag; `node` and `boot_id` are empty in a tag of before."""

    pid: int
    start: str
    node: str = ""
    boot_id: str = ""


def parse_owner(tag: str) -> Owner | None:
    """The owner a tag names, or None when it names nobody we could check."""
    parts = tag.rsplit(":", 3)
    if len(parts) == 2:
        node, boot_id, (pid_text, start) = "", "", parts
    elif len(parts) == 4 and parts[0] and parts[1]:
        node, boot_id, pid_text, start = parts
    else:
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    return Owner(pid, start, node, boot_id) if pid > 0 else None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after "pid (comm)"), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.rsplit(")", 1)[1].split()


def process_owner(pid: int | None = None, node: str = "", boot_id: str = "") -> str:
    """This process's (or pid's) owner tag, "pid:starttime", where starttime is field
    22 of /proc/<pid>/stat (clock ticks since boot): unlike the pid alone, it is
    unique for the life of the machine. With a node and a boot id (a record others may
    read), "<node>:<boot_id>:pid:starttime"."""
    pid = os.getpid() if pid is None else pid
    fields = _stat_fields(pid)
    tag = f"{pid}:{fields[19] if fields else 0}"
    return f"{node}:{boot_id}:{tag}" if node and boot_id else tag


def owner_state(tag: str, names: Collection[str] = (), boot_id: str = "") -> str:
    """ALIVE, DEAD or FOREIGN, as seen from the node known as `names` in boot `boot_id`.
    An owner of this node from another boot is dead (its processes went with it); a
    vanished pid, a zombie, or a pid now used by another process (different start
    time) all count as dead; a tag that names nobody is dead (nobody is coming back)."""
    owner = parse_owner(tag)
    if owner is None:
        return DEAD
    if owner.node:
        if owner.node not in names:
            return FOREIGN
        if owner.boot_id != boot_id:
            return DEAD
    try:
        fields = _stat_fields(owner.pid)
    except OSError:
        return ALIVE  # cannot tell (permissions): keep what it holds
    if fields is None or fields[0] in ("Z", "X"):
        return DEAD
    return ALIVE if fields[19] == owner.start else DEAD


def owner_alive(tag: str, names: Collection[str] = (), boot_id: str = "") -> bool:
    """False only for an owner provably dead: another node's owner counts as alive
    (its own node judges it)."""
    return owner_state(tag, names, boot_id) != DEAD


def cmdline(pid: int) -> list[str]:
    """A process's argv from /proc ([] when it is gone): how a daemon found by its pid
    file is checked to be the one meant before it is signalled."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def running(pid: int) -> bool:
    """Whether `pid` runs: a zombie has ended (its parent, not us, reaps it)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return False
    return fields is not None and fields[0] not in ("Z", "X")

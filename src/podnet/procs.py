"""Who owns an in-flight operation, and is that owner still alive?

A pid alone is not enough (pids are reused), so an owner is "pid:starttime" with the
start time from /proc/<pid>/stat. Resync and IPAM roll back work whose owner is dead.
Standard library only.
"""

from __future__ import annotations

import os


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after "pid (comm)"), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.rsplit(")", 1)[1].split()


def process_owner(pid: int | None = None) -> str:
    """This process's (or pid's) owner tag, "pid:starttime", where starttime is field
    22 of /proc/<pid>/stat (clock ticks since boot): unlike the pid alone, it is
    unique for the life of the machine."""
    pid = os.getpid() if pid is None else pid
    fields = _stat_fields(pid)
    return f"{pid}:{fields[19] if fields else 0}"


def owner_alive(owner: str) -> bool:
    """Is the process named by `owner` still running? A vanished pid, a zombie, or a
    pid now used by another process (different start time) all count as dead."""
    pid_text, _, start = owner.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False  # no owner we can check: nobody is coming back for it
    if pid <= 0:
        return False
    try:
        fields = _stat_fields(pid)
    except OSError:
        return True  # cannot tell (permissions): keep the reservation
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return fields[19] == start


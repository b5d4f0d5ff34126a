"""Who owns an in-flight operation, and is that owner still alive?

A pid alone is not enough (pids are reused), so an owner is "pid:starttime" with the
start time from /proc/<pid>/stat. Resync rolls back work whose owner is dead.
Standard library only.
"""

from __future__ import annotations

import os


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parens: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


def identity(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_time(pid) or '0'}"


def is_alive(owner: str) -> bool:
    pid_text, _, start = owner.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    current = _start_time(pid)
    return current is not None and current == start

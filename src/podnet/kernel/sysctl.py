"""Network sysctls of the *calling thread's* namespace: the one place podnet writes them.

/proc/sys/net resolves against the network namespace of the thread that opens it, so a
caller inside `netns.entered(fd)` reads and writes that namespace's settings. Every
write is skipped when the value is already there (no needless churn, and it works on a
read-only /proc/sys where nothing has to change). Names are dotted as `sysctl(8)`
spells them (`net.ipv4.ip_forward`); a part that itself holds dots (an interface
name such as `eth0.10`) is passed as its own argument to `path`.
"""

from __future__ import annotations

import os

from podnet.errors import KernelError

PROC_SYS = "/proc/sys"


def path(name: str, *parts: str, root: str = PROC_SYS) -> str:
    """`net.ipv4.conf`, "eth0", "route_localnet" -> /proc/sys/net/ipv4/conf/eth0/route_localnet.
    Every part is one path segment: "/" or ".." cannot lead out of /proc/sys."""
    segments = [*name.split("."), *parts]
    if any(not s or s in (".", "..") or "/" in s or "\0" in s for s in segments):
        raise KernelError(f"invalid sysctl name {'.'.join(segments)!r}")
    return os.path.join(root, *segments)


def read(name: str, *parts: str, root: str = PROC_SYS) -> str | None:
    """The current value, or None when this kernel or namespace has no such setting."""
    try:
        with open(path(name, *parts, root=root)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KernelError(f"cannot read sysctl {name}: {exc.strerror}") from None


def ensure(name: str, value: str | int, *parts: str, root: str = PROC_SYS) -> bool:
    """Set the sysctl to `value` unless it already has it; True when it was written.
    KernelError (with the setting's name) when it cannot be read or written."""
    target = path(name, *parts, root=root)
    want = str(value)
    try:
        with open(target) as f:
            if f.read().strip() == want:
                return False
        with open(target, "w") as f:
            f.write(want + "\n")
    except OSError as exc:
        raise KernelError(f"cannot set {'.'.join([name, *parts])} = {want}: {exc.strerror}",
                          details=target) from None
    return True

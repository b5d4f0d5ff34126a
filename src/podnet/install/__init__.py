"""Putting podnet on a machine, and taking it off again.

    cni.py        the CNI executables (`podnet`, `podnet-ipam`) and the default conflist
    systemd.py    the agent as a systemd unit, its directories and a config file skeleton
    uninstall.py  the reverse of both

Every path can be put under a root directory (`--root DIR`, like DESTDIR): the files
land under it while their contents name the paths as they will be on the machine, so
tests and packagers need neither root nor systemd.
"""

from __future__ import annotations

from pathlib import Path


def under(root: str | Path, path: str | Path) -> Path:
    """`path` as it lies under `root`; "/" is the machine itself (relative paths stay)."""
    if Path(root) == Path("/"):
        return Path(path)
    return Path(root) / str(path).lstrip("/")

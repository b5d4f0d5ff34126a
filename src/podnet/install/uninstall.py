"""`podnet uninstall`: the reverse of `podnet install-cni [--systemd]`.

It removes only what is provably its own: executables and a unit that carry
install-cni's marker, and the default conflist only while it is byte-identical to
what install-cni writes (a user's edit is kept, and said so). `purge` also removes the
state directory (the store) and the config file. Idempotent: what is already gone is
skipped, and nothing left to remove is success.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from podnet.defaults import (
    DEFAULT_BRIDGE,
    DEFAULT_CONFIG,
    DEFAULT_NETWORK,
    DEFAULT_SUBNET,
    DEFAULT_UNIT_DIR,
    UNIT,
)
from podnet.install import under
from podnet.install.cni import (
    MARKER,
    PLUGINS,
    conflist_path,
    conflist_text,
)
from podnet.install.systemd import STATE_DIR, systemctl, systemd_running

NOT_OURS = "not written by podnet install-cni"


def _ours(path: Path) -> bool:
    with open(path, "rb") as f:
        return MARKER.encode() in f.read(4096)


def _remove_if_ours(path: Path) -> str | None:
    if not (path.is_file() or path.is_symlink()):
        return None
    if not _ours(path):
        return f"kept {path} ({NOT_OURS})"
    path.unlink()
    return f"removed {path}"


def remove_unit(root: str, unit_dir: str) -> list[str]:
    """Stop and disable the agent first (systemd), then remove its unit file."""
    unit = under(root, unit_dir) / UNIT
    if not unit.is_file():
        return []
    if not _ours(unit):
        return [f"kept {unit} ({NOT_OURS})"]
    running = systemd_running(root)
    lines = [systemctl("disable", "--now", UNIT)] if running else []
    unit.unlink()
    lines.append(f"removed {unit}")
    if running:
        lines.append(systemctl("daemon-reload"))
    return lines


def remove_conflist(path: Path, network: str, subnet: str, bridge: str) -> str | None:
    if not path.is_file():
        return None
    if path.read_bytes() != conflist_text(network, subnet, bridge).encode():
        return f"kept {path} (it differs from what install-cni writes: edited, or other --network/--subnet/--bridge)"
    path.unlink()
    return f"removed {path}"


def purge(root: str, config: str) -> list[str]:
    lines = []
    state = under(root, STATE_DIR)
    if state.is_dir():
        shutil.rmtree(state)
        lines.append(f"removed {state}")
    conf = under(root, config)
    if conf.is_file():
        conf.unlink()
        lines.append(f"removed {conf}")
    return lines


def uninstall(*, root: str = "/", bin_dir: str | None = None, conf_dir: str | None = None,
              network: str = DEFAULT_NETWORK, subnet: str = DEFAULT_SUBNET, bridge: str = DEFAULT_BRIDGE,
              systemd: bool = False, unit_dir: str = DEFAULT_UNIT_DIR, purge_all: bool = False,
              config: str = DEFAULT_CONFIG) -> list[str]:
    """Everything removed or kept, one line each (the agent is stopped first)."""
    lines: list[str | None] = []
    if systemd:
        lines += remove_unit(root, unit_dir)
    if bin_dir:
        lines += [_remove_if_ours(under(root, bin_dir) / name) for name in PLUGINS]
    if conf_dir:
        lines.append(remove_conflist(conflist_path(under(root, conf_dir), network), network, subnet, bridge))
    if purge_all:
        lines += purge(root, config)
    return [line for line in lines if line]

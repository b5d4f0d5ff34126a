"""`podnet install-cni`: write the CNI executables (and optionally a conflist).

The executables run `/usr/bin/python3 -IS` (isolated, no site): start-up stays ~12 ms
and no environment variable can redirect their imports. The directory podnet is
imported from (the source tree, or the site-packages of the venv the wheel went into)
is put on sys.path explicitly, and the site-packages that hold pyroute2 are only
appended when the plugin must fall back to in-process work.
"""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path

from podnet.defaults import DEFAULT_BRIDGE, DEFAULT_NETWORK, DEFAULT_SUBNET
from podnet.fileio import write_atomic

PLUGINS = {"podnet": "podnet.cni.plugin", "podnet-ipam": "podnet.cni.ipam_plugin"}
# What `podnet uninstall` looks for before it removes a file: it removes only its own.
MARKER = "Installed by `podnet install-cni`"

TEMPLATE = """#!/usr/bin/python3 -IS
# {marker}; regenerate rather than edit.
import sys
sys.path.insert(0, {src!r})
from {module} import exec_main
exec_main({fallback!r})
"""


def source_root() -> str:
    import podnet

    return str(Path(podnet.__file__).resolve().parent.parent)


def fallback_paths() -> list[str]:
    """Where pyroute2 lives (the venv's site-packages), for the in-process fallback."""
    import pyroute2

    return [str(Path(pyroute2.__file__).resolve().parent.parent)]


def default_conflist(name: str, subnet: str, bridge: str) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "podnet",
                "bridge": bridge,
                "isGateway": True,
                "isDefaultGateway": True,
                "ipMasq": True,
                # "ips" too: for `--ip` podman 4 (CNI backend) otherwise replaces this
                # plugin's whole "capabilities" with {"ips": true}, dropping portMappings.
                "capabilities": {"portMappings": True, "ips": True},
                "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": subnet}]]},
            }
        ],
    }


def conflist_text(name: str, subnet: str, bridge: str) -> str:
    """The default conflist byte for byte (uninstall removes it only if unchanged)."""
    return json.dumps(default_conflist(name, subnet, bridge), indent=2) + "\n"


def conflist_path(conf_dir: str | Path, network: str) -> Path:
    return Path(conf_dir) / f"10-{network}.conflist"


def install_cni(
    bin_dir: str,
    conf_dir: str | None = None,
    network: str = DEFAULT_NETWORK,
    subnet: str = DEFAULT_SUBNET,
    bridge: str = DEFAULT_BRIDGE,
) -> list[str]:
    written = []
    target = Path(bin_dir)
    target.mkdir(parents=True, exist_ok=True)
    src, fallback = source_root(), fallback_paths()
    for name, module in PLUGINS.items():
        path = target / name
        # atomic, and a temp file per writer: installs in parallel never fail, and a
        # runtime never execs a half-written file
        write_atomic(path, TEMPLATE.format(marker=MARKER, src=src, module=module, fallback=fallback), 0o755)
        written.append(str(path))
    if conf_dir:
        path = conflist_path(conf_dir, network)
        path.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileExistsError):  # an existing conflist is never overwritten
            write_atomic(path, conflist_text(network, subnet, bridge), replace=False)
            written.append(str(path))
    return written

"""`podnet install-cni`: write the CNI executables (and optionally a conflist).

The Python executables run `/usr/bin/python3 -IS` (isolated, no site): start-up stays
~12 ms and no environment variable can redirect their imports. The directory podnet is
imported from (the source tree, or the site-packages of the venv the wheel went into)
is put on sys.path explicitly, and the site-packages that hold pyroute2 are only
appended when the plugin must fall back to in-process work.

`podnet` itself is a compiled exec shim when a C compiler (`cc`, and on Debian the libc
headers of libc6-dev) is on the PATH (issue 19:
the interpreter's start-up alone costs more than a Go plugin's whole call). The shim
(podnet/cni/shim/podnet_cni_shim.c) forwards to the agent exactly as the Python
plugin's fast path does, and execs the Python plugin, written beside it as
`podnet-python`, for everything else (no agent: the in-process fallback). The shim is
compiled here, into the bin dir, at install time (no binary in git or in the wheel),
and only again when its source or the compiler changed. Without a compiler, or with
PODNET_CNI_SHIM=0, `podnet` is the Python plugin, as before the shim.

    bin dir/podnet          the shim (or the Python plugin)
    bin dir/podnet-python   the Python plugin the shim execs (only beside a shim)
    bin dir/podnet-ipam     the IPAM plugin (Python)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path

from podnet.defaults import DEFAULT_BRIDGE, DEFAULT_NETWORK, DEFAULT_SUBNET
from podnet.fileio import remove, write_atomic

# Every executable install-cni may write (`podnet uninstall` removes these names).
PLUGINS = {"podnet": "podnet.cni.plugin", "podnet-ipam": "podnet.cni.ipam_plugin",
           "podnet-python": "podnet.cni.plugin"}
SHIM_NAME, FALLBACK_NAME = "podnet", "podnet-python"  # the shim execs its neighbour
# What `podnet uninstall` looks for before it removes a file: it removes only its own.
MARKER = "Installed by `podnet install-cni`"
SHIM_SOURCE = Path(__file__).resolve().parent.parent / "cni" / "shim" / "podnet_cni_shim.c"
SHIM_CFLAGS = ("-O2", "-std=gnu11", "-Wall")
# Static first: no dynamic loader at each exec (~0.25 ms of the shim's ~1 ms); dynamic
# where libc.a is missing.
SHIM_LINKS = (("-static",), ())
ELF_MAGIC = b"\x7fELF"

log = logging.getLogger(__name__)

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


def want_shim() -> bool:
    """PODNET_CNI_SHIM=0 installs the Python plugin as `podnet` (to compare, or by choice)."""
    return os.environ.get("PODNET_CNI_SHIM", "1") != "0"


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def shim_stamp(cc: str) -> str:
    """What the binary depends on: its source, the flags, the compiler (by path and
    mtime). Carried in the binary's marker, so an unchanged shim is not rebuilt."""
    digest = hashlib.sha256(SHIM_SOURCE.read_bytes())
    digest.update(repr((SHIM_CFLAGS, SHIM_LINKS, cc, os.stat(cc).st_mtime_ns)).encode())
    return digest.hexdigest()[:16]


def shim_cache() -> Path:
    """Where built shims are kept by their stamp (PODNET_CACHE_DIR, else /var/cache/podnet)."""
    return Path(os.environ.get("PODNET_CACHE_DIR") or "/var/cache/podnet")


def is_shim(path: str | Path) -> bool:
    """Is this installed `podnet` the compiled shim (and not the Python plugin)?"""
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def build_shim(path: Path) -> str | None:
    """Compile the shim to `path` (atomically) unless the same build is there; None, or
    why it could not be built (the caller installs the Python plugin instead)."""
    cc = compiler()
    if cc is None:
        return "no C compiler (cc) on PATH"
    if not SHIM_SOURCE.is_file():
        return f"{SHIM_SOURCE} is missing"
    stamp = shim_stamp(cc)
    marker = f"{MARKER} (cni shim {stamp})"
    with suppress(OSError), open(path, "rb") as f:
        if marker.encode() in f.read(4096):  # where uninstall looks too (an ELF note)
            return None
    cached = shim_cache() / f"podnet-cni-shim-{stamp}"
    with suppress(OSError), open(cached, "rb") as f:
        built = f.read()
        if marker.encode() in built[:4096] and built.startswith(ELF_MAGIC):  # every lab and
            write_atomic(path, built, 0o755)  # test fixture installs: compile once per build
            return None
    with tempfile.TemporaryDirectory(prefix="podnet-shim-") as tmp:
        out = Path(tmp) / SHIM_NAME
        for link in SHIM_LINKS:
            argv = [cc, *SHIM_CFLAGS, *link, f"-DPODNET_MARKER={json.dumps(marker)}", "-o", str(out), str(SHIM_SOURCE)]
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"{cc} failed: {exc}"
            if proc.returncode == 0 and is_shim(out):
                built = out.read_bytes()
                write_atomic(path, built, 0o755)
                with suppress(OSError):  # a cache that cannot be written costs a compile next time
                    shim_cache().mkdir(mode=0o700, parents=True, exist_ok=True)
                    write_atomic(cached, built, 0o755)
                return None
    return f"{cc} failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}"


def install_cni(
    bin_dir: str,
    conf_dir: str | None = None,
    network: str = DEFAULT_NETWORK,
    subnet: str = DEFAULT_SUBNET,
    bridge: str = DEFAULT_BRIDGE,
    shim: bool | None = None,
) -> list[str]:
    """Write the executables (and a conflist when `conf_dir`); the paths written.
    `shim`: build the compiled `podnet` (None: unless PODNET_CNI_SHIM=0)."""
    written = []
    target = Path(bin_dir)
    target.mkdir(parents=True, exist_ok=True)
    src, fallback = source_root(), fallback_paths()

    def script(name: str, module: str) -> None:
        # atomic, and a temp file per writer: installs in parallel never fail, and a
        # runtime never execs a half-written file
        path = target / name
        write_atomic(path, TEMPLATE.format(marker=MARKER, src=src, module=module, fallback=fallback), 0o755)
        written.append(str(path))

    script("podnet-ipam", PLUGINS["podnet-ipam"])
    why = "not wanted"
    if want_shim() if shim is None else shim:
        script(FALLBACK_NAME, PLUGINS[FALLBACK_NAME])  # first: the shim execs it
        why = build_shim(target / SHIM_NAME)
        if why is None:
            written.append(str(target / SHIM_NAME))
        else:
            log.warning("podnet install-cni: the CNI shim was not built (%s); `podnet` is the Python plugin", why)
    if why is not None:  # `podnet` is the Python plugin, and nothing beside it, as before the shim
        script(SHIM_NAME, PLUGINS[SHIM_NAME])
        stale = target / FALLBACK_NAME
        with suppress(OSError), open(stale, "rb") as f:
            if MARKER.encode() in f.read(4096):  # ours, from an install with the shim
                remove(stale)
        with suppress(ValueError):
            written.remove(str(stale))
    order = [str(target / name) for name in PLUGINS]
    written.sort(key=order.index)
    if conf_dir:
        path = conflist_path(conf_dir, network)
        path.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileExistsError):  # an existing conflist is never overwritten
            write_atomic(path, conflist_text(network, subnet, bridge), replace=False)
            written.append(str(path))
    return written

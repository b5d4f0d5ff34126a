"""`podnet install-cni --systemd`: the agent as a systemd service.

It writes `podnet-agent.service` (the agent of this very install, reading its settings
from the config file), makes the socket and state directories with the modes the unit
gives them (so the plugin's fallback finds them before the first start), writes a
config file skeleton unless one exists, and starts the unit when systemd is this
machine's init. The unit text says why each setting is there.
"""

from __future__ import annotations

import re
from pathlib import Path

from podnet.defaults import (
    DEFAULT_BLOCK_PREFIX,
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_CONFIG,
    DEFAULT_LEASE_TTL,
    DEFAULT_STATE_DIR,
    DEFAULT_UNIT_DIR,
    UNIT,
)
from podnet.errors import InvalidConfig, PodnetError
from podnet.fileio import write_atomic
from podnet.install import under
from podnet.install.cni import MARKER
from podnet.rpc.wire import DEFAULT_SOCKET

RUN_DIR = str(Path(DEFAULT_SOCKET).parent)  # the socket, nft.lock, the labs' state files
STATE_DIR = DEFAULT_STATE_DIR
DIR_MODES = {RUN_DIR: 0o755, STATE_DIR: 0o700}
START = (("daemon-reload",), ("enable", "--now", UNIT))

UNIT_TEMPLATE = """\
# {marker} (--systemd); regenerate rather than edit:
# settings belong in {config}.
[Unit]
Description=podnet node agent (CNI requests, cluster node, detached containers)
Wants=network-online.target
# etcd.service only orders the start when etcd runs on this machine too.
After=network-online.target etcd.service

[Service]
Type=simple
ExecStart={exec_start}
Restart=on-failure
RestartSec=5
# {run_dir}: the socket and nft.lock. Kept while the agent restarts or stops: the
# plugin's in-process fallback takes nft.lock there, and lab state files live there.
RuntimeDirectory={runtime_directory}
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes
# {state_dir}: the store, rendered conflists, per-container files.
StateDirectory={state_directory}
StateDirectoryMode=0700
# Signal only the agent on stop and restart. The detached containers it supervises
# live in this unit's cgroup, and the default (control-group) would kill them all
# whenever the agent crashes and Restart= brings it back. They are meant to outlive
# it: a graceful stop (SIGTERM) stops the agent's own children itself, and the next
# agent adopts survivors by their pid:starttime and cleans up when they exit.
KillMode=process

[Install]
WantedBy=multi-user.target
"""

CONFIG_SKELETON = """\
# podnet's config file: the clusters `podnet` commands talk to (contexts), and the
# settings of `podnet agent --config {config}` (the agent section; a flag wins).
# Written by `podnet install-cni --systemd`, which never overwrites it.
apiVersion: podnet.io/v1
kind: Config
current-context: local
contexts:
  - name: local
    store: {state_dir}/store.db        # a cluster: etcd://10.0.0.1:2379/podnet
    socket: {socket}
agent:
  # To join a cluster, uncomment and set (then: systemctl restart podnet-agent):
  # node: node1                       # this machine's name in the cluster
  # store: etcd://10.0.0.1:2379/podnet
  # fabric: vxlan                     # or host-gw (all nodes on one L2 segment)
  # underlay: eth0                    # the interface toward the other nodes
  # clusterCIDR: {cluster_cidr}
  # blockPrefix: {block_prefix}
  # leaseTTL: {lease_ttl:g}
  # dnsUpstream: 192.0.2.53           # where container DNS forwards other names
"""


def console_script() -> str:
    """The `podnet` console script of the install this code runs from, so the unit
    runs the same podnet whose CNI executables install-cni wrote."""
    import shutil
    import sysconfig

    here = Path(sysconfig.get_path("scripts")) / "podnet"
    if here.is_file():
        return str(here)
    found = shutil.which("podnet")
    if found is None:
        raise PodnetError("cannot find the podnet console script of this install",
                          f"looked in {here.parent} and $PATH")
    return str(Path(found).absolute())


def exec_word(arg: str) -> str:
    """One ExecStart argument: systemd splits on whitespace and expands % and $."""
    if any(ord(c) < 32 for c in arg):
        raise InvalidConfig(f"{arg!r} cannot go into a unit file (control character)")
    arg = arg.replace("%", "%%").replace("$", "$$")
    if not arg or re.search(r"[\s\"'\\;]", arg):
        arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def render_unit(podnet: str, config: str) -> str:
    return UNIT_TEMPLATE.format(
        marker=MARKER, config=config, run_dir=RUN_DIR, state_dir=STATE_DIR,
        exec_start=" ".join(exec_word(a) for a in (podnet, "agent", "--config", config)),
        runtime_directory=Path(RUN_DIR).relative_to("/run"),
        state_directory=Path(STATE_DIR).relative_to("/var/lib"),
    )


def config_skeleton(config: str) -> str:
    return CONFIG_SKELETON.format(config=config, state_dir=STATE_DIR, socket=DEFAULT_SOCKET,
                                  cluster_cidr=DEFAULT_CLUSTER_CIDR, block_prefix=DEFAULT_BLOCK_PREFIX,
                                  lease_ttl=DEFAULT_LEASE_TTL)


def systemd_running(root: str | Path) -> bool:
    """systemd is this machine's init, and the install is for this machine."""
    return Path(root) == Path("/") and Path("/run/systemd/system").is_dir()


def systemctl(*args: str) -> str:
    import subprocess  # not at the top: every `podnet` command imports this module

    argv = ["systemctl", *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PodnetError(f"{' '.join(argv)} failed (exit {done.returncode})", done.stderr.strip())
    return f"ran {' '.join(argv)}"


def ensure_dir(path: Path, mode: int) -> str | None:
    """Make `path` with `mode` (whatever the umask); a line to print if it changed."""
    existed = path.is_dir()
    path.mkdir(parents=True, exist_ok=True)
    if existed and path.stat().st_mode & 0o7777 == mode:
        return None
    path.chmod(mode)
    return f"made {path} (mode {mode:04o})"


def install_systemd(root: str = "/", unit_dir: str = DEFAULT_UNIT_DIR, config: str = DEFAULT_CONFIG,
                    start: bool = True, podnet: str | None = None) -> list[str]:
    """Unit, directories, config skeleton, then start; the lines to print."""
    if not Path(config).is_absolute():
        raise InvalidConfig(f"--config {config}: give an absolute path (the agent runs in /)")
    lines = []
    for directory, mode in DIR_MODES.items():
        if line := ensure_dir(under(root, directory), mode):
            lines.append(line)
    conf = under(root, config)
    if conf.exists():
        lines.append(f"kept {conf} (exists)")
    else:
        conf.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(conf, config_skeleton(config), 0o644)
        lines.append(f"wrote {conf}")
    unit = under(root, unit_dir) / UNIT
    unit.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(unit, render_unit(podnet or console_script(), config), 0o644)
    lines.append(f"wrote {unit}")
    commands = " && ".join(f"systemctl {' '.join(c)}" for c in START)
    if not start:
        lines.append(f"to start the agent: {commands}")
    elif systemd_running(root):
        lines.extend(systemctl(*c) for c in START)
    else:
        lines.append(f"systemd is not running here; on the machine, start the agent with: {commands}")
    return lines

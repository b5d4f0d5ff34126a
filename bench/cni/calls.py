"""What is compared and how one plugin call is timed: the two CNI configs and the
exec of a plugin from inside the bench's host namespace (the measuring process)."""

from __future__ import annotations

import json
import os
import subprocess
import time

from benchlib import BenchError, percentile

PREFIX = "pn-bench-"
REFERENCE_DIR = "/usr/lib/cni"
OPS = ("ADD", "CHECK", "DEL")
CNI_VERSION = "1.0.0"
IFNAME = "eth0"
PLUGIN_TIMEOUT = 60.0
BRIDGES = ("pnbpod0", "pnbref0", "pnbinp0", "pnbpy0")  # podnet, reference, podnet (no agent), podnet-python


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------
def podnet_config(name: str, bridge: str, subnet: str, data_dir: str, socket_path: str) -> dict:
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "type": "podnet",
        "bridge": bridge,
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "agentSocket": socket_path,
        "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir},
    }


def reference_config(name: str, bridge: str, subnet: str, data_dir: str) -> dict:
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": False,  # the reference masquerades with iptables: keep both without
        "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir},
    }


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.5), 3),
        "p90": round(percentile(values, 0.9), 3),
        "mean": round(sum(values) / len(values), 3) if values else float("nan"),
        "min": round(min(values), 3) if values else float("nan"),
        "max": round(max(values), 3) if values else float("nan"),
    }


# --------------------------------------------------------------------------------------
# Inner side: runs inside the host namespace (started with `ip netns exec HOST`)
# --------------------------------------------------------------------------------------
def guard_namespace(host_ns_path: str) -> None:
    """Refuse to spawn a single plugin unless we really are in the bench's namespace."""
    mine = os.stat("/proc/self/ns/net")
    host = os.stat(host_ns_path)
    if (mine.st_dev, mine.st_ino) != (host.st_dev, host.st_ino):
        raise BenchError(f"not inside {host_ns_path}: refusing to run plugins")
    try:
        init = os.stat("/proc/1/ns/net")
    except OSError:
        return
    if (init.st_dev, init.st_ino) == (mine.st_dev, mine.st_ino):
        raise BenchError("inside the root network namespace: refusing to run plugins")


def plugin_env(command: str, cid: str, netns: str, cni_path: str) -> dict:
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": IFNAME,
        "CNI_PATH": cni_path,
    }


def timed_call(
    argv: list[str], env: dict, data: bytes
) -> tuple[float, int, float, subprocess.CompletedProcess]:
    """(ms, start_ns, end_ns, proc): from just before the spawn to the process exit."""
    t0 = time.perf_counter_ns()
    proc = subprocess.run(
        argv, input=data, env=env, capture_output=True, timeout=PLUGIN_TIMEOUT, check=False
    )
    t1 = time.perf_counter_ns()
    return (t1 - t0) / 1e6, t0, t1, proc


def cni_call(
    system: dict,
    command: str,
    cid: str,
    netns: str,
    prev: dict | None,
    argv: list[str] | None = None,
):
    conf = dict(system["config"])
    if prev is not None:
        conf["prevResult"] = prev
    data = json.dumps(conf).encode()
    env = plugin_env(command, cid, netns, system["cni_path"])
    ms, t0, t1, proc = timed_call(argv or [system["binary"]], env, data)
    if proc.returncode != 0:
        raise BenchError(
            f"{system['label']} {command} {cid} failed (rc {proc.returncode}): "
            f"{proc.stdout.decode(errors='replace').strip()[:600]} {proc.stderr.decode(errors='replace').strip()[-600:]}"
        )
    out = proc.stdout.decode().strip()
    return ms, (json.loads(out) if out else None), proc, t0, t1

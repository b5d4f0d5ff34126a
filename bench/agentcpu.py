"""The CPU the podnet agents of a bench lab spend while one iperf3 client runs: per
node and per thread (where a userspace datapath, such as the gossip fabric's sleeve,
spends it), read from /proc around the run.

Apart from the benches that use it so that each of them stays about its own paths.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchlib import BenchError, Iperf
from fabric_throughput import BenchLab

TOP_THREADS = 4


def agent_pids(lab: BenchLab) -> dict[str, int]:
    """node -> its agent's PID, as the lab recorded it (checked alive)."""
    pids = {node: info["agent_pid"] for node, info in lab.data["nodes"].items()}
    for pid in pids.values():
        if not Path(f"/proc/{pid}").exists():
            raise BenchError(f"lab {lab.name}: agent pid {pid} is gone")
    return pids


def thread_seconds(pid: int) -> dict[str, float]:
    """`<pid>/<tid> <comm>` -> utime + stime in seconds of each thread of a process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            head, tail = (task / "stat").read_text().rsplit(") ", 1)
        except (OSError, ValueError):
            continue  # a thread that ended
        fields = tail.split()
        comm = head.split(" (", 1)[1]
        out[f"{pid}/{task.name} {comm}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def run_once(path: dict, pids: dict[str, int], seconds: float) -> dict:
    """One iperf3 run and the agents' CPU over it, as cores, by node and by thread."""
    from podnet.fabric.sleeve.launch import cpu_seconds

    before = {node: cpu_seconds(pid) for node, pid in pids.items()}
    threads_before = {k: v for pid in pids.values() for k, v in thread_seconds(pid).items()}
    started = time.monotonic()
    result = Iperf.client(path["client"], path["server_ip"], seconds)
    wall = time.monotonic() - started
    by_node = {node: (cpu_seconds(pid) - before[node]) / wall for node, pid in pids.items()}
    result["agent_cores"] = round(sum(by_node.values()), 3)
    result["agent_cores_by_node"] = {node: round(c, 3) for node, c in by_node.items()}
    threads_after = {k: v for pid in pids.values() for k, v in thread_seconds(pid).items()}
    busy = {k: (v - threads_before.get(k, 0.0)) / wall for k, v in threads_after.items()}
    result["threads"] = {
        k: round(c, 3) for k, c in sorted(busy.items(), key=lambda kv: -kv[1])[:TOP_THREADS]
    }
    return result

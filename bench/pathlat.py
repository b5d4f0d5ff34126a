"""Round-trip latency of one path: busybox `ping -A` from a namespace (the next echo as
soon as the reply is in), each reply's time kept. busybox-static is in the Makefile's
packages; iputils' ping is not.

Why ping: its times are taken by the kernel's socket timestamps around one ICMP echo,
so the figure is the path's (veth, bridges, routes, tunnel, NAT, policy) and not an
interpreter's. A fabric's latency is then read against a veth pair in the same run.
"""

from __future__ import annotations

import re
import statistics
import subprocess

from benchlib import BenchError, nsenter, percentile

_TIME = re.compile(r"time=([0-9.]+) ms")


def rtts_of(ping_output: str) -> list[float]:
    """The reply times of a ping run, in microseconds."""
    return [float(m.group(1)) * 1000 for m in _TIME.finditer(ping_output)]


PING = ("busybox", "ping")


def ping_rtt(ns: str, dst: str, count: int = 500) -> dict:
    """`count` echoes from `ns` to `dst` back to back (one warm-up first: it may wait
    for ARP); median, p99 and the lost count, in microseconds."""
    subprocess.run([*nsenter(ns), *PING, "-c", "1", "-W", "2", dst], capture_output=True, check=False)
    out = subprocess.run(
        [*nsenter(ns), *PING, "-A", "-c", str(count), "-W", "2", dst],
        capture_output=True, text=True, check=False,
    )
    rtts = rtts_of(out.stdout)
    if not rtts:
        raise BenchError(f"ping {dst} from {ns}: no reply ({out.stdout.strip()[-200:]} {out.stderr.strip()})")
    return {
        "p50_us": round(statistics.median(rtts), 1),
        "p99_us": round(percentile(rtts, 0.99), 1),
        "sent": count,
        "lost": count - len(rtts),
    }

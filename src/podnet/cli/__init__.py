"""The `podnet` command: one module per verb group, each with a `register(sub)`.

    agent.py      agent, install-cni, ping          lab.py       lab up|status|down|exec|host
    objects.py    apply, delete, get, describe,     observe.py   connectivity test, probe
                  label                             network.py   network ...
    policy.py     flows, policy explain|status|...  container.py container ...
    demo.py       demo (and demo_host.py)           bgp.py       bgp status
    status.py     status, report                    metrics.py   metrics
    doctor.py     doctor                            trace.py     trace
    dashboard.py  dashboard                         target.py    which cluster (--lab, --store, ...)
    host.py       host join|leave                   wan.py       wan up|down|status|plug|unplug
    cluster.py    cluster init|join|leave|gateway|status (a clusterset)
    output.py     printing and errors

Nothing below the CLI imports it; the lab and the tests run it as a process
(`python -m podnet.cli`).
"""

from __future__ import annotations

import argparse
import sys

from podnet.cli import (
    agent,
    bgp,
    cluster,
    container,
    dashboard,
    demo,
    doctor,
    host,
    lab,
    mesh,
    metrics,
    network,
    objects,
    observe,
    peers,
    policy,
    status,
    trace,
    wan,
)
from podnet.cli.output import fail
from podnet.errors import PodnetError

VERB_GROUPS = (agent, demo, network, container, lab, observe, status, metrics, doctor, trace, dashboard, objects,
               policy, bgp, peers, host, mesh, wan, cluster)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podnet", description="container networking for Linux")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in VERB_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PodnetError as err:
        return fail(err)
    except BrokenPipeError:  # `podnet get ... | head`: the reader left, nothing to say
        sys.stderr.close()
        return 0

"""A macvlan pod's NFLOG reader (agent/pod_netns.py PodFlowReaders) closed and opened
again at once, as when a policy is replaced and the pod's table goes and comes back
within one poll: the reader must stand again, and read what the namespace logs.

Why this test: `close` from the policy thread while the polling thread waits in
select() on that socket leaves the socket bound in the kernel until select returns
(up to POLL_SECONDS), so the new bind of the group is refused (EPERM), the reader is
not retried until the next converge, and `podnet flows` misses that pod's verdicts:
tests/ns/test_macvlan_policy_lab.py's flows test failed so, its previous test having
just removed the same pod's table. One namespace `pn-fr-<token>-pod`, torn down by the
sandbox.
"""

from __future__ import annotations

import sys
import time

import pytest

from cniharness import needs_root, wait_until
from podnet.agent.pod_netns import POLL_SECONDS, NetnsKernel, PodFlowReaders
from podnet.lab.sandbox import Sandbox
from podnet.policy.table import LOG_GROUP

pytestmark = pytest.mark.root

LOGGED = f"""table inet pnfrtest {{
  chain out {{
    type filter hook output priority 0;
    udp dport 9 log group {LOG_GROUP} prefix "D frtest"
  }}
}}
"""
SEND = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))"


def test_a_reader_closed_and_opened_again_at_once_still_reads() -> None:
    needs_root()
    with Sandbox("pn-fr-") as box:
        ns = box.netns("pod")
        path = Sandbox.path(ns)
        got: list = []
        readers = PodFlowReaders(NetnsKernel(), got.extend)
        readers.start()
        try:
            readers.open(path)
            assert readers.watched() == [path]
            time.sleep(POLL_SECONDS * 1.5)  # the polling thread now waits in select() on that reader
            readers.close(path)  # the pod's table went (a policy deleted) ...
            readers.open(path)  # ... and came back (its replacement applied) within one poll
            assert readers.watched() == [path], "the reader was not opened again"
            box.exec(ns, ["nft", "-f", "-"], input=LOGGED)
            box.exec(ns, [sys.executable, "-c", SEND])
            wait_until(lambda: any(p.prefix.startswith("D frtest") for p in got), "the logged packet", timeout=10)
        finally:
            readers.stop()

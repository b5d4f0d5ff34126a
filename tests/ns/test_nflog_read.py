"""A real nft `log group` rule, read back through kernel/nflog.py, in a test namespace."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

RULES = """table inet pn-t-log {
  chain out {
    type filter hook output priority 0;
    udp dport 9999 counter log prefix "D cp:default/deny-9999 egress[0]" group 7 drop
  }
}
"""
READ = (
    "import socket,sys\n"
    "from podnet.kernel.nflog import NflogReader\n"
    "r=NflogReader(7)\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    "try: s.sendto(b'x',('127.0.0.1',9999))\n"
    "except OSError: pass\n"
    "for p in r.read(3): print(p.prefix, p.protocol, p.dst, p.dport)\n"
)


def test_logged_drop_is_read_with_its_rule_name(sandbox):
    ns = sandbox.netns("log")
    sandbox.exec(ns, ["ip", "link", "set", "lo", "up"])
    subprocess.run(["nsenter", f"--net={sandbox.path(ns)}", "nft", "-f", "-"], input=RULES, text=True, check=True)
    out = sandbox.exec(ns, [sys.executable, "-c", READ]).stdout
    assert out.strip() == "D cp:default/deny-9999 egress[0] udp 127.0.0.1 9999"

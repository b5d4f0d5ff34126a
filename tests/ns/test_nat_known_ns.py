"""NatManager's remembered rules against the real kernel (kernel/nat/manager.py, kernel/nftgen.py),
in a namespace of our own (pn-natgen-<run>, deleted in a finalizer): the ADDs after the first
read nothing while only they commit, and a rule another process adds is seen."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet import naming

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft not installed"),
]

NET = "pn-natgen-net"

SCENARIO = r"""
import ipaddress, json, subprocess, sys
from podnet import errors
from podnet.kernel.libnft import LibNft
from podnet.kernel.nat.manager import NatManager
from podnet.kernel.nftgen import ruleset_generation

class Counting(LibNft):
    reads = 0
    def list_table_json(self, family, table):
        Counting.reads += 1
        return super().list_table_json(family, table)

net, scratch, outsider_tag = sys.argv[1], sys.argv[2], sys.argv[3]
mgr = NatManager(Counting(), lock_path=scratch + "/nft.lock", proc_sys=scratch, generation=ruleset_generation)
aid = lambda i: f"{i:012x}"
out = {"generations": [ruleset_generation()]}
for i in range(4):
    mgr.add(net, aid(i), [ipaddress.ip_interface(f"10.77.0.{i + 2}/24")], [], True)
    out["generations"].append(ruleset_generation())
out["reads_after_adds"] = Counting.reads
out["attachments"] = sorted(mgr.rules(net))
subprocess.run(["nft", "add rule ip podnet prerouting tcp dport 8080 dnat to 10.77.0.9:80 comment "
                f'"{outsider_tag}"'], check=True)
reads = Counting.reads
try:
    mgr.add(net, aid(9), [ipaddress.ip_interface("10.77.0.20/24")], [{"hostPort": 8080, "containerPort": 80}])
    out["outsider"] = "no conflict"
except errors.PortInUse as exc:
    out["outsider"] = exc.msg
out["reads_for_outsider"] = Counting.reads - reads
out["removed"] = mgr.remove(net, aid(0))
out["left"] = sorted(mgr.rules(net))
print(json.dumps(out))
"""


@pytest.fixture
def scratch_netns(tmp_path: Path) -> Iterator[str]:
    name = f"pn-natgen-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_adds_read_the_tables_once_and_see_another_process_rule(scratch_netns: str, tmp_path: Path) -> None:
    outsider = f"podnet:{naming.net_id('pn-natgen-other')}:{'ab' * 6}"
    done = subprocess.run(
        ["ip", "netns", "exec", scratch_netns, sys.executable, "-c", SCENARIO, NET, str(tmp_path), outsider],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    generations = out["generations"]
    assert all(b > a for a, b in zip(generations, generations[1:], strict=False))  # each ADD one commit
    assert out["reads_after_adds"] == 2  # the first ADD's two families, then nothing
    assert out["attachments"] == [f"{i:012x}" for i in range(4)]
    assert "abababababab" in out["outsider"] and "8080" in out["outsider"]
    assert out["reads_for_outsider"] == 2
    assert out["removed"] == 1 and out["left"] == [f"{i:012x}" for i in range(1, 4)]

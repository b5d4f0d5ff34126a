"""lab/zygote.py through the lab's supervisor: a forked daemon lands in its namespace,
is re-parented to the supervisor, recorded with the argv that would start it, reaped
with its exit code, and stopped with the lab."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from cniharness import wait_until
from podnet.lab.sandbox import NETNS_DIR
from podnet.lab.supervisor_client import SupervisorClient
from podnet.lab.zygote import check
from podnet.procs import running

pytestmark = pytest.mark.root


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_forked_daemons_live_in_their_netns_under_the_supervisor_and_end_with_it(sandbox, tmp_path):
    ns = sandbox.netns("zy")
    netns = str(NETNS_DIR / ns)
    sup = SupervisorClient(tmp_path)
    try:
        ready = tmp_path / "ready"
        exec_argv = ["nsenter", f"--net={netns}", "--", "python", "-m", "podnet.lab.echo", "--name", "e"]
        pid = sup.fork("echo/e", "podnet.lab.echo", ["--name", "e", "--tcp", "18080", "--ready", str(ready)],
                       netns, exec_argv, tmp_path / "echo.log")
        wait_until(ready.exists, "the forked echo server to be ready", 10)
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
        assert _parent(pid) == sup.proc.pid  # the go-between is gone: the subreaper adopted it
        record = json.loads((tmp_path / "procs.json").read_text())
        assert record["echo/e"]["pid"] == pid and record["echo/e"]["argv"] == exec_argv
        assert record["zygote"]["pid"] != pid and "exit" not in record["echo/e"]

        quick = sup.fork("cli/bad", "podnet.cli", ["no-such-verb"], netns, ["podnet", "no-such-verb"],
                         tmp_path / "bad.log")  # argparse exits 2 at once
        wait_until(lambda: json.loads((tmp_path / "procs.json").read_text())["cli/bad"].get("exit") == 2,
                   "the quick daemon's exit recorded", 10)
        assert not running(quick)
        assert "invalid choice" in (tmp_path / "bad.log").read_text()

        with pytest.raises(Exception, match="module must be one of"):
            sup.fork("x", "os", [], netns, ["x"], tmp_path / "x.log")
    finally:
        sup.detach()
        os.kill(sup.proc.pid, signal.SIGTERM)
        sup.proc.wait(15)
    assert not running(pid)  # stopped with the supervisor, by pid
    record = json.loads((tmp_path / "procs.json").read_text())
    assert "exit" in record["echo/e"]


@pytest.mark.parametrize("request_, why", [
    ([], "a JSON object"),
    ({"module": "subprocess", "argv": [], "netns": "/n", "log": "/l"}, "module must be one of"),
    ({"module": "podnet.cli", "argv": "agent", "netns": "/n", "log": "/l"}, "argv must be a list"),
    ({"module": "podnet.cli", "argv": [], "netns": "rel", "log": "/l"}, "netns must be an absolute path"),
    ({"module": "podnet.cli", "argv": [], "netns": "/n", "log": "/l", "env": {"A": 1}}, "env must map"),
])
def test_a_bad_request_is_refused_naming_why(request_, why):
    with pytest.raises(ValueError, match=why):
        check(request_)

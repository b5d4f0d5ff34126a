"""A sidecar found again by its pid file (mesh/sidecar_process.py): trusted only while
the process's command line names that work directory's configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from podnet.mesh.sidecar_process import CONFIG, PIDFILE, end_left_behind, sidecar_pid


def _stand_in(workdir: Path) -> subprocess.Popen:
    """A process whose argv names workdir/haproxy.cfg, as a sidecar master's does.

    Returned once it runs its program: Popen returns when exec has begun, but the kernel
    fills /proc/<pid>/cmdline a moment later (a loaded machine showed it empty), and a
    real sidecar writes its pid file only once it runs. The child's first line says so."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)",
                             "-f", str(workdir / CONFIG)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.readline() == "up\n", "the stand-in did not start"
    (workdir / PIDFILE).write_text(f"{proc.pid}\n")
    return proc


def test_the_pid_file_is_trusted_only_for_this_directorys_process(tmp_path: Path) -> None:
    assert sidecar_pid(tmp_path) is None  # no file
    (tmp_path / PIDFILE).write_text("not a pid\n")
    assert sidecar_pid(tmp_path) is None
    (tmp_path / PIDFILE).write_text(f"{os.getpid()}\n")  # a live pid, but another program: never ours
    assert sidecar_pid(tmp_path) is None
    proc = _stand_in(tmp_path)
    try:
        assert sidecar_pid(tmp_path) == proc.pid
        other = tmp_path / "other"
        other.mkdir()
        (other / PIDFILE).write_text(f"{proc.pid}\n")  # the same process, another directory's file
        assert sidecar_pid(other) is None
    finally:
        proc.kill()
        proc.wait()
    assert sidecar_pid(tmp_path) is None  # gone


def test_left_behind_sidecars_are_ended_by_their_checked_pid(tmp_path: Path) -> None:
    dirs = [tmp_path / "shop_web", tmp_path / "shop_db", tmp_path / "shop_gone"]
    for d in dirs:
        d.mkdir()
    procs = [_stand_in(d) for d in dirs[:2]]
    (dirs[2] / PIDFILE).write_text("999999999\n")
    try:
        assert end_left_behind(tmp_path) == 2
        assert [p.wait(5) for p in procs] == [-15, -15]  # SIGTERM was enough
        assert end_left_behind(tmp_path) == 0 and end_left_behind(tmp_path / "absent") == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


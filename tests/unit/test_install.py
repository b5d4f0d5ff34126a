"""`podnet install-cni [--systemd]` and `podnet uninstall`, under a --root tmp dir: no
root, no systemd, and never this machine's /etc (with --root, systemctl never runs)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from podnet.cli import main
from podnet.config import load
from podnet.install import systemd, under, uninstall
from podnet.install.cni import conflist_text, is_shim
from podnet.install.systemd import console_script, exec_word, render_unit

CNI = ["--bin-dir", "/opt/cni/bin", "--conf-dir", "/etc/cni/net.d"]
UNIT = "etc/systemd/system/podnet-agent.service"
CONFLIST = "etc/cni/net.d/10-podnet.conflist"
CONFIG = "etc/podnet/config.yaml"


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    return code, capsys.readouterr().out.splitlines()


def install(capsys, root: Path, *extra: str) -> list[str]:
    code, out = run(capsys, "install-cni", "--root", str(root), *CNI, *extra)
    assert code == 0
    return out


def remove(capsys, root: Path, *extra: str) -> list[str]:
    code, out = run(capsys, "uninstall", "--root", str(root), *CNI, *extra)
    assert code == 0
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_under_keeps_the_machine_and_relative_paths():
    assert under("/", "/etc/x") == Path("/etc/x") and under("/", "bin") == Path("bin")
    assert under("/tmp/r", "/etc/x") == Path("/tmp/r/etc/x")


def test_install_writes_executables_unit_dirs_and_config(capsys, tmp_path):
    old = os.umask(0o077)  # the modes are the unit's, whatever the umask
    try:
        out = install(capsys, tmp_path, "--systemd")
    finally:
        os.umask(old)
    for name in ("podnet", "podnet-ipam"):
        exe = tmp_path / "opt/cni/bin" / name
        assert f"wrote {exe}" in out and mode(exe) == 0o755
    assert (tmp_path / CONFLIST).read_text() == conflist_text("podnet", "10.85.0.0/16", "podnet0")
    assert mode(tmp_path / "run/podnet") == 0o755 and mode(tmp_path / "var/lib/podnet") == 0o700
    assert f"made {tmp_path}/run/podnet (mode 0755)" in out
    assert f"wrote {tmp_path / UNIT}" in out and f"wrote {tmp_path / CONFIG}" in out
    assert mode(tmp_path / UNIT) == 0o644
    # with --root, the machine's systemd is never asked
    assert out[-1].startswith("systemd is not running here") and "enable --now podnet-agent.service" in out[-1]

    unit = (tmp_path / UNIT).read_text().splitlines()
    for line in (f"ExecStart={console_script()} agent --config /etc/podnet/config.yaml",
                 "Type=simple", "Restart=on-failure", "RuntimeDirectory=podnet", "RuntimeDirectoryMode=0755",
                 "RuntimeDirectoryPreserve=yes", "StateDirectory=podnet", "StateDirectoryMode=0700",
                 "KillMode=process", "After=network-online.target etcd.service", "WantedBy=multi-user.target"):
        assert line in unit
    assert any(line.startswith("RestartSec=") for line in unit)
    assert Path(console_script()).is_file()

    config = load(str(tmp_path / CONFIG))  # the skeleton is a valid config file
    assert config.agent == {} and config.current_context == "local"
    assert config.context("local").store == "/var/lib/podnet/store.db"


def test_install_is_idempotent_and_never_overwrites_the_config(capsys, tmp_path):
    install(capsys, tmp_path, "--systemd", "--no-start")
    (tmp_path / CONFIG).write_text("agent:\n  node: n1\n")
    (tmp_path / "var/lib/podnet").chmod(0o755)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "config.yaml"}
    out = install(capsys, tmp_path, "--systemd", "--no-start", "--config", "/etc/podnet/config.yaml")
    assert f"kept {tmp_path / CONFIG} (exists)" in out
    assert (tmp_path / CONFIG).read_text() == "agent:\n  node: n1\n"
    assert f"made {tmp_path}/var/lib/podnet (mode 0700)" in out and mode(tmp_path / "var/lib/podnet") == 0o700
    assert not any("run/podnet" in line for line in out)  # already right: nothing to say
    assert {p: p.read_bytes() for p in files} == files
    assert out[-1] == "to start the agent: systemctl daemon-reload && systemctl enable --now podnet-agent.service"


def test_uninstall_removes_what_install_wrote_and_is_idempotent(capsys, tmp_path):
    install(capsys, tmp_path, "--systemd")
    shim = is_shim(tmp_path / "opt/cni/bin/podnet")  # with a C compiler, the shim and its Python fallback
    out = remove(capsys, tmp_path, "--systemd")
    written = ("opt/cni/bin/podnet", "opt/cni/bin/podnet-ipam", *(("opt/cni/bin/podnet-python",) if shim else ()))
    assert out == [f"removed {tmp_path / p}" for p in (UNIT, *written, CONFLIST)]
    assert (tmp_path / CONFIG).is_file() and (tmp_path / "var/lib/podnet").is_dir()  # no --purge
    assert remove(capsys, tmp_path, "--systemd") == ["nothing to remove"]


def test_uninstall_keeps_an_edited_conflist_and_files_it_did_not_write(capsys, tmp_path):
    install(capsys, tmp_path, "--systemd", "--network", "web", "--subnet", "10.90.0.0/24")
    web = tmp_path / "etc/cni/net.d/10-web.conflist"
    edited = web.read_text().replace('"ipMasq": true', '"ipMasq": false')
    web.write_text(edited)
    mine = tmp_path / "opt/cni/bin/podnet-ipam"
    mine.write_text("#!/bin/sh\necho mine\n")
    out = remove(capsys, tmp_path, "--network", "web", "--subnet", "10.90.0.0/24")
    assert f"removed {tmp_path}/opt/cni/bin/podnet" in out
    assert f"kept {mine} (not written by podnet install-cni)" in out
    assert any(line.startswith(f"kept {web} (it differs from what install-cni writes") for line in out)
    assert web.read_text() == edited and mine.is_file()
    assert (tmp_path / UNIT).is_file()  # no --systemd: the unit stays


def test_purge_removes_state_and_config(capsys, tmp_path):
    install(capsys, tmp_path, "--systemd")
    (tmp_path / "var/lib/podnet/net.d").mkdir()
    (tmp_path / "var/lib/podnet/store.db").write_text("")
    out = remove(capsys, tmp_path, "--systemd", "--purge")
    assert f"removed {tmp_path}/var/lib/podnet" in out and f"removed {tmp_path / CONFIG}" in out
    assert not (tmp_path / "var/lib/podnet").exists() and not (tmp_path / CONFIG).exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []
    assert (tmp_path / "run/podnet").is_dir()  # tmpfs on a machine: gone at reboot, and labs keep state there


def test_uninstall_needs_something_to_do(capsys):
    assert main(["uninstall"]) == 2
    assert "nothing to uninstall" in capsys.readouterr().err


def test_the_units_config_path_is_absolute(capsys, tmp_path):
    assert main(["install-cni", "--root", str(tmp_path), "--bin-dir", "/b", "--systemd", "--config", "c.yaml"]) != 0
    assert "give an absolute path" in capsys.readouterr().err
    assert not (tmp_path / UNIT).exists()


def test_systemctl_runs_only_when_systemd_is_the_init(capsys, tmp_path, monkeypatch):
    ran = []
    fake = lambda *args: ran.append(args) or f"ran systemctl {' '.join(args)}"  # noqa: E731
    for module in (systemd, uninstall):
        monkeypatch.setattr(module, "systemctl", fake)
        monkeypatch.setattr(module, "systemd_running", lambda root: True)
    out = install(capsys, tmp_path, "--systemd")
    assert ran == [("daemon-reload",), ("enable", "--now", "podnet-agent.service")]
    assert out[-1] == "ran systemctl enable --now podnet-agent.service"
    ran.clear()
    install(capsys, tmp_path, "--systemd", "--no-start")
    assert ran == []
    out = remove(capsys, tmp_path, "--systemd")
    assert ran == [("disable", "--now", "podnet-agent.service"), ("daemon-reload",)]
    assert out[:2] == ["ran systemctl disable --now podnet-agent.service", f"removed {tmp_path / UNIT}"]


def test_exec_start_words_are_quoted_for_systemd():
    assert exec_word("/opt/podnet/bin/podnet") == "/opt/podnet/bin/podnet"
    assert exec_word("/srv/my podnet/bin/podnet") == '"/srv/my podnet/bin/podnet"'
    assert exec_word("/etc/100%/$x.yaml") == "/etc/100%%/$$x.yaml"
    assert "ExecStart=\"/a b/podnet\" agent --config /etc/podnet/config.yaml" in render_unit(
        "/a b/podnet", "/etc/podnet/config.yaml")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(capsys, tmp_path):
    install(capsys, tmp_path, "--systemd", "--no-start")  # ExecStart: this venv's real podnet script
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / UNIT)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "podnet-agent" not in done.stderr, done.stderr

"""podnet as a wheel: built once (`python -m build --wheel --no-isolation`), installed
with pip into a clean venv, and run from there, not from the source tree.

The clean venv gets no dependencies (no network): the dev venv's site-packages are put
on PYTHONPATH, which holds pyroute2 & co but not podnet (the dev install is editable,
and PYTHONPATH entries do not read .pth files), so `podnet` can only come from the wheel.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from podnet.install.cni import is_shim

REPO = Path(__file__).resolve().parents[2]
DEV_SITE = sysconfig.get_path("purelib")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    tmp: Path

    @property
    def site(self) -> Path:
        return self.venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"

    def run(self, *argv: str, **env: str) -> subprocess.CompletedProcess:
        environ = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": DEV_SITE, **env}
        return subprocess.run(argv, cwd=self.tmp, env=environ, capture_output=True, text=True, timeout=60)


def _build(tmp: Path) -> Path:
    """From a copy of the tree: a build in place would leave build/ behind, and a stale
    build/lib would smuggle deleted modules into the wheel."""
    tree = tmp / "tree"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"),
                           str(tree)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("podnet-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is missing: .venv/bin/pip install -e '.[dev]'")
    tmp = tmp_path_factory.mktemp("packaging")
    wheel = _build(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    # this venv's pip, installing into the clean one (which then needs no pip of its own)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=120)
    return Installed(wheel, venv, tmp)


def test_every_module_is_in_the_wheel(installed):
    source = {str(p.relative_to(REPO / "src")) for p in (REPO / "src/podnet").rglob("*.py")}
    with zipfile.ZipFile(installed.wheel) as whl:
        packed = {name for name in whl.namelist() if name.endswith(".py")}
        dist_info = "-".join(installed.wheel.name.split("-")[:2]) + ".dist-info"
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
    assert packed == source
    assert "podnet = podnet.cli:main" in entry_points


def test_the_installed_podnet_runs_from_the_clean_venv(installed):
    where = installed.run(str(installed.venv / "bin/python"), "-c", "import podnet; print(podnet.__file__)")
    assert where.stdout.strip() == str(installed.site / "podnet/__init__.py"), where.stderr
    done = installed.run(str(installed.venv / "bin/podnet"), "--help")
    assert done.returncode == 0, done.stderr
    assert "install-cni" in done.stdout and "uninstall" in done.stdout


def test_install_cni_from_the_clean_venv_writes_working_executables(installed):
    bin_dir = installed.tmp / "cni-bin"
    done = installed.run(str(installed.venv / "bin/podnet"), "install-cni", "--bin-dir", str(bin_dir))
    assert done.returncode == 0, done.stderr
    names = ("podnet", "podnet-ipam", "podnet-python") if is_shim(bin_dir / "podnet") else ("podnet", "podnet-ipam")
    assert done.stdout.splitlines() == [f"wrote {bin_dir / name}" for name in names]
    for name in names:
        exe = bin_dir / name
        if not is_shim(exe):
            assert f"sys.path.insert(0, {str(installed.site)!r})" in exe.read_text()
        # no agent on this socket: `podnet` answers through its in-process fallback
        answer = installed.run(str(exe), CNI_COMMAND="VERSION",
                               PODNET_AGENT_SOCKET=str(installed.tmp / "no-agent.sock"))
        assert answer.returncode == 0, answer.stderr + answer.stdout
        assert '"supportedVersions"' in answer.stdout and '"1.1.0"' in answer.stdout


def test_the_systemd_unit_starts_the_clean_venvs_podnet(installed):
    root = installed.tmp / "root"
    done = installed.run(str(installed.venv / "bin/podnet"), "install-cni", "--root", str(root),
                         "--bin-dir", "/opt/cni/bin", "--systemd", "--no-start")
    assert done.returncode == 0, done.stderr
    unit = (root / "etc/systemd/system/podnet-agent.service").read_text().splitlines()
    assert f"ExecStart={installed.venv}/bin/podnet agent --config /etc/podnet/config.yaml" in unit

"""Every file podnet writes is atomic and durable (issue 10, item 8).

Each writer goes through one helper (podnet/fileio.py): a temp file of its own in the
same directory, fsynced, renamed over the target, then the directory fsynced. So a
crash leaves the old file or the new one, never a half-written one, and never a
temp file; parallel writers (several first `container run -d` installing the CNI
executables at once) never trip over each other. `network rm` removes the conflist
before the record, so a crash between the two leaves no usable conflist without
isolation.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from podnet.agent import node_service
from podnet.containers import files as cfiles
from podnet.containers import network as cnet
from podnet.endpoints import stores
from podnet.errors import StoreError
from podnet.install import cni, systemd, under
from podnet.lab import builder, supervise
from podnet.lab import state as lab_state
from podnet.networks.service import NetworkService
from podnet.state import StatePaths

SRC = Path(__file__).resolve().parents[2] / "src" / "podnet"
SOCK = "/run/podnet/t-none.sock"
OLD = "old and complete\n"


@dataclass
class Writer:
    target: Path
    write: Callable[[], object]
    overwrites: bool = True  # False: writes only a file that is not there yet
    best_effort: bool = False  # swallows its errors (the fallback's store notes)


def _install_executable(tmp: Path, stack: ExitStack) -> Writer:
    target = tmp / "bin" / "podnet"
    target.parent.mkdir()
    return Writer(target, lambda: cni.install_cni(str(target.parent)))


def _install_conflist(tmp: Path, stack: ExitStack) -> Writer:
    (tmp / "bin").mkdir()
    target = cni.conflist_path(tmp / "net.d", "podnet")
    target.parent.mkdir()
    return Writer(target, lambda: cni.install_cni(str(tmp / "bin"), str(target.parent)), overwrites=False)


def _systemd_unit(tmp: Path, stack: ExitStack) -> Writer:
    config = under(tmp, systemd.DEFAULT_CONFIG)
    config.parent.mkdir(parents=True)
    config.write_text("kept\n")  # only the unit is written
    target = under(tmp, systemd.DEFAULT_UNIT_DIR) / systemd.UNIT
    target.parent.mkdir(parents=True)
    return Writer(target, lambda: systemd.install_systemd(root=str(tmp), start=False, podnet="/usr/bin/podnet"))


def _network_conflist(tmp: Path, stack: ExitStack) -> Writer:
    service = stack.enter_context(NetworkService(StatePaths(tmp / "state"), SOCK))
    target = service.conflist_path("web")
    target.parent.mkdir(parents=True)
    return Writer(target, lambda: service.create("web", subnets=["10.7.0.0/24"]), overwrites=False)


def _cluster_conflist(tmp: Path, stack: ExitStack) -> Writer:
    fake = SimpleNamespace(agent=SimpleNamespace(state=SimpleNamespace(net_d=tmp / "net.d")))
    target = tmp / "net.d" / node_service.CONFLIST
    target.parent.mkdir()
    return Writer(target, lambda: node_service.NodeService._write_conflist(fake, {"name": "cluster"}))


def _cni_cache(tmp: Path, stack: ExitStack) -> Writer:
    files = cfiles.ContainerFiles(tmp / "c")
    files.root.mkdir()
    return Writer(files.cni_cache, lambda: cnet._write_json(files.cni_cache, {"kind": "cniCacheV1"}))


def _etc_hosts(tmp: Path, stack: ExitStack) -> Writer:
    files = cfiles.ContainerFiles(tmp / "c")
    files.root.mkdir()
    files.hostname.write_text(OLD)
    return Writer(files.hosts, lambda: cfiles.write_files(files, "h", "127.0.0.1 h\n", "nameserver 10.0.0.1\n"))


def _lab_state(tmp: Path, stack: ExitStack) -> Writer:
    patch = stack.enter_context(pytest.MonkeyPatch.context())
    patch.setattr(lab_state, "RUN_DIR", tmp / "run")
    state = lab_state.LabState("t", {"labdir": str(tmp / "run" / "lab-t")})
    target = lab_state.state_file("t")
    target.parent.mkdir()
    return Writer(target, state.save)


def _lab_conflist(tmp: Path, stack: ExitStack) -> Writer:
    target = tmp / "n" / "cluster.conflist"
    target.parent.mkdir()
    return Writer(target, lambda: builder.write_simulated_conflist(target, "10.244.1.0/24", SOCK))


def _store_note(tmp: Path, stack: ExitStack) -> Writer:
    location = "/var/lib/t/podnet.db"
    target = tmp / "stores" / hashlib.sha256(location.encode()).hexdigest()[:16]
    target.parent.mkdir()
    return Writer(target, lambda: stores.note(str(target.parent), location), overwrites=False, best_effort=True)


def _supervisor_record(tmp: Path, stack: ExitStack) -> Writer:
    (tmp / "lab").mkdir()
    sup = supervise.Supervisor(tmp / "lab")
    return Writer(sup.record, sup.save)


WRITERS = {f.__name__.lstrip("_"): f for f in (
    _install_executable, _install_conflist, _systemd_unit, _network_conflist, _cluster_conflist, _cni_cache,
    _etc_hosts, _lab_state, _lab_conflist, _store_note, _supervisor_record,
)}


@pytest.fixture(params=sorted(WRITERS))
def writer(request, tmp_path) -> Iterator[Writer]:
    with ExitStack() as stack:
        yield WRITERS[request.param](tmp_path, stack)


def strays(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "tmp" in p.name)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


# Where a write fails: the rename (os.replace, or os.link for create-only writers: a
# crash before it), or the fsync of the new data (a full or failing disk).
FAILURES = {"rename": ("replace", "link"), "fsync": ("fsync",)}


@pytest.mark.parametrize("where", sorted(FAILURES))
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(writer, where, monkeypatch):
    """The target keeps its old content (or stays absent): nothing half-written ever
    appears under its name, and no temp file is left beside it."""
    if writer.overwrites:
        writer.target.write_text(OLD)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, f"simulated {where} failure")

    for name in FAILURES[where]:
        monkeypatch.setattr(os, name, crash)
    if writer.best_effort:
        writer.write()
    else:
        with pytest.raises(OSError, match=f"simulated {where} failure"):
            writer.write()
    if writer.overwrites:
        assert writer.target.read_text() == OLD
    else:
        assert not writer.target.exists()
    assert strays(writer.target.parent) == []


def test_the_file_and_then_its_directory_are_fsynced(writer, monkeypatch):
    calls: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        calls.append(_fd_path(fd))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    writer.write()
    assert writer.target.is_file()
    directory = str(writer.target.parent)
    files = [i for i, p in enumerate(calls) if os.path.dirname(p) == directory]
    assert files, f"no file in {directory} was fsynced: {calls}"
    assert directory in calls[files[0]:], f"{directory} was not fsynced after its file: {calls}"
    assert strays(writer.target.parent) == []


def test_modes_are_kept(tmp_path):
    """Executables 0755 and the unit 0644 whatever the umask; store notes 0600; the
    other state files as open() makes them (0666 less the umask), as before."""
    old = os.umask(0o027)
    try:
        cni.install_cni(str(tmp_path / "bin"))
        systemd.install_systemd(root=str(tmp_path), start=False, podnet="/usr/bin/podnet")
        stores.note(str(tmp_path / "stores"), "/var/lib/t/podnet.db")
        files = cfiles.ContainerFiles(tmp_path / "c")
        cfiles.write_files(files, "h", "hosts\n", "resolv\n")
    finally:
        os.umask(old)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(tmp_path / "bin" / "podnet") == mode(tmp_path / "bin" / "podnet-ipam") == 0o755
    assert mode(under(tmp_path, systemd.DEFAULT_UNIT_DIR) / systemd.UNIT) == 0o644
    assert mode(under(tmp_path, systemd.DEFAULT_CONFIG)) == 0o644
    assert [mode(p) for p in (tmp_path / "stores").iterdir()] == [0o600]
    assert mode(files.hosts) == mode(files.resolv) == 0o640


def _install_many(bin_dir: str, rounds: int) -> int:
    for _ in range(rounds):
        cni.install_cni(bin_dir)
    return rounds


def test_parallel_install_cni_never_fails_and_leaves_complete_executables(tmp_path):
    """Several first `container run -d` at once each install the executables into one
    directory: before, one of them failed inside write_file (a shared temp name)."""
    bin_dir = tmp_path / "bin"
    with ProcessPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(_install_many, [str(bin_dir)] * 16, [40] * 16))
    assert done == [40] * 16
    src, fallback = cni.source_root(), cni.fallback_paths()
    shim = cni.is_shim(bin_dir / cni.SHIM_NAME)  # with a C compiler, `podnet` is the compiled shim
    for name, module in cni.PLUGINS.items():
        path = bin_dir / name
        if shim and name == cni.SHIM_NAME:
            assert cni.MARKER.encode() in path.read_bytes()[:4096]  # whole: its marker note is there
        else:
            assert path.read_text() == cni.TEMPLATE.format(marker=cni.MARKER, src=src, module=module, fallback=fallback)
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    want = cni.PLUGINS if shim else [n for n in cni.PLUGINS if n != cni.FALLBACK_NAME]
    assert sorted(p.name for p in bin_dir.iterdir()) == sorted(want)


def test_network_rm_removes_the_conflist_before_the_record(tmp_path, monkeypatch):
    """The store fails the record's delete: the conflist is already gone (a runtime can
    no longer attach), the record stays (isolation stays), and a second rm finishes."""
    with NetworkService(StatePaths(tmp_path / "state"), SOCK) as service:
        service.create("web", subnets=["10.7.0.0/24"])
        conflist = service.conflist_path("web")
        store = service.store
        events: list[str] = []
        real_fsync, real_delete = os.fsync, store.delete

        def record_fsync(fd: int) -> None:
            events.append(f"fsync {_fd_path(fd)}")
            real_fsync(fd)

        def failing_delete(key: str) -> bool:
            events.append(f"delete {key}")
            raise StoreError("simulated store failure")

        monkeypatch.setattr(os, "fsync", record_fsync)
        monkeypatch.setattr(store, "delete", failing_delete)
        with pytest.raises(StoreError, match="simulated"):
            service.remove("web")
        assert not conflist.exists()
        assert service.get("web").name == "web"
        assert events.index(f"fsync {conflist.parent}") < events.index("delete networks/web")

        monkeypatch.setattr(store, "delete", real_delete)
        removal = service.remove("web")
        assert removal.network.name == "web" and service.list() == []


# What may write files without podnet/fileio.py, and why.
WRITE_ALLOWED = {
    "fileio.py": "the one writer",
    "kernel/sysctl.py": "writes /proc/sys (not a file on disk)",
    "cli/demo_host.py": "the demo's web page in its own mkdtemp directory, thrown away after",
    "lab/zygote.py": "a forked daemon's stdio (fds 1 and 2: its log, opened for appending)",
}
WRITE_CALL = re.compile(r"\.write_text\(|\.write_bytes\(|os\.replace\(|os\.rename\(|\.replace\(tmp|"
                        r"open\([^)]*[\"'][wx]b?\+?[\"']")  # appends (logs) and lock files are no documents


def test_every_file_write_goes_through_fileio():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in WRITE_ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if WRITE_CALL.search(line.split("#")[0]):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert found == [], "write through podnet.fileio.write_atomic:\n" + "\n".join(found)

"""Run real podman inside a network namespace that a test created.

Everything here is test-only and isolated from the machine's own podman:

* storage (``--root``/``--runroot``), libpod's tmp dir, locks (``lock_type="file"``), events
  and image copies all live under one session tmp dir;
* ``CONTAINERS_CONF`` / ``CONTAINERS_STORAGE_CONF`` point at files written here, so the
  system's containers.conf/storage.conf never apply;
* podman always runs as ``nsenter --net=/var/run/netns/<ns> podman ...``: the CNI plugins it
  executes (and the bridges, veths, NAT rules they make) land in that namespace, never in the
  root one. (``ip netns exec`` is *not* used: it remounts /sys, which hides the cgroup tree
  from runc.)

Facts measured on the dev machine (podman 4.3.1 Debian, runc 1.1.5, cgroup v1):
runtime="runc" (crun fails on this cgroup layout), cgroup_manager="cgroupfs",
network_backend="cni", the vfs storage driver (no host mounts for image layers).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE = "localhost/pn-busybox:latest"
BUSYBOX = "/bin/busybox"  # Debian package busybox-static
NETNS_DIR = Path("/var/run/netns")
NETNS_PREFIX = "pn-e2e-"
REFERENCE_CNI_DIR = "/usr/lib/cni"

# Applets linked into the image's /bin (all served by the one static busybox).
# Note: busybox 1.35's `wget -T N` segfaults; bound wget with `timeout N wget ...` instead.
# fmt: off
APPLETS = (
    "sh", "ash", "cat", "echo", "ls", "ps", "sleep", "httpd", "wget", "nc", "ip", "ifconfig",
    "route", "ping", "ping6", "hostname", "mkdir", "rm", "cp", "mv", "ln", "grep", "sed", "awk",
    "head", "tail", "tr", "wc", "env", "id", "true", "false", "kill", "test", "[", "printf",
    "nslookup", "netstat", "timeout", "seq", "date", "uname", "dd", "sysctl", "arp", "mount",
    "umount", "tee", "touch",
)
# fmt: on

INDEX_HTML = "<html><body>pn-busybox ok</body></html>\n"

# Pod infra containers: podman's default pause image is built with catatonit, which Debian's
# podman 4.3 does not ship. Our own image and this script stand in for it.
PAUSE_SCRIPT = "#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n"


# --------------------------------------------------------------------------- availability


def missing_prerequisites() -> str | None:
    """Return why podman e2e tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "podman e2e tests need root (network namespaces, rootful podman)"
    for tool in ("podman", "runc", "nsenter", "ip", "conmon"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (run `make deps`)"
    if not Path(BUSYBOX).is_file():
        return f"{BUSYBOX} missing (Debian package busybox-static; run `make deps`)"
    return None


# --------------------------------------------------------------------------- namespaces


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def create_netns(prefix: str = NETNS_PREFIX) -> str:
    """Create a fresh namespace ``<prefix><random>`` with lo up; return its name."""
    if not prefix.startswith(NETNS_PREFIX):
        raise ValueError(f"test namespaces must start with {NETNS_PREFIX!r}")
    name = f"{prefix}{secrets.token_hex(4)}"
    _ip("netns", "add", name)
    try:
        nsexec(name, ["ip", "link", "set", "lo", "up"], check=True)
    except BaseException:
        delete_netns(name)
        raise
    return name


def delete_netns(name: str) -> None:
    """Delete a namespace this harness created (idempotent)."""
    if not name.startswith(NETNS_PREFIX):
        raise ValueError(f"refusing to delete namespace {name!r}: not a test namespace")
    if (NETNS_DIR / name).exists():
        _ip("netns", "delete", name, check=False)


@contextlib.contextmanager
def netns(prefix: str = NETNS_PREFIX):
    name = create_netns(prefix)
    try:
        yield name
    finally:
        delete_netns(name)


def nsexec(
    ns: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv inside namespace ``ns`` (network namespace only, via nsenter)."""
    path = NETNS_DIR / ns
    if not path.exists():
        # nsenter would fail too, but say clearly why: nothing ever runs in the root netns.
        raise FileNotFoundError(f"network namespace {ns!r} does not exist")
    return subprocess.run(
        ["nsenter", f"--net={path}", *argv],
        check=check,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=input,
    )


def http_get(ns: str, url: str, *, deadline: float = 15.0, timeout: float = 3.0) -> str:
    """Fetch ``url`` from inside ``ns`` with busybox wget, retrying until ``deadline`` s.

    Busybox 1.35 (Debian busybox-static) wget segfaults when given ``-T``; the per-try
    timeout is therefore the subprocess timeout, never wget's own option.
    """
    end = time.monotonic() + deadline
    last = ""
    while True:
        try:
            cp = nsexec(ns, [BUSYBOX, "wget", "-q", "-O-", url], check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            last = f"timed out after {timeout}s"
        else:
            if cp.returncode == 0:
                return cp.stdout
            last = f"rc={cp.returncode} {(cp.stderr or cp.stdout).strip()}"
        if time.monotonic() >= end:
            raise AssertionError(f"GET {url} in netns {ns} failed: {last}")
        time.sleep(0.2)


# --------------------------------------------------------------------------- image


def build_rootfs(rootfs: Path) -> Path:
    """Lay out a minimal busybox rootfs (idempotent)."""
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    for d in ("etc", "proc", "sys", "dev", "tmp", "run", "var/run", "root", "www", "usr/bin"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    bb = rootfs / "bin" / "busybox"
    if not bb.exists():
        shutil.copy2(BUSYBOX, bb)
    bb.chmod(0o755)
    for applet in APPLETS:
        link = rootfs / "bin" / applet
        if not link.is_symlink() and not link.exists():
            link.symlink_to("busybox")
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (rootfs / "www" / "index.html").write_text(INDEX_HTML)
    pause = rootfs / "pause"
    pause.write_text(PAUSE_SCRIPT)
    pause.chmod(0o755)
    return rootfs


def build_image_tarball(workdir: Path) -> Path:
    """Return a tarball of the busybox rootfs under ``workdir`` (built once, then cached)."""
    tarball = workdir / "pn-busybox.tar"
    if tarball.exists():
        return tarball
    rootfs = build_rootfs(workdir / "rootfs")
    tmp = tarball.with_suffix(".tar.partial")
    with tarfile.open(tmp, "w") as tar:
        for entry in sorted(rootfs.iterdir()):
            tar.add(entry, arcname=entry.name)
    tmp.rename(tarball)
    return tarball


# --------------------------------------------------------------------------- configuration


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def render_containers_conf(
    *,
    tmp_dir: Path,
    network_config_dir: Path,
    cni_plugin_dirs: Sequence[str],
    image: str = IMAGE,
) -> str:
    return f"""\
# Written by tests/e2e/podman_harness.py: test-only, never the machine's config.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"
netns = "bridge"

[network]
network_backend = "cni"
network_config_dir = {_toml_str(str(network_config_dir))}
cni_plugin_dirs = {_toml_list(cni_plugin_dirs)}

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {_toml_str(str(tmp_dir / "events.log"))}
tmp_dir = {_toml_str(str(tmp_dir))}
image_copy_tmp_dir = {_toml_str(str(tmp_dir / "image-copy"))}
lock_type = "file"
pull_policy = "never"
infra_image = {_toml_str(image)}
infra_command = "/pause"
"""


def render_storage_conf(root: Path, runroot: Path, driver: str = "vfs") -> str:
    return f"""\
# Written by tests/e2e/podman_harness.py: test-only storage.
[storage]
driver = {_toml_str(driver)}
graphroot = {_toml_str(str(root))}
runroot = {_toml_str(str(runroot))}
"""


@dataclass(frozen=True)
class PodmanStorage:
    """One isolated podman storage (shared by all tests of a session)."""

    base: Path
    driver: str = "vfs"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def runroot(self) -> Path:
        return self.base / "run"

    @property
    def tmp_dir(self) -> Path:
        return self.base / "tmp"

    @property
    def storage_conf(self) -> Path:
        return self.base / "storage.conf"

    def prepare(self) -> PodmanStorage:
        for d in (self.root, self.runroot, self.tmp_dir, self.tmp_dir / "image-copy"):
            d.mkdir(parents=True, exist_ok=True)
        self.storage_conf.write_text(render_storage_conf(self.root, self.runroot, self.driver))
        return self


# --------------------------------------------------------------------------- CNI conflists


def write_conflist(network_config_dir: Path | str, conflist: dict) -> Path:
    """Write ``conflist`` as ``<name>.conflist``; its "name" is the podman network name."""
    name = conflist["name"]
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad network name {name!r}")
    d = Path(network_config_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.conflist"
    tmp = path.with_suffix(".conflist.tmp")
    tmp.write_text(json.dumps(conflist, indent=2) + "\n")
    tmp.rename(path)
    return path


def remove_conflist(network_config_dir: Path | str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(network_config_dir) / f"{name}.conflist").unlink()


def reference_bridge_conflist(
    name: str,
    *,
    bridge: str,
    subnet: str,
    data_dir: Path | str,
    portmap: bool = True,
    cni_version: str = "1.0.0",
) -> dict:
    """A conflist made only of Debian's reference plugins (bridge + host-local [+ portmap])."""
    plugins: list[dict] = [
        {
            "type": "bridge",
            "bridge": bridge,
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "dataDir": str(data_dir),
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
    ]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


# --------------------------------------------------------------------------- podman


class PodmanError(AssertionError):
    pass


@dataclass
class Podman:
    """podman bound to one test namespace, one containers.conf and one storage.

    ``containers_conf`` is (re)written from the other arguments, so it always names this
    instance's ``network_config_dir`` and ``cni_plugin_dirs`` (podman reads the plugin
    dirs only from containers.conf). Put podnet's bin dir first in ``cni_plugin_dirs``
    and ``/usr/lib/cni`` after it.
    """

    netns: str
    containers_conf: Path
    root: Path
    runroot: Path
    network_config_dir: Path
    cni_plugin_dirs: Sequence[str] = (REFERENCE_CNI_DIR,)
    tmp_dir: Path | None = None
    storage_conf: Path | None = None
    storage_driver: str = "vfs"
    default_timeout: float = 120.0
    containers: list[str] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)
    label: str = field(default_factory=lambda: f"pn-e2e-{secrets.token_hex(4)}")

    def __post_init__(self) -> None:
        self.containers_conf = Path(self.containers_conf)
        self.network_config_dir = Path(self.network_config_dir)
        self.root, self.runroot = Path(self.root), Path(self.runroot)
        if self.tmp_dir is None:
            self.tmp_dir = self.runroot.parent / "libpod-tmp"
        self.tmp_dir = Path(self.tmp_dir)
        self.network_config_dir.mkdir(parents=True, exist_ok=True)
        (self.tmp_dir / "image-copy").mkdir(parents=True, exist_ok=True)
        self._ids_dir = self.containers_conf.parent / f"{self.label}-ids"
        self._ids_dir.mkdir(parents=True, exist_ok=True)
        self._seq = 0
        self.write_containers_conf()

    # -- configuration
    def write_containers_conf(self) -> None:
        self.containers_conf.parent.mkdir(parents=True, exist_ok=True)
        self.containers_conf.write_text(
            render_containers_conf(
                tmp_dir=self.tmp_dir,
                network_config_dir=self.network_config_dir,
                cni_plugin_dirs=list(self.cni_plugin_dirs),
            )
        )

    def write_conflist(self, conflist: dict) -> Path:
        return write_conflist(self.network_config_dir, conflist)

    @property
    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "CONTAINERS_CONF": str(self.containers_conf),
            "TMPDIR": str(self.tmp_dir / "image-copy"),
        }
        if self.storage_conf is not None:
            env["CONTAINERS_STORAGE_CONF"] = str(self.storage_conf)
        return env

    def argv(self, args: Sequence[str]) -> list[str]:
        return [
            "podman",
            "--root", str(self.root),
            "--runroot", str(self.runroot),
            "--tmpdir", str(self.tmp_dir),
            "--storage-driver", self.storage_driver,
            "--cgroup-manager", "cgroupfs",
            "--runtime", "runc",
            "--events-backend", "file",
            *args,
        ]  # fmt: skip

    # -- bookkeeping: record what we create so cleanup removes exactly that
    def _instrument(self, args: list[str]) -> tuple[list[str], Path | None, str | None]:
        """Add --cidfile/--pod-id-file and our label to run/create commands."""
        self._seq += 1
        head = args[:2]
        if args[:1] in (["run"], ["create"]) or head in (
            ["container", "run"],
            ["container", "create"],
        ):
            n = 1 if args[0] in ("run", "create") else 2
            idfile = self._ids_dir / f"c{self._seq}"
            extra = ["--cidfile", str(idfile), "--label", f"pn-e2e={self.label}"]
            return [*args[:n], *extra, *args[n:]], idfile, "container"
        if head == ["pod", "create"]:
            idfile = self._ids_dir / f"p{self._seq}"
            extra = ["--pod-id-file", str(idfile), "--label", f"pn-e2e={self.label}"]
            if not any(a.startswith(("--infra-command", "--infra-image")) for a in args):
                # podman 4.3 runs the infra image's CMD, not containers.conf's infra_command.
                extra += ["--infra-command", "/pause"]
            return [*args[:2], *extra, *args[2:]], idfile, "pod"
        return args, None, None

    def run(
        self,
        args: Sequence[str],
        check: bool = True,
        timeout: float | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman <args>`` inside the test namespace."""
        full, idfile, kind = self._instrument(list(args))
        try:
            cp = nsexec(
                self.netns,
                self.argv(full),
                check=False,
                timeout=timeout or self.default_timeout,
                env=self.env,
                input=input,
            )
        finally:
            if idfile is not None and idfile.exists():
                ident = idfile.read_text().strip()
                if ident:
                    (self.containers if kind == "container" else self.pods).append(ident)
        if check and cp.returncode != 0:
            raise PodmanError(
                f"podman {' '.join(args)} failed (rc={cp.returncode}) in netns {self.netns}:\n"
                f"stdout: {cp.stdout.strip()}\nstderr: {cp.stderr.strip()}"
            )
        return cp

    # -- conveniences
    def inspect(self, name_or_id: str) -> dict:
        return json.loads(self.run(["container", "inspect", name_or_id]).stdout)[0]

    def ip_of(self, name_or_id: str, network: str) -> str:
        return self.inspect(name_or_id)["NetworkSettings"]["Networks"][network]["IPAddress"]

    def exec(
        self, name_or_id: str, *cmd: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["exec", name_or_id, *cmd], check=check)

    def cleanup(self) -> list[str]:
        """Force-remove every container and pod this instance started; return problems."""
        problems: list[str] = []
        if not (NETNS_DIR / self.netns).exists():
            # Never let podman (and the CNI DEL it runs) loose in the root namespace.
            problems.append(f"netns {self.netns} gone before cleanup; skipped podman rm")
            return problems
        removed = [*self.containers, *self.pods]
        if self.containers:
            cp = self.run(["rm", "-f", "-t", "0", "--ignore", *self.containers], check=False)
            if cp.returncode != 0:
                problems.append(f"rm containers: {cp.stderr.strip()}")
        if self.pods:
            cp = self.run(["pod", "rm", "-f", "-t", "0", "--ignore", *self.pods], check=False)
            if cp.returncode != 0:
                problems.append(f"rm pods: {cp.stderr.strip()}")
        # Safety net for anything made by a path that bypassed the id files.
        cp = self.run(
            ["ps", "-a", "-q", "--no-trunc", "--filter", f"label=pn-e2e={self.label}"], check=False
        )
        left = cp.stdout.split() if cp.returncode == 0 else []
        if left:
            problems.append(f"containers left after rm by id: {left}")
            self.run(["rm", "-f", "-t", "0", "--ignore", *left], check=False)
        self.containers.clear()
        self.pods.clear()
        remove_empty_cgroups(removed + left)
        return problems


def remove_empty_cgroups(container_ids: Iterable[str], root: Path = Path("/sys/fs/cgroup")) -> None:
    """podman 4.3 with cgroupfs leaves each container's (empty) cgroup under
    libpod_parent/ in every hierarchy: remove those of our containers, deepest first.
    rmdir refuses a cgroup that still has processes, so nothing alive is touched."""
    ids = [cid for cid in container_ids if len(cid) >= 12]
    for parent in root.glob("*/libpod_parent"):
        for group in parent.iterdir():
            if group.is_dir() and any(group.name.startswith(cid) or cid.startswith(group.name) for cid in ids):
                for path in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        path.rmdir()
                with contextlib.suppress(OSError):
                    group.rmdir()


# --------------------------------------------------------------------------- session


@dataclass
class PodmanSession:
    """The session's isolated storage with the busybox image imported."""

    base: Path
    storage: PodmanStorage
    image: str = IMAGE

    def podman(
        self,
        netns_name: str,
        network_config_dir: Path | str,
        cni_plugin_dirs: Sequence[str] = (REFERENCE_CNI_DIR,),
        containers_conf: Path | str | None = None,
    ) -> Podman:
        network_config_dir = Path(network_config_dir)
        if containers_conf is None:
            containers_conf = network_config_dir.parent / "containers.conf"
        return Podman(
            netns=netns_name,
            containers_conf=Path(containers_conf),
            root=self.storage.root,
            runroot=self.storage.runroot,
            network_config_dir=network_config_dir,
            cni_plugin_dirs=list(cni_plugin_dirs),
            tmp_dir=self.storage.tmp_dir,
            storage_conf=self.storage.storage_conf,
            storage_driver=self.storage.driver,
        )


def start_session(base: Path, *, image: str = IMAGE) -> PodmanSession:
    """Prepare storage and import the busybox image (in a scratch netns).

    ``base`` holds the image tarball cache and per-session configs. The storage itself goes
    to a short ``/tmp/pn-e2e-*`` dir: podman refuses a runroot longer than 50 characters
    (and conmon's socket paths under tmp_dir must stay short too).
    """
    storage = PodmanStorage(Path(tempfile.mkdtemp(prefix="pn-e2e-", dir="/tmp"))).prepare()
    tarball = build_image_tarball(base / "image")
    session = PodmanSession(base=base, storage=storage, image=image)
    with netns(f"{NETNS_PREFIX}img-") as ns:
        pm = session.podman(
            ns, base / "session-cni", containers_conf=base / "session-containers.conf"
        )
        if pm.run(["image", "exists", image], check=False).returncode != 0:
            pm.run(
                [
                    "import",
                    "--change",
                    'CMD ["/bin/sh"]',
                    "--change",
                    "WORKDIR /",
                    str(tarball),
                    image,
                ],
                timeout=300,
            )
    return session


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt.startswith(prefix):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def end_session(session: PodmanSession) -> list[str]:
    """Remove every container/pod in the session storage, then the storage's mounts."""
    problems: list[str] = []
    with netns(f"{NETNS_PREFIX}gc-") as ns:
        pm = session.podman(
            ns,
            session.base / "session-cni",
            containers_conf=session.base / "session-containers.conf",
        )
        left = pm.run(["ps", "-a", "-q", "--no-trunc"], check=False).stdout.split()
        if left:
            problems.append(f"containers left at session end: {left}")
            pm.run(["rm", "-f", "-t", "0", "--ignore", *left], check=False)
        pods = pm.run(["pod", "ps", "-q", "--no-trunc"], check=False).stdout.split()
        if pods:
            problems.append(f"pods left at session end: {pods}")
            pm.run(["pod", "rm", "-f", "-t", "0", "--ignore", *pods], check=False)
    for base in (session.base, session.storage.base):
        for mnt in _mounts_under(base):
            problems.append(f"mount left under session dir: {mnt}")
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True, timeout=30)
    if session.storage.base.name.startswith(NETNS_PREFIX):
        shutil.rmtree(session.storage.base, ignore_errors=True)
    return problems

"""podnet as containerd's CNI plugin, through containerd's CRI (what kubelet drives).

containerd 1.6 (Debian) runs as a process this test starts, by PID, inside the test's
"host" namespace (`nsenter --net`, not `ip netns exec`, which remounts /sys and hides the
cgroup tree from runc), with its root, state, socket, runc root and pod namespaces
(`netns_mounts_under_state_dir`) under one tmp dir. Its CRI plugin finds podnet in a bin
dir of its own (CRI 1.6 takes one dir: podnet's executables and the reference plugins,
of which it runs `loopback`) and one conflist, served by an agent in the host namespace
or by the plugin's in-process fallback. No registry is reachable: the pod sandbox image
is an OCI image built here (a static busybox running `sleep`) and imported with `ctr`.

containerd's CNI library sends runtimeConfig.portMappings as {"HostPort": ..,
"ContainerPort": .., "Protocol": "tcp", "HostIP": ""}: the hostPort checks are the proof
that podnet reads capability keys as the reference plugins do (issue 10, item 10).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cri_client import SANDBOX_READY, CriClient, Port, SandboxStatus

from cniharness import (
    ECHO_SERVER,
    REFERENCE_DIR,
    Agent,
    links,
    needs_root,
    nft_rules,
    reservations,
    tcp_probe,
)
from podnet import keys
from podnet.lab.sandbox import Sandbox, wait_for_path
from podnet.naming import attach_id, host_veth_name
from podnet.store import open_store

pytestmark = pytest.mark.root

NET = "pncd"
BRIDGE = "pncd0"
SUBNET = ipaddress.ip_network("10.97.0.0/24")
UPLINK = ("192.168.97.1", "192.168.97.2")  # the host namespace's address, a peer's
HOST_PORT, CONTAINER_PORT = 39611, 8080  # the mapping
PAUSE_IMAGE = "localhost/podnet-test/pause:1"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}
SHIM_SOCKETS = Path("/run/containerd/s")  # fixed in containerd 1.6 (see containerd_config)


@pytest.fixture(autouse=True)
def _prerequisites() -> None:
    needs_root()
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2", "runc", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (run `make deps`)")
    if not Path(BUSYBOX).is_file() or not os.access(os.path.join(REFERENCE_DIR, "loopback"), os.X_OK):
        pytest.skip(f"{BUSYBOX} or {REFERENCE_DIR}/loopback missing (run `make deps`)")
    if platform.machine() not in GOARCH:
        pytest.skip(f"no pause image for {platform.machine()}")


# ---------------------------------------------------------------- the pause image


def _blob(out: tarfile.TarFile, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest[7:]}")
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Same bytes on every run, so the same image digest."""
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    return info


def pause_image(path: Path) -> Path:
    """An OCI image archive: one layer with a static busybox, whose entrypoint sleeps."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox", filter=_root_owned)
    arch = GOARCH[platform.machine()]
    config = {"architecture": arch, "os": "linux",
              "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
              "rootfs": {"type": "layers",
                         "diff_ids": ["sha256:" + hashlib.sha256(layer.getvalue()).hexdigest()]}}
    with tarfile.open(path, "w") as out:
        manifest = {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       **_blob(out, json.dumps(config).encode())},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(out, layer.getvalue())}],
        }
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": manifest["mediaType"], **_blob(out, json.dumps(manifest).encode()),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": PAUSE_IMAGE},
        }]}
        for name, doc in (("oci-layout", {"imageLayoutVersion": "1.0.0"}), ("index.json", index)):
            data = json.dumps(doc).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------- containerd


def containerd_config(base: Path, bin_dir: Path, conf_dir: Path) -> str:
    """Everything containerd keeps lives under `base` (JSON strings are TOML strings).
    Shim sockets are the one exception: containerd 1.6 puts them in /run/containerd/s,
    named by a hash of this socket's path. `restrict_oom_score_adj`: the sandbox's -998
    needs CAP_SYS_RESOURCE, which a test machine may not give (runc: "failed to update
    /proc/self/oom_score_adj: Permission denied")."""
    q = json.dumps
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = {q(str(base / "root"))}
state = {q(str(base / "state"))}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = {q(str(base / "containerd.sock"))}
[plugins."io.containerd.internal.v1.opt"]
  path = {q(str(base / "opt"))}
{cri}]
  sandbox_image = {q(PAUSE_IMAGE)}
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
{cri}.containerd]
  snapshotter = "native"
  default_runtime_name = "runc"
{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{cri}.containerd.runtimes.runc.options]
  Root = {q(str(base / "runc"))}
  SystemdCgroup = false
{cri}.cni]
  bin_dir = {q(str(bin_dir))}
  conf_dir = {q(str(conf_dir))}
  max_conf_num = 1
"""


def podnet_conflist(socket_path: str, data_dir: str) -> dict:
    return {
        "cniVersion": "1.0.0",  # the newest containerd 1.6's libcni speaks
        "name": NET,
        "plugins": [{
            "type": "podnet", "bridge": BRIDGE, "isDefaultGateway": True, "ipMasq": True,
            "capabilities": {"portMappings": True}, "agentSocket": socket_path,
            "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": str(SUBNET)}]], "dataDir": data_dir},
        }],
    }


@dataclass
class Containerd:
    """One containerd in the test's host namespace, stopped by its PID."""

    sandbox: Sandbox
    host_ns: str
    base: Path
    proc: subprocess.Popen | None = None
    cri: CriClient | None = None
    cgroup_parent: str = field(default_factory=lambda: f"/pn-cd-{secrets.token_hex(4)}")
    made: list[Path] = field(default_factory=list)  # system dirs containerd created for us

    @property
    def socket(self) -> str:
        return str(self.base / "containerd.sock")

    def start(self, cni_bin: str, conflist: dict) -> Containerd:
        self.made = [d for d in (SHIM_SOCKETS.parent, SHIM_SOCKETS) if not d.exists()]
        bin_dir, conf_dir = self.base / "cni-bin", self.base / "net.d"
        bin_dir.mkdir()
        conf_dir.mkdir()
        for plugin in sorted(os.listdir(REFERENCE_DIR)):
            (bin_dir / plugin).symlink_to(os.path.join(REFERENCE_DIR, plugin))
        for plugin in ("podnet", "podnet-ipam"):
            (bin_dir / plugin).unlink(missing_ok=True)
            (bin_dir / plugin).symlink_to(os.path.join(cni_bin, plugin))
        (conf_dir / f"10-{NET}.conflist").write_text(json.dumps(conflist, indent=2))
        config = self.base / "config.toml"
        config.write_text(containerd_config(self.base, bin_dir, conf_dir))
        log = self.sandbox.keep_open(open(self.base / "containerd.log", "wb"))  # noqa: SIM115
        self.proc = self.sandbox.spawn(
            None, ["nsenter", f"--net={Sandbox.path(self.host_ns)}", "containerd", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for_path(self.socket, timeout=30, proc=self.proc)
        self.cri = CriClient(self.socket)
        self.ctr("images", "import", "--snapshotter", "native", str(pause_image(self.base / "pause.tar")))
        deadline = time.monotonic() + 30
        while not self.cri.image_id(PAUSE_IMAGE):  # the CRI learns of it by an event
            assert time.monotonic() < deadline, f"the CRI never saw {PAUSE_IMAGE}\n{self.log()}"
            time.sleep(0.1)
        return self

    def ctr(self, *argv: str) -> str:
        cp = subprocess.run(["ctr", "--address", self.socket, "--namespace", "k8s.io", *argv],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, f"ctr {' '.join(argv)}: {cp.stderr}"
        return cp.stdout

    def log(self) -> str:
        return (self.base / "containerd.log").read_text(errors="replace")[-4000:]

    def run_pod(self, name: str, ports: tuple[Port, ...] = ()) -> SandboxStatus:
        assert self.cri is not None
        try:
            sandbox_id = self.cri.run_pod_sandbox(name, ports=ports, cgroup_parent=self.cgroup_parent)
        except Exception as exc:
            raise AssertionError(f"RunPodSandbox {name}: {exc}\n{self.log()}") from None
        return self.cri.status(sandbox_id)

    def stop(self) -> list[str]:
        """Stop and remove every pod left (CNI DEL), then containerd; return what was left."""
        problems: list[str] = []
        try:
            if self.cri is not None and self.proc is not None and self.proc.poll() is None:
                for sandbox_id in self.cri.sandboxes():
                    problems.append(f"pod sandbox {sandbox_id} left")
                    self.cri.stop(sandbox_id)
                    self.cri.remove(sandbox_id)
        finally:
            if self.cri is not None:
                self.cri.close()
            if self.proc is not None:
                self.sandbox.stop(self.proc, timeout=15)
        for controller in Path("/sys/fs/cgroup").iterdir():  # our parent: empty once pods are gone
            with contextlib.suppress(OSError):
                (controller / self.cgroup_parent.lstrip("/")).rmdir()
        for mount in mounts_under(self.base):
            problems.append(f"mount left: {mount}")
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True, timeout=30)
        for made in reversed(self.made):  # only if empty: no other containerd uses it
            with contextlib.suppress(OSError):
                made.rmdir()
        return problems


def mounts_under(path: Path) -> list[str]:
    """Mount points below `path` (deepest first), from this process's mountinfo."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


# ---------------------------------------------------------------- the network


@dataclass
class Cluster:
    """containerd with podnet as its network, seen from the test."""

    sandbox: Sandbox
    host_ns: str
    peer_ns: str
    data_dir: str
    containerd: Containerd
    agent: Agent | None

    def endpoints(self) -> list[str]:
        store = open_store(os.path.join(self.data_dir, "podnet.db"))
        try:
            return sorted(e.key for e in store.list(keys.endpoints(NET)))
        finally:
            store.close()

    def addresses(self) -> list[str]:
        return sorted(r.address for r in reservations(self.data_dir, NET))

    def pod_veths(self) -> list[str]:
        return sorted(v for v in links(self.sandbox, self.host_ns) if v.startswith("pn"))

    def echo(self, pod: SandboxStatus, label: str) -> None:
        """A TCP listener inside the pod's network namespace (the pod runs only `sleep`)."""
        proc = self.sandbox.spawn(None, ["nsenter", f"--net={pod.netns_path}", sys.executable, "-c",
                                         ECHO_SERVER, "0.0.0.0", str(CONTAINER_PORT), label],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None and b"ready" in proc.stdout.readline()

    def from_pod(self, pod: SandboxStatus, host: str, port: int) -> str:
        """The echo's greeting as a client in `pod` gets it (busybox nc)."""
        cp = subprocess.run(["nsenter", f"--net={pod.netns_path}", BUSYBOX, "nc", "-w", "3", host, str(port)],
                            input="ping\n", capture_output=True, text=True, timeout=10)
        return cp.stdout.strip()

    def assert_agent_served(self) -> None:
        """The agent holds this network's store open: the fast path did the work."""
        if self.agent is None:
            return
        assert self.agent.proc is not None and self.agent.proc.poll() is None
        fds = Path(f"/proc/{self.agent.proc.pid}/fd")
        held = {os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()}
        assert os.path.join(self.data_dir, "podnet.db") in held


@pytest.fixture(params=["agent", "in-process"])
def cluster(request, sandbox, host_ns, cni_bin, data_dir, socket_path, tmp_path) -> Iterator[Cluster]:
    """containerd in host_ns, the host reachable from a peer namespace on UPLINK."""
    peer_ns = sandbox.netns("peer")
    sandbox.exec(host_ns, ["ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0",
                           "netns", peer_ns])
    for ns, address in zip((host_ns, peer_ns), UPLINK, strict=True):
        sandbox.exec(ns, ["ip", "addr", "add", f"{address}/24", "dev", "uplink0"])
        sandbox.exec(ns, ["ip", "link", "set", "uplink0", "up"])
    sandbox.exec(host_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    agent = None
    if request.param == "agent":
        agent = Agent(sandbox, host_ns, socket_path, str(tmp_path / "agent.db")).start()
    else:
        assert not os.path.exists(socket_path)
    # Short: containerd's socket paths must fit in 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="pn-cd-", dir="/tmp"))
    containerd = Containerd(sandbox, host_ns, base)
    try:
        containerd.start(cni_bin, podnet_conflist(socket_path, data_dir))
        yield Cluster(sandbox, host_ns, peer_ns, data_dir, containerd, agent)
    finally:
        problems = containerd.stop()  # before the agent: the pods' DEL may need it
        shutil.rmtree(base, ignore_errors=True)
        if problems:
            warnings.warn("containerd cleanup: " + "; ".join(problems), stacklevel=1)


def test_pods_through_the_cri(cluster: Cluster) -> None:
    """Two pods: their addresses, pod to pod, a hostPort from the host and from a peer,
    then stop and remove free every record, address, rule, veth and namespace."""
    a = cluster.containerd.run_pod("a", ports=(Port(CONTAINER_PORT, HOST_PORT),))
    b = cluster.containerd.run_pod("b")
    for pod in (a, b):
        assert pod.state == SANDBOX_READY
        assert ipaddress.ip_address(pod.ip) in SUBNET
        assert os.path.exists(pod.netns_path)
    assert a.ip != b.ip
    assert cluster.addresses() == sorted([a.ip, b.ip])
    assert cluster.endpoints() == sorted(keys.endpoint(NET, pod.id, "eth0") for pod in (a, b))
    assert cluster.pod_veths() == sorted(host_veth_name(attach_id(NET, pod.id, "eth0")) for pod in (a, b))
    assert f"dport {HOST_PORT} dnat to {a.ip}:{CONTAINER_PORT}" in nft_rules(cluster.sandbox, cluster.host_ns)
    cluster.assert_agent_served()

    cluster.echo(a, "a")
    cluster.echo(b, "b")
    assert cluster.from_pod(b, a.ip, CONTAINER_PORT) == "hello from a"
    assert cluster.from_pod(a, b.ip, CONTAINER_PORT) == "hello from b"
    # The hostPort: from the host namespace to its own address, and from a peer.
    assert tcp_probe(cluster.sandbox, cluster.host_ns, UPLINK[0], HOST_PORT) == "hello from a"
    assert tcp_probe(cluster.sandbox, cluster.peer_ns, UPLINK[0], HOST_PORT) == "hello from a"
    assert cluster.from_pod(b, UPLINK[0], HOST_PORT) == "hello from a"

    cri = cluster.containerd.cri
    assert cri is not None
    cri.stop(a.id)  # CNI DEL
    assert cluster.addresses() == [b.ip]
    assert cluster.endpoints() == [keys.endpoint(NET, b.id, "eth0")]
    assert cluster.pod_veths() == [host_veth_name(attach_id(NET, b.id, "eth0"))]
    assert str(HOST_PORT) not in nft_rules(cluster.sandbox, cluster.host_ns)
    assert not os.path.exists(a.netns_path)
    cri.remove(a.id)
    cri.stop(b.id)
    cri.remove(b.id)
    assert cri.sandboxes() == []
    assert cluster.addresses() == [] and cluster.endpoints() == [] and cluster.pod_veths() == []
    assert "podnet:" not in nft_rules(cluster.sandbox, cluster.host_ns)
    assert not os.path.exists(b.netns_path)
    assert mounts_under(cluster.containerd.base) == []
    cluster.assert_agent_served()

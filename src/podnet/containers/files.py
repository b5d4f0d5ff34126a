"""The files a container sees over /etc: hostname, hosts and resolv.conf, kept in the
container's directory and bind-mounted by runtime/init.py. Rendering is pure."""

from __future__ import annotations

from pathlib import Path

from podnet.fileio import write_atomic

HOST_RESOLV = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")
LOCALHOST = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class ContainerFiles:
    """Paths of one container's files (inside StatePaths.container_dir(id)).
    `cni_cache` holds the ADD result and the exact config it was made with: DEL
    needs both, even after the network's conflist has changed or gone."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hostname = root / "hostname"
        self.hosts = root / "hosts"
        self.resolv = root / "resolv.conf"
        self.log = root / "container.log"
        self.cni_cache = root / "cni-result.json"
        self.lock = root / "lock"

    def cni_cache_for(self, ifname: str) -> Path:
        """One cache per attachment: eth0's keeps the old name (containers made
        before multi-network records still tear down), eth1's is cni-result-eth1.json."""
        return self.cni_cache if ifname == "eth0" else self.root / f"cni-result-{ifname}.json"

    def cni_caches(self) -> list[Path]:
        """Every attachment's cache on disk, secondaries first (newest interface
        first, undoing in reverse order of creation) and eth0's last."""
        secondary = sorted(self.root.glob("cni-result-*.json"),
                           key=lambda p: (len(p.name), p.name), reverse=True)
        return [*secondary, *([self.cni_cache] if self.cni_cache.exists() else [])]


def render_hosts(hostname: str, name: str, ips: list[str]) -> str:
    """localhost plus the container's own addresses under its hostname and name."""
    names = " ".join(dict.fromkeys([hostname, name]))
    own = "".join(f"{ip.split('/')[0]}\t{names}\n" for ip in ips)
    return LOCALHOST + (own or f"127.0.1.1\t{names}\n")


def render_resolv(nameserver: str | None) -> str:
    """Bridge networks: the agent's DNS server on the network's gateway; none: empty."""
    return f"nameserver {nameserver}\n" if nameserver else ""


def write_files(files: ContainerFiles, hostname: str, hosts: str, resolv: str) -> None:
    """Before the container starts: they are bind-mounted, so a later rewrite (a new
    inode) would not reach a running container."""
    files.root.mkdir(parents=True, exist_ok=True)
    write_atomic(files.hostname, hostname + "\n")
    write_atomic(files.hosts, hosts)
    write_atomic(files.resolv, resolv)
    files.log.touch()


def host_file(path: Path) -> str:
    """A host file's text (host mode copies them), empty if the host has none."""
    try:
        return path.read_text()
    except OSError:
        return ""

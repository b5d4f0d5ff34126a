"""The container's first moments, run as
`nsenter --net=NETNS unshare --uts --mount --propagation private -- python3 -m
podnet.runtime.init --hostname H --resolv F --hosts F [--sysfs] -- CMD ...`.

unshare has already given this process a private mount namespace and a UTS namespace
of its own; init bind-mounts the container's resolv.conf and hosts over /etc (so the
host's files are untouched), optionally mounts a fresh sysfs (a sysfs shows the
interfaces of the namespace that mounted it), sets the hostname, then execs CMD, which
keeps this pid. Exit codes follow Docker: 125 setup failed, 126 not executable, 127
not found. Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import sys

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND = 0x2, 0x4, 0x8, 0x1000
MNT_DETACH = 0x2


class SetupError(Exception):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    rc = _libc().mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None)
    if rc != 0:
        err = ctypes.get_errno()
        raise SetupError(f"mount {source} on {target}: {os.strerror(err)}")


def bind(source: str, target: str) -> None:
    if not os.path.exists(target):
        raise SetupError(f"cannot bind {source}: {target} does not exist")
    mount(source, target, None, MS_BIND)


def fresh_sysfs() -> None:
    _libc().umount2(b"/sys", MNT_DETACH)  # EINVAL when /sys is no mount: mount anyway
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SetupError("usage: podnet.runtime.init [OPTIONS] -- CMD [ARG...]")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="podnet-init")
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--resolv", required=True)
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--sysfs", action="store_true")
    args = parser.parse_args(argv[:split])
    cmd = argv[split + 1 :]
    if not cmd:
        raise SetupError("no command given")
    return args, cmd


def setup(args: argparse.Namespace) -> None:
    if args.sysfs:
        fresh_sysfs()
    bind(args.resolv, "/etc/resolv.conf")
    bind(args.hosts, "/etc/hosts")
    try:
        socket.sethostname(args.hostname)
    except OSError as exc:
        raise SetupError(f"sethostname {args.hostname}: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        args, cmd = parse(list(sys.argv[1:] if argv is None else argv))
        setup(args)
    except SetupError as exc:
        print(f"podnet-init: {exc}", file=sys.stderr)
        return 125
    sys.stdout.flush()
    try:
        os.execvp(cmd[0], cmd)
    except FileNotFoundError:
        print(f"podnet-init: {cmd[0]}: command not found", file=sys.stderr)
        return 127
    except OSError as exc:
        print(f"podnet-init: {cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 126
    return 0  # not reached: execvp replaced this process


if __name__ == "__main__":
    sys.exit(main())

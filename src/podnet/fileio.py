"""One way to write a file: atomic and durable.

Every file podnet writes (the CNI executables and conflists, the CNI result cache, a
container's /etc files, lab state, the fallback's store notes, the systemd unit and
config skeleton) goes through `write_atomic`: the data goes to a temp file of its own
in the target's directory, is fsynced, renamed over the target, and then the
directory is fsynced. So a reader (a runtime exec'ing the plugin or reading a
conflist) sees the whole old file or the whole new one; a crash or a power loss
leaves one of the two, never a half-written file, and a failed write removes its temp
file. Each writer has its own temp name, so writers in parallel (several first
`container run -d` installing the executables at once) never trip over each other.

Standard library only: the plugin's in-process fallback writes store notes with it.
"""

from __future__ import annotations

import errno
import os
from contextlib import suppress

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int | None = None, *,
                 replace: bool = True) -> None:
    """Write `data` (text is UTF-8) to `path` atomically and durably.

    `mode`: the file's exact permissions whatever the umask (executables 0o755);
    None: as open() makes them (0o666 less the umask). `replace=False` only creates:
    FileExistsError if `path` exists, and nothing is written (install-cni's conflist
    is never overwritten, even by a writer in parallel)."""
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = _create_temp(directory, os.path.basename(target), 0o666 if mode is None else 0o600)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)  # the data is on disk before any name points at it
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # EEXIST instead of overwriting
            os.unlink(tmp)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)  # ... and the new name is on disk too


def remove(path: str | os.PathLike[str]) -> bool:
    """Unlink `path` (a missing file is fine) and fsync its directory, so it stays
    gone after a crash; whether this call removed it."""
    target = os.fspath(path)
    try:
        os.unlink(target)
        removed = True
    except FileNotFoundError:
        removed = False
    with suppress(FileNotFoundError):  # no directory: nothing to make durable
        fsync_directory(os.path.dirname(target) or ".")
    return removed


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the names in `directory` durable (a rename or unlink in it)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a file system that cannot sync directories
            raise
    finally:
        os.close(fd)


def _create_temp(directory: str, name: str, create_mode: int) -> tuple[int, str]:
    """A new temp file beside the target, named for this writer alone (O_EXCL)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{name[:200]}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, _FLAGS, create_mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name", os.path.join(directory, name))

"""Type ids from the kernel's own BTF (/sys/kernel/btf/vmlinux): what a program needs
to call a kernel function (a kfunc) by id, without libbpf.

Why: podnet's programs are assembled in Python (kernel/bpf.py); a kfunc call names its
function by its BTF type id, which differs from kernel build to kernel build, so it is
read from the running kernel once per process (about a second: every type is walked).
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

from podnet.errors import KernelError

VMLINUX = Path("/sys/kernel/btf/vmlinux")
KIND_FUNC = 12
# bytes after the 12-byte common header, by kind (linux/btf.h): vlen = info & 0xffff
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64


@functools.lru_cache(maxsize=1)
def _functions(path: Path = VMLINUX) -> dict[str, int]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KernelError(f"btf: cannot read {path}: {exc}") from None
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data, 0)
    if magic != 0xEB9F:
        raise KernelError(f"btf: {path} is not BTF")
    types = memoryview(data)[hdr_len + type_off: hdr_len + type_off + type_len]
    strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
    out: dict[str, int] = {}
    pos, type_id = 0, 1
    while pos < len(types):
        name_off, info, _ = struct.unpack_from("<III", types, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == KIND_FUNC:
            out[strings[name_off: strings.index(b"\0", name_off)].decode()] = type_id
        pos += 12 + _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
        type_id += 1
    return out


def function_id(name: str) -> int | None:
    """The BTF id of kernel function `name` (None: this kernel has none by that name)."""
    return _functions().get(name)

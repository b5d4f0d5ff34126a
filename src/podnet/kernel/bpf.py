"""The bpf() system call through ctypes: maps, program loading, and an assembler for
the few instructions podnet's programs need.

Why no compiler: clang, libbpf-dev and bpftool are not installed on the nodes podnet
runs on (issue 19), and podnet's programs are a couple of dozen instructions. They are
written here as Python, checked by the kernel's verifier when loaded, and the verifier's
log is the error when one is refused. x86-64 and arm64 only (the syscall numbers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct
from dataclasses import dataclass

from podnet.errors import KernelError

SYS_BPF = {"x86_64": 321, "aarch64": 280}

# commands
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY, PROG_LOAD = 0, 1, 2, 3, 4, 5
PROG_TEST_RUN = 10
# map and program types
MAP_TYPE_ARRAY, MAP_TYPE_LPM_TRIE = 2, 11
PROG_TYPE_SCHED_CLS = 3
F_NO_PREALLOC = 1

# instruction classes, sizes, sources and operations (linux/bpf_common.h, linux/bpf.h)
LD, LDX, ST, STX, ALU, JMP, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
IMM, MEM = 0x00, 0x60
K, X = 0x00, 0x08
ADD, SUB, OR, AND, LSH, RSH, XOR, MOV, END = 0x00, 0x10, 0x40, 0x50, 0x60, 0x70, 0xA0, 0xB0, 0xD0
JA, JEQ, JGT, JGE, JNE, CALL, EXIT = 0x00, 0x10, 0x20, 0x30, 0x50, 0x80, 0x90
PSEUDO_MAP_FD = 1
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)


@dataclass(frozen=True)
class Insn:
    """One instruction; `label`: a jump to a label, resolved by `assemble`."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    label: str | None = None


@dataclass(frozen=True)
class Label:
    name: str


def mov_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | MOV | K, dst, 0, 0, imm)


def mov32_imm(dst: int, imm: int) -> Insn:
    """dst = imm as 32 bits, zero-extended (mov_imm sign-extends: a constant with its top
    bit set would never equal a 32-bit load)."""
    return Insn(ALU | MOV | K, dst, 0, 0, imm)


def mov_reg(dst: int, src: int) -> Insn:
    return Insn(ALU64 | MOV | X, dst, src)


def add_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | ADD | K, dst, 0, 0, imm)


def alu_imm(op: int, dst: int, imm: int) -> Insn:
    return Insn(ALU64 | op | K, dst, 0, 0, imm)


def alu_reg(op: int, dst: int, src: int) -> Insn:
    return Insn(ALU64 | op | X, dst, src)


def to_be16(dst: int) -> Insn:
    """The low 16 bits of `dst` in network order (a byte swap on a little-endian host)."""
    return Insn(ALU | END | X, dst, 0, 0, 16)  # X: BPF_TO_BE


def ldx(size: int, dst: int, src: int, off: int) -> Insn:
    return Insn(LDX | MEM | size, dst, src, off)


def stx(size: int, dst: int, src: int, off: int) -> Insn:
    return Insn(STX | MEM | size, dst, src, off)


def st_imm(size: int, dst: int, off: int, imm: int) -> Insn:
    return Insn(ST | MEM | size, dst, 0, off, imm)


def jmp_imm(op: int, dst: int, imm: int, label: str) -> Insn:
    return Insn(JMP | op | K, dst, 0, 0, imm, label)


def jmp_reg(op: int, dst: int, src: int, label: str) -> Insn:
    return Insn(JMP | op | X, dst, src, 0, 0, label)


def call(helper: int) -> Insn:
    return Insn(JMP | CALL, 0, 0, 0, helper)


def exit_() -> Insn:
    return Insn(JMP | EXIT)


def ld_map_fd(dst: int, fd: int) -> list[Insn]:
    """The two-slot load of a map (its fd, replaced by the map by the verifier)."""
    return [Insn(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, fd), Insn(0)]


def assemble(program: list[Insn | Label | list[Insn]]) -> bytes:
    """Encode `program` (labels resolved to relative jumps) as the kernel reads it."""
    flat: list[Insn | Label] = []
    for item in program:
        flat.extend(item if isinstance(item, list) else [item])
    where: dict[str, int] = {}
    insns: list[Insn] = []
    for item in flat:
        if isinstance(item, Label):
            where[item.name] = len(insns)
        else:
            insns.append(item)
    out = bytearray()
    for pc, insn in enumerate(insns):
        off = insn.off
        if insn.label is not None:
            if insn.label not in where:
                raise KernelError(f"bpf: jump to unknown label {insn.label!r}")
            off = where[insn.label] - pc - 1
        out += struct.pack("<BBhi", insn.code, (insn.src << 4) | insn.dst, off, insn.imm)
    return bytes(out)


_libc: ctypes.CDLL | None = None


def _bpf(cmd: int, attr: bytes) -> int:
    """One bpf() call; its result (an fd or 0), KernelError with errno otherwise."""
    return _syscall(cmd, ctypes.create_string_buffer(attr, len(attr)))


def _syscall(cmd: int, buf: ctypes.Array) -> int:
    """bpf(cmd, buf): the kernel may write into `buf` (test_run reads it back)."""
    global _libc
    nr = SYS_BPF.get(platform.machine())
    if nr is None:
        raise KernelError(f"bpf: no syscall number for {platform.machine()}")
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    result = _libc.syscall(nr, cmd, buf, len(buf))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def run_once(prog_fd: int, packet: bytes) -> tuple[int, bytes]:
    """Run a loaded tc program once on `packet` (BPF_PROG_TEST_RUN, in the calling
    thread's namespace): its return code and the packet as it left it. For tests."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 256)
    attr = struct.pack("<IIIIQQ", prog_fd, 0, len(packet), len(data_out), _ptr(data_in), _ptr(data_out))
    buf = ctypes.create_string_buffer(attr.ljust(80, b"\0"), 80)
    _syscall(PROG_TEST_RUN, buf)
    (retval,), (size_out,) = struct.unpack_from("<I", buf.raw, 4), struct.unpack_from("<I", buf.raw, 12)
    return retval, data_out.raw[:size_out]


def _ptr(buf: ctypes.Array) -> int:
    return ctypes.addressof(buf)


class BpfMap:
    """A map this process created; closed with `close()` (the kernel keeps it while a
    loaded program uses it)."""

    def __init__(self, map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0) -> None:
        attr = struct.pack("<IIIII", map_type, key_size, value_size, max_entries, flags).ljust(72, b"\0")
        try:
            self.fd = _bpf(MAP_CREATE, attr)
        except OSError as exc:
            raise KernelError(f"bpf: cannot create a map: {exc}") from None
        self.key_size, self.value_size = key_size, value_size

    def _elem(self, cmd: int, key: bytes, value: bytes | None = None, flags: int = 0) -> int:
        kbuf = ctypes.create_string_buffer(key, self.key_size)
        vbuf = ctypes.create_string_buffer(value or b"", self.value_size)
        attr = struct.pack("<IIQQQ", self.fd, 0, _ptr(kbuf), _ptr(vbuf), flags)
        return _bpf(cmd, attr)

    def update(self, key: bytes, value: bytes) -> None:
        try:
            self._elem(MAP_UPDATE_ELEM, key, value)
        except OSError as exc:
            raise KernelError(f"bpf: cannot update map {self.fd}: {exc}") from None

    def delete(self, key: bytes) -> None:
        try:
            self._elem(MAP_DELETE_ELEM, key)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise KernelError(f"bpf: cannot delete from map {self.fd}: {exc}") from None

    def lookup(self, key: bytes) -> bytes | None:
        kbuf = ctypes.create_string_buffer(key, self.key_size)
        vbuf = ctypes.create_string_buffer(self.value_size)
        try:
            _bpf(MAP_LOOKUP_ELEM, struct.pack("<IIQQQ", self.fd, 0, _ptr(kbuf), _ptr(vbuf), 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KernelError(f"bpf: cannot read map {self.fd}: {exc}") from None
        return vbuf.raw

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        nbuf = ctypes.create_string_buffer(self.key_size)
        key: ctypes.Array | None = None
        while True:
            attr = struct.pack("<IIQQ", self.fd, 0, _ptr(key) if key is not None else 0, _ptr(nbuf))
            try:
                _bpf(MAP_GET_NEXT_KEY, attr)
            except FileNotFoundError:
                return out
            except OSError as exc:
                raise KernelError(f"bpf: cannot list map {self.fd}: {exc}") from None
            out.append(nbuf.raw)
            key = ctypes.create_string_buffer(nbuf.raw, self.key_size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def load_program(code: bytes, name: str, prog_type: int = PROG_TYPE_SCHED_CLS, license_: str = "GPL") -> int:
    """Load `code`; the program's fd. A refusal is a KernelError with the verifier's log."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license_.encode())
    log = ctypes.create_string_buffer(1 << 16)
    attr = struct.pack("<IIQQIIQII16s", prog_type, len(code) // 8, _ptr(insns), _ptr(lic), 1, len(log), _ptr(log),
                       0, 0, name.encode()[:15]).ljust(128, b"\0")
    try:
        return _bpf(PROG_LOAD, attr)
    except OSError as exc:
        raise KernelError(f"bpf: program {name} refused: {exc}", log.value.decode(errors="replace")[-2000:]) from None

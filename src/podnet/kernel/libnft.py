"""nft scripts through libnftables in this process: the same parser and the same one
kernel transaction per script as `nft -f -`, without starting a process for each.

Why: the service table's updates (services/render_diff.py) are a few lines, but nft
1.0.6 lists every chain and set of the ruleset before it applies anything. Measured
with 10,000 services (one endpoint change, 9 lines): `nft -f -` 150 ms, one reused
libnftables context 110 ms; with 1,000 services 20 ms against 4 ms.

A whole table goes to the binary all the same: libnftables' peak memory stays with the
process (glibc keeps what it freed), and loading 10,000 services in-process left the
agent 160 MB larger for good; a process of its own takes as long (1.2 s).

A context opens its netlink socket when it is created, in the creating thread's
network namespace, and acts there ever after. `Nft` promises the calling thread's
namespace, so `LibNft` keeps one context for the namespace it was last called in and
makes a new one when the caller is elsewhere (holding contexts for many namespaces
would keep deleted namespaces alive). Without libnftables.so.1 it runs the `nft`
binary, as `Nft` does, and says so once in the log.

The agent holds several (the services table's, the policy table's): one lock for
every context of the process, as libnftables makes no promise about two contexts
running at once in two threads (the scripts are short; one waits a few ms at most).

What a context does not save: nft 1.0.6 reads its cache of the ruleset again for
every transaction that adds a rule or an element (all chains and sets of every
table, not their rules; about 1 us a chain and 2 us a set here), also right after
its own commit. Only a ruleset with fewer chains and sets makes that cheaper.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading

from podnet.errors import KernelError
from podnet.kernel import netns
from podnet.kernel.nft import MISSING, Nft, check_table

log = logging.getLogger("podnet.kernel.nft")

LIBRARY = "libnftables.so.1"
IN_PROCESS_MAX = 256 * 1024  # bytes of script; a longer one runs the binary (module docstring)
_lib: ctypes.CDLL | None = None
_lib_loaded = False
_lib_lock = threading.Lock()
_run_lock = threading.Lock()  # every context's runs (module docstring)


def _load() -> ctypes.CDLL | None:
    """libnftables with the prototypes used here, or None (logged once) when missing."""
    global _lib, _lib_loaded
    with _lib_lock:
        if _lib_loaded:
            return _lib
        _lib_loaded = True
        try:
            lib = ctypes.CDLL(LIBRARY)
        except OSError as exc:
            log.warning("nft: %s not found (%s): every nft script runs the nft binary", LIBRARY, exc)
            return None
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_free.restype = None
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_set_flags.restype = None
        _lib = lib
        return lib


NFT_CTX_OUTPUT_JSON = 1 << 4  # <nftables/libnftables.h>: what `nft -j` sets


class LibNft(Nft):
    """`Nft` whose `apply` runs in-process through libnftables (module docstring), but
    for long scripts; and its JSON listings too (issue 19: the CNI ADD reads its NAT
    tables before it changes them, and two `nft -j list` processes per ADD were most
    of a node's CPU while a lab attached its pods)."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(binary, timeout)
        self._lock = _run_lock
        self._ctx: int | None = None
        self._ctx_netns: tuple[int, int] | None = None

    @property
    def in_process(self) -> bool:
        """True when scripts run through libnftables, False when through the binary."""
        return _load() is not None

    def apply(self, script: str) -> None:
        """Run `script` as one transaction; KernelError (with nft's message) if rejected."""
        if not script.strip():
            return
        lib = _load() if len(script) <= IN_PROCESS_MAX else None
        if lib is None:
            super().apply(script)
            return
        with self._lock:
            ctx = self._context(lib)
            rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
            lib.nft_ctx_get_output_buffer(ctx)  # read to reset: buffers grow until read
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
        if rc != 0:
            raise KernelError("nft transaction failed", details=error or f"libnftables returned {rc}")

    def _list_json(self, what: str, family: str, table: str) -> dict | None:
        lib = _load()
        if lib is None:
            return super()._list_json(what, family, table)
        check_table(family, table)
        with self._lock:
            ctx = self._context(lib)
            lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
            try:
                rc = lib.nft_run_cmd_from_buffer(ctx, f"list {what} {family} {table}".encode())
                out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
                error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
            finally:
                lib.nft_ctx_output_set_flags(ctx, 0)
        if rc != 0:
            if MISSING in error:
                return None
            raise KernelError(f"nft list {what} {family} {table} failed", error or f"libnftables returned {rc}")
        try:
            return json.loads(out)
        except ValueError as exc:
            raise KernelError(f"nft printed invalid JSON for {what} {family} {table}", str(exc)) from None

    def _context(self, lib: ctypes.CDLL) -> int:
        here = netns.current_identity()
        if self._ctx is not None and self._ctx_netns == here:
            return self._ctx
        self.close()
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise KernelError("libnftables: nft_ctx_new failed")
        if lib.nft_ctx_buffer_output(ctx) != 0 or lib.nft_ctx_buffer_error(ctx) != 0:
            lib.nft_ctx_free(ctx)
            raise KernelError("libnftables: cannot buffer its output")
        self._ctx, self._ctx_netns = ctx, here
        return ctx

    def close(self) -> None:
        """Free the context (and its socket); the next apply makes a new one."""
        if self._ctx is not None and _lib is not None:
            _lib.nft_ctx_free(self._ctx)
        self._ctx, self._ctx_netns = None, None

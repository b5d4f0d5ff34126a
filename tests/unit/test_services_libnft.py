"""kernel/libnft.py without root: where libnftables.so.1 is missing, scripts go to the
nft binary as before, and the log says so once. (The in-process path itself, in a real
namespace: tests/ns/test_services_nft_ns.py.)"""

from __future__ import annotations

import logging
import subprocess

import pytest

from podnet.errors import KernelError
from podnet.kernel import libnft
from podnet.kernel.libnft import LibNft


@pytest.fixture
def no_library(monkeypatch):
    monkeypatch.setattr(libnft, "LIBRARY", "libnftables-not-here.so.0")
    monkeypatch.setattr(libnft, "_lib", None)
    monkeypatch.setattr(libnft, "_lib_loaded", False)


def test_without_the_library_the_binary_runs_and_the_log_says_so_once(no_library, monkeypatch, caplog):
    ran: list[tuple[list[str], str | None]] = []

    def fake_run(self, args, stdin=None):
        ran.append((args, stdin))
        return subprocess.CompletedProcess(args, 1 if "bad" in (stdin or "") else 0, "", "Error: bad")

    monkeypatch.setattr(LibNft, "_run", fake_run)
    nft = LibNft()
    with caplog.at_level(logging.WARNING, logger="podnet.kernel.nft"):
        nft.apply("add table inet t\n")
        with pytest.raises(KernelError, match="nft transaction failed") as refused:
            nft.apply("bad\n")
    assert refused.value.details == "Error: bad"
    assert ran == [(["-f", "-"], "add table inet t\n"), (["-f", "-"], "bad\n")]
    assert not nft.in_process
    warned = [r for r in caplog.records if "libnftables-not-here" in r.getMessage()]
    assert len(warned) == 1 and "nft binary" in warned[0].getMessage()


def test_an_empty_script_does_nothing(no_library, monkeypatch):
    monkeypatch.setattr(LibNft, "_run", lambda *_a, **_k: pytest.fail("nothing to run"))
    LibNft().apply("  \n")


def test_a_whole_table_goes_to_the_binary(monkeypatch):
    """libnftables keeps its peak memory in the agent: a long script runs in a process."""
    ran: list[str | None] = []
    monkeypatch.setattr(LibNft, "_run", lambda self, args, stdin=None: ran.append(stdin)
                        or subprocess.CompletedProcess(args, 0, "", ""))
    monkeypatch.setattr(libnft, "_load", lambda: pytest.fail("not in-process"))
    script = "add table inet t\n" * (libnft.IN_PROCESS_MAX // 16 + 1)
    LibNft().apply(script)
    assert ran == [script]

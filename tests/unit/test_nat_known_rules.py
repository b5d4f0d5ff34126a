"""NatManager keeps what it read and added while the nftables generation stands still
(kernel/nat/manager.py), and the generation reply's parsing (kernel/nftgen.py). No root:
FakeNft with a generation counter that its own transactions move."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from test_portmap_render import NET, PM, V4, A, B, attachment_a, table

from podnet import errors
from podnet.kernel import nftgen
from podnet.kernel.nat.manager import NatManager
from podnet.kernel.nat.render import render_add
from podnet.kernel.nft import FakeNft


class CountingNft(FakeNft):
    """A committed transaction moves the generation, as the kernel's does."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 7

    def apply(self, script: str) -> None:
        super().apply(script)
        if script.strip():
            self.generation += 1


def remembering(tmp_path: Path) -> tuple[NatManager, CountingNft]:
    fake = CountingNft()
    mgr = NatManager(fake, lock_path=str(tmp_path / "nft.lock"), proc_sys=str(tmp_path),
                     generation=lambda: fake.generation)
    return mgr, fake


def test_an_add_reads_the_tables_again_only_after_someone_elses_commit(tmp_path: Path) -> None:
    mgr, fake = remembering(tmp_path)
    mgr.add(NET, A, [V4], [], ip_masq=True)
    assert len(fake.list_calls) == 2  # both families, once
    mgr.add(NET, B, [V4], [], ip_masq=True)
    assert len(fake.list_calls) == 2  # its own commit alone moved the generation
    fake.generation += 1  # another table's transaction, another process's
    mgr.add(NET, "fedcba987654", [V4], [], ip_masq=True)
    assert len(fake.list_calls) == 4


def test_a_commit_of_someone_else_during_its_own_is_not_trusted(tmp_path: Path) -> None:
    mgr, fake = remembering(tmp_path)
    mgr.add(NET, A, [V4], [], ip_masq=True)
    real_apply = fake.apply

    def racing(script: str) -> None:
        real_apply(script)
        fake.generation += 1  # another process commits right after this ADD
    fake.apply = racing  # type: ignore[method-assign]
    mgr.add(NET, B, [V4], [], ip_masq=True)
    assert len(fake.list_calls) == 2  # this ADD trusted what it knew
    mgr.add(NET, "fedcba987654", [V4], [], ip_masq=True)
    assert len(fake.list_calls) == 4  # but kept nothing after the race: read again


def test_a_port_this_manager_mapped_conflicts_without_a_read(tmp_path: Path) -> None:
    mgr, fake = remembering(tmp_path)
    mgr.add(NET, A, [V4], PM)
    with pytest.raises(errors.PortInUse) as info:
        mgr.add(NET, B, [V4], PM)
    assert A in info.value.msg
    assert len(fake.list_calls) == 2 and len(fake.scripts) == 1


def test_replacing_its_own_rules_reads_their_handles_first(tmp_path: Path) -> None:
    mgr, fake = remembering(tmp_path)
    mgr.add(NET, A, [V4], PM)
    fake.tables[("ip", "podnet")] = table(*attachment_a())  # what the kernel now holds, with handles
    mgr.add(NET, A, [V4], PM)  # a repeated ADD: its rules are replaced
    assert len(fake.list_calls) == 4
    deletes = [line for line in fake.scripts[-1].splitlines() if line.startswith("delete")]
    assert deletes == [f"delete rule ip podnet {chain} handle {h}" for chain, h in
                       (("prerouting", 4), ("output", 5), ("postrouting", 6), ("postrouting", 7), ("postrouting", 8))]
    assert fake.scripts[-1].endswith(render_add(NET, A, [V4], PM, False))


def test_a_failed_transaction_forgets_what_it_knew(tmp_path: Path) -> None:
    mgr, fake = remembering(tmp_path)
    mgr.add(NET, A, [V4], [], ip_masq=True)
    fake.fail = "Error: Could not process rule"
    with pytest.raises(errors.KernelError):
        mgr.add(NET, B, [V4], [], ip_masq=True)
    mgr.add(NET, B, [V4], [], ip_masq=True)
    assert len(fake.list_calls) == 4


def test_without_a_generation_every_add_reads(tmp_path: Path) -> None:
    fake = CountingNft()
    mgr = NatManager(fake, lock_path=str(tmp_path / "nft.lock"), proc_sys=str(tmp_path))
    mgr.add(NET, A, [V4], [], ip_masq=True)
    mgr.add(NET, B, [V4], [], ip_masq=True)
    assert len(fake.list_calls) == 4


def test_no_generation_from_the_kernel_means_read_every_time(tmp_path: Path) -> None:
    fake = CountingNft()
    mgr = NatManager(fake, lock_path=str(tmp_path / "nft.lock"), proc_sys=str(tmp_path), generation=lambda: None)
    mgr.add(NET, A, [V4], [], ip_masq=True)
    mgr.add(NET, B, [V4], [], ip_masq=True)
    assert len(fake.list_calls) == 4


# -- the netlink reply

def _message(kind: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload


def _newgen(seq: int, gen: int) -> bytes:
    attr = struct.pack("=HH", 8, nftgen.NFTA_GEN_ID) + gen.to_bytes(4, "big")
    kind = (nftgen.NFNL_SUBSYS_NFTABLES << 8) | nftgen.NFT_MSG_NEWGEN
    return _message(kind, seq, struct.pack("=BBH", 0, 0, 0) + attr)


def test_the_generation_is_read_from_the_reply_to_our_request() -> None:
    assert nftgen.parse_generation(_newgen(5, 4242), 5) == 4242
    assert nftgen.parse_generation(_newgen(4, 1) + _newgen(5, 77), 5) == 77  # another request's first
    assert nftgen.parse_generation(_newgen(4, 1), 5) is None  # not ours yet: read on


def test_an_error_or_a_malformed_reply_gives_no_generation() -> None:
    assert nftgen.parse_generation(_message(nftgen.NLMSG_ERROR, 5, struct.pack("=i", -1) + b"\0" * 16), 5) == -1
    assert nftgen.parse_generation(struct.pack("=IHHII", 8, 0, 0, 5, 0), 5) == -1  # a length shorter than a header
    kind = (nftgen.NFNL_SUBSYS_NFTABLES << 8) | nftgen.NFT_MSG_NEWGEN
    assert nftgen.parse_generation(_message(kind, 5, struct.pack("=BBH", 0, 0, 0)), 5) == -1  # no NFTA_GEN_ID


def test_only_the_agents_service_keeps_what_it_read() -> None:
    """The agent's CNI service keeps its NAT tables between ADDs; the plugin's fallback
    (a process per call, whose exit would pay for the netlink socket) does not."""
    from podnet.endpoints.service import CniService
    from podnet.kernel.nftgen import ruleset_generation

    agents = CniService(default_store="memory://", keep_nat=True)
    fallback = CniService(default_store="memory://")
    assert agents._nat_factory()._generation is ruleset_generation  # noqa: SLF001 - the wiring is the point
    assert fallback._nat_factory()._generation is None  # noqa: SLF001

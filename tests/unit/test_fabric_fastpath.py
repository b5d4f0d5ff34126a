"""The vxlan fabric's pieces that need no root: the untracked table's text, the
fast path's program encoding and trie keys, the policy switch, status text, and the
options that choose the fast path."""

from __future__ import annotations

import struct

import pytest

from podnet.errors import InvalidConfig, KernelError
from podnet.fabric import FABRICS, fastpath, fastpath_prog, untracked
from podnet.kernel import bpf
from podnet.kernel.nft import FakeNft
from podnet.lab.status import fastpath_of, fastpath_text


def test_untracked_script_names_the_underlay_and_port_only():
    text = untracked.script("eth0", 8472)
    assert "add table inet podnet-fabric" in text
    assert 'add rule inet podnet-fabric prerouting iifname "eth0" udp dport 8472 notrack' in text
    assert 'add rule inet podnet-fabric output oifname "eth0" udp dport 8472 notrack' in text
    assert text.count("priority raw") == 2 and text.count("flush chain") == 2  # rewritten whole: idempotent


def test_untracked_refuses_a_name_nft_would_misread():
    with pytest.raises(InvalidConfig):
        untracked.script('eth0"; flush ruleset', 8472)


def test_untracked_ensure_goes_through_the_port():
    nft = FakeNft()
    untracked.ensure("eth1", 4789, nft)
    assert nft.scripts == [untracked.script("eth1", 4789)]


def test_assemble_resolves_labels_and_the_map_load():
    code = bpf.assemble([bpf.jmp_imm(bpf.JEQ, bpf.R1, 0, "end"), bpf.ld_map_fd(bpf.R1, 7), bpf.Label("end"),
                         bpf.mov_imm(bpf.R0, 0), bpf.exit_()])
    assert len(code) == 5 * 8
    op, regs, off, imm = struct.unpack("<BBhi", code[:8])
    assert op == bpf.JMP | bpf.JEQ | bpf.K and off == 2  # over the two slots of the map load
    op, regs, off, imm = struct.unpack("<BBhi", code[8:16])
    assert op == bpf.LD | bpf.DW | bpf.IMM and regs == (bpf.PSEUDO_MAP_FD << 4) | bpf.R1 and imm == 7


def test_assemble_refuses_an_unknown_label():
    with pytest.raises(KernelError):
        bpf.assemble([bpf.jmp_imm(bpf.JEQ, bpf.R1, 0, "nowhere"), bpf.exit_()])


def test_program_ends_both_ways_with_exit():
    code = fastpath_prog.program_out(3, 4)
    insns = [struct.unpack("<BBhi", code[i:i + 8]) for i in range(0, len(code), 8)]
    exits = [i for i, insn in enumerate(insns) if insn[0] == bpf.JMP | bpf.EXIT]
    assert len(exits) == 2 and exits[-1] == len(insns) - 1
    calls = [insn[3] for insn in insns if insn[0] == bpf.JMP | bpf.CALL]
    assert calls == [fastpath_prog.HELPER_MAP_LOOKUP, fastpath_prog.HELPER_MAP_LOOKUP, fastpath_prog.HELPER_L3_CSUM_REPLACE,
                     fastpath_prog.HELPER_REDIRECT_NEIGH]


def test_inbound_program_asks_conntrack_and_releases_what_it_found():
    code = fastpath_prog.program_in(3, 4, 1111, 2222)
    insns = [struct.unpack("<BBhi", code[i:i + 8]) for i in range(0, len(code), 8)]
    kfuncs = [insn[3] for insn in insns if insn[0] == bpf.JMP | bpf.CALL and insn[1] >> 4 == fastpath_prog.PSEUDO_KFUNC_CALL]
    assert kfuncs == [1111, 2222]
    helpers = [insn[3] for insn in insns if insn[0] == bpf.JMP | bpf.CALL and insn[1] >> 4 == 0]
    assert helpers[-1] == fastpath_prog.HELPER_REDIRECT_PEER


def test_pod_value_is_index_then_pod_mac_then_gateway_mac():
    value = fastpath_prog.pod_value(7, "02:00:00:00:00:01", "aa:bb:cc:dd:ee:ff")
    assert value == struct.pack("<I", 7) + bytes([2, 0, 0, 0, 0, 1, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF])
    assert fastpath_prog.pod_key("10.244.0.2") == bytes([10, 244, 0, 2])


def test_lpm_key_is_prefix_length_then_network_bytes():
    assert fastpath_prog.lpm_key("10.244.1.0/24") == struct.pack("<I", 24) + bytes([10, 244, 1, 0])


def test_policy_switch_starts_held_and_follows_the_policy_service(monkeypatch):
    monkeypatch.setattr(fastpath, "_policy_free", False)
    monkeypatch.setattr(fastpath, "_active", None)
    path = fastpath.FastPath("pnvx0", "pncl0")
    assert path.held and path.status()["state"].startswith("off")
    fastpath.policy_enforced(False)
    assert not path.held and path.status()["state"] == "on"
    fastpath.policy_enforced(True)
    assert path.held
    fastpath.policy_enforced(False)
    assert not fastpath.FastPath("pnvx0", "pncl0").held  # a node that joins again starts as the service said


def test_vxlan_and_host_gw_have_the_ebpf_fast_path(monkeypatch):
    monkeypatch.setattr(fastpath, "_active", None)
    for name in ("vxlan", "host-gw"):
        fabric = FABRICS[name]()
        fabric.use_fastpath("ebpf", "pncl0")
        assert fabric.fastpath is not None and fabric.fastpath_status()["mode"] == "ebpf"
        fabric.fastpath.close()
        assert FABRICS[name]().fastpath_status() == {"mode": "kernel"}
        with pytest.raises(KernelError):
            FABRICS[name]().use_fastpath("ebpf", None)  # routed or macvlan pods: no bridge to take them from
    for name in ("bgp", "gossip", "macvlan"):
        with pytest.raises(KernelError):
            FABRICS[name]().use_fastpath("ebpf", "pncl0")
        FABRICS[name]().use_fastpath("kernel", "pncl0")


def test_lab_status_reads_the_agents_answer():
    answer = {"op": "node.status", "result": {"fastpath": {"mode": "ebpf", "state": "on", "pods": 2, "blocks": 1,
                                                             "junk": [1]}}}
    found = fastpath_of(answer)
    assert found == {"mode": "ebpf", "state": "on", "pods": 2, "blocks": 1}
    assert fastpath_text(found) == "ebpf on, 2 pods, 1 blocks"
    assert fastpath_text(fastpath_of({"result": {"fastpath": {"mode": "kernel"}}})) == "kernel"
    assert fastpath_text(fastpath_of({"error": "no answer"})) == "-"
    held = {"mode": "ebpf", "state": "off (this node enforces policy)"}
    assert fastpath_text(held) == "ebpf off (this node enforces policy)"


def test_agent_and_lab_flags():
    from podnet.cli.agent import AGENT_DEFAULTS
    from podnet.cluster.options import NodeOptions
    from podnet.lab.builder import LabOptions

    assert AGENT_DEFAULTS["fastpath"] == "kernel" and NodeOptions("n").fastpath == "kernel"
    assert LabOptions().fastpath == "kernel"

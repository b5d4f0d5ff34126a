"""`podnet host join|leave` and `podnet get hosts` on a SQLite store, without root:
the host's underlay is given (--address), so nothing reads or changes a kernel."""

from __future__ import annotations

import json

import pytest

from podnet.cli import build_parser, main
from podnet.cluster.leases import HOSTS_OWNER, list_claims
from podnet.model.cluster import BlockClaim, NodeLease
from podnet.store import open_store


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "cluster.db"
    with open_store(str(path)) as store:
        for name, block, ip in (("n0", "10.244.0.0/24", "172.31.0.10"), ("n1", "10.244.1.0/24", "172.31.0.11")):
            lease = NodeLease(name, block, ip, "eth0", "host-gw", {}, 0.0)
            store.put(lease.key, lease.encode())
            claim = BlockClaim(name, block)
            store.put(claim.key, claim.encode())
    return str(path)


def join(store_path: str, *extra: str) -> list[str]:
    return ["host", "join", "vm1", "--store", store_path, "--address", "172.31.0.190/24", *extra]


def test_parser_takes_apply_or_print_not_both():
    args = build_parser().parse_args(["host", "join", "vm1", "--underlay", "ens3", "--apply"])
    assert (args.name, args.underlay, args.apply, args.print_only) == ("vm1", "ens3", True, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["host", "join", "vm1", "--apply", "--print"])
    assert build_parser().parse_args(["host", "leave", "vm1"]).apply is False


def test_join_prints_commands_and_get_hosts_lists_it(store_path, capsys):
    assert main(join(store_path, "--gateway", "172.31.0.1")) == 0
    out = capsys.readouterr().out
    assert "ip address replace 10.244.2.2/32 dev eth0" in out
    assert "ip route replace 10.244.1.0/24 via 172.31.0.11 dev eth0 src 10.244.2.2 proto 79" in out
    with open_store(store_path) as store:
        assert list_claims(store)["10.244.2.0/24"] == HOSTS_OWNER
    assert main(["get", "hosts", "--store", store_path, "-o", "json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [(d["metadata"]["name"], d["spec"]["podIP"], d["spec"]["underlayIP"], d["spec"]["joined"]) for d in docs] == [
        ("vm1", "10.244.2.2", "172.31.0.190", True)]
    assert main(["get", "hosts", "--store", store_path]) == 0
    table = capsys.readouterr().out
    assert "vm1" in table and "10.244.2.2" in table and "yes" in table
    assert main(join(store_path, "-o", "json")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reused"] and again["address"] == "10.244.2.2/32"


def test_leave_frees_the_address_for_the_next_host(store_path, capsys):
    assert main(join(store_path)) == 0
    assert main(["host", "leave", "vm1", "--store", store_path, "-o", "json"]) == 0
    capsys.readouterr()
    assert main(["host", "leave", "vm1", "--store", store_path]) == 1
    assert "host 'vm1' is not known" in capsys.readouterr().err
    assert main(["host", "join", "vm2", "--store", store_path, "--address", "172.31.0.191/24", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["address"] == "10.244.2.2/32"


@pytest.mark.parametrize(("argv", "message"), [
    (["host", "join", "VM_1", "--address", "172.31.0.190/24"], "NAME: 'VM_1' is not a valid host name"),
    (["host", "join", "vm1", "--address", "172.31.0.190"], "--address: '172.31.0.190' needs its prefix length"),
    (["host", "join", "vm1", "--address", "nope/24"], "--address: 'nope/24' is not an IPv4 address"),
    (["host", "join", "vm1", "--address", "172.31.0.190/24", "--gateway", "10.1.1.1"], "--gateway: 10.1.1.1 is not on-link"),
    (["host", "join", "vm1", "--gateway", "172.31.0.1"], "--gateway: give it with --address"),
    (["host", "join", "vm1", "--address", "172.31.0.190/24", "--cluster-cidr", "10.244.0.1/16"],
     "--cluster-cidr: '10.244.0.1/16' is not an IPv4 network"),
    (["host", "join", "vm1", "--address", "172.31.0.190/24", "--rack", "-1"], "--rack: -1 must be a non-negative"),
])
def test_bad_input_names_the_field_and_reserves_nothing(store_path, capsys, argv, message):
    assert main([*argv, "--store", store_path]) == 1
    assert message in capsys.readouterr().err
    with open_store(store_path) as store:
        assert HOSTS_OWNER not in list_claims(store).values()

"""One way to name the cluster, for every command (cli/target.py)."""

from __future__ import annotations

import pytest

from podnet.cli import build_parser, main
from podnet.cli.target import lab_name, target
from podnet.config import Target


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in ("PODNET_STORE", "PODNET_LAB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PODNET_CONFIG", str(tmp_path / "no-config.yaml"))


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv", [
    ("probe", "--lab", "l1"), ("probe", "--name", "l1"),
    ("connectivity", "test", "--name", "l1"), ("lab", "status", "--lab", "l1"), ("lab", "down", "--name", "l1"),
    ("get", "ns", "--lab", "l1"), ("flows", "--lab", "l1"), ("policy", "status", "--lab", "l1"),
    ("demo", "--name", "l1"), ("demo", "--lab", "l1"),
])
def test_the_lab_flag_and_its_old_spelling(argv):
    assert parse(*argv).lab == "l1"


def test_store_commands_take_a_store_and_lab_up_keeps_its_own_store_kind():
    assert target(parse("get", "ns", "--store", "/s.db")) == Target(store="/s.db", source="--store")
    up = parse("lab", "up", "--lab", "l2", "--store", "etcd")
    assert up.store == "etcd" and lab_name(up, "lab up") == "l2"
    assert target(parse("get", "ns")) == Target(lab="lab", source="the default lab")


def test_the_environment(monkeypatch):
    monkeypatch.setenv("PODNET_LAB", "envlab")
    assert lab_name(parse("probe"), "probe") == "envlab"
    monkeypatch.setenv("PODNET_STORE", "/e.db")
    assert target(parse("label", "ns", "x", "a=b")).store == "/e.db"


def test_conflicts_and_lab_only_commands_fail_clearly(monkeypatch, capsys):
    assert main(["get", "ns", "--lab", "a", "--store", "/s.db"]) == 1
    assert "--lab and --store exclude each other" in capsys.readouterr().err
    monkeypatch.setenv("PODNET_STORE", "/e.db")
    assert main(["probe"]) == 1
    assert "podnet probe runs on a lab, and $PODNET_STORE names a store" in capsys.readouterr().err


def test_the_old_spelling_is_hidden_from_help():
    help_text = build_parser()._subparsers._group_actions[0].choices["probe"].format_help()
    assert "--lab NAME" in help_text and "--name" not in help_text

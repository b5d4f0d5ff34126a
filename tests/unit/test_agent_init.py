"""`podnet agent --store PATH` refuses a SQLite store that does not exist (a mistyped
path would become an empty store, and an empty store looks like "no policy"); `--init`
creates it; the default store of the state dir is the agent's own and is created on a
first start (issue 10, item 4). The agent itself is not run: `run_agent` is replaced."""

from __future__ import annotations

import pytest

from podnet.cli import main


@pytest.fixture
def started(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    monkeypatch.setattr("podnet.agent.daemon.run_agent", lambda *args: calls.append(args) or 0)
    monkeypatch.delenv("PODNET_STATE_DIR", raising=False)
    return calls


def test_a_missing_explicit_store_is_refused(tmp_path, started, capsys):
    missing = tmp_path / "typo" / "x.db"
    assert main(["agent", "--socket", str(tmp_path / "a.sock"), "--store", str(missing)]) != 0
    err = capsys.readouterr().err
    assert str(missing) in err and "--init" in err
    assert started == [] and not missing.parent.exists()


def test_init_creates_the_store_then_runs(tmp_path, started):
    path = tmp_path / "new" / "x.db"
    assert main(["agent", "--socket", str(tmp_path / "a.sock"), "--store", str(path), "--init"]) == 0
    assert path.exists() and len(started) == 1
    assert main(["agent", "--socket", str(tmp_path / "a.sock"), "--store", str(path)]) == 0  # exists now


def test_a_missing_store_from_the_config_file_is_refused_too(tmp_path, started, capsys):
    config = tmp_path / "config.yaml"
    missing = tmp_path / "nope.db"
    config.write_text(f"apiVersion: podnet.io/v1\nkind: Config\nagent:\n  store: {missing}\n")
    assert main(["agent", "--config", str(config), "--socket", str(tmp_path / "a.sock")]) != 0
    assert str(missing) in capsys.readouterr().err and started == []


def test_an_etcd_store_and_the_default_store_are_not_checked(tmp_path, started):
    assert main(["agent", "--socket", str(tmp_path / "a.sock"), "--store", "etcd://127.0.0.1:1/x"]) == 0
    assert main(["agent", "--socket", str(tmp_path / "a.sock"), "--state-dir", str(tmp_path / "state")]) == 0
    assert len(started) == 2

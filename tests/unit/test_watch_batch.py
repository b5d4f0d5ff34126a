"""The watch batch (`podnet agent --watch-batch`, store.set_watch_batch): how long a busy
SQLite store's changes are gathered before this process's watchers see them. A lab of
100 agents on 2 CPUs reacting every 50 ms saturated the machine (lab/crowding.py)."""

from __future__ import annotations

import threading
import time

import pytest

from podnet import store as store_module
from podnet.cli import main
from podnet.errors import InvalidConfig
from podnet.store import open_store, set_watch_batch
from podnet.store.sqlite import SqliteStore


@pytest.fixture(autouse=True)
def _default_batch():
    yield
    set_watch_batch(None)


def test_stores_opened_after_the_setting_take_it_and_an_explicit_option_wins(tmp_path):
    path = str(tmp_path / "s.db")
    with open_store(path) as before:
        assert before._tail._poll == 0.05
    set_watch_batch(0.3)
    with open_store(path) as store, open_store(path, poll_interval=0.1) as explicit:
        assert store._tail._poll == 0.3
        assert explicit._tail._poll == 0.1
    set_watch_batch(None)
    with open_store(path) as after:
        assert after._tail._poll == 0.05


@pytest.mark.parametrize("seconds", [0.0, 0.001, 5.5, float("nan")])
def test_a_batch_out_of_range_is_refused(seconds):
    with pytest.raises(InvalidConfig, match="out of range"):
        set_watch_batch(seconds)
    assert store_module._watch_batch is None


def reactions(path: str, seconds: float, writes_every: float = 0.01) -> tuple[int, int, int]:
    """Another store object writes `k/` every `writes_every` for `seconds` while this
    one's watcher loops: (watch calls that returned events, events seen, writes)."""
    watcher, writer = open_store(path), SqliteStore(path, poll_interval=0.05)
    revision = watcher.revision()
    watcher.watch("k/", revision, timeout=0.2)  # the tail runs, and is quiet
    written, done = [0], threading.Event()

    def write() -> None:
        while not done.is_set():
            writer.put(f"k/{written[0] % 7}", str(written[0]))
            written[0] += 1
            time.sleep(writes_every)

    thread = threading.Thread(target=write)
    thread.start()
    returned = seen = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            events = watcher.watch("k/", revision, timeout=0.5)
            if events:
                returned, seen, revision = returned + 1, seen + len(events), events[-1].revision
    finally:
        done.set()
        thread.join()
    for _ in range(20):  # what was written last is still seen
        events = watcher.watch("k/", revision, timeout=0.5)
        if not events:
            break
        seen, revision = seen + len(events), events[-1].revision
    watcher.close()
    writer.close()
    return returned, seen, written[0]


def test_a_busy_store_wakes_its_watchers_once_per_batch_and_loses_nothing(tmp_path):
    """The same stream of writes, with the default batch and with 0.5 s: 2 s of it reach
    the watcher in at most 2 / 0.5 + 2 returns, every write still seen; the default
    returns more often than that (so this test fails without the setting)."""
    default_returns, default_seen, default_written = reactions(str(tmp_path / "a.db"), 2.0)
    set_watch_batch(0.5)
    returns, seen, written = reactions(str(tmp_path / "b.db"), 2.0)
    assert seen == written and default_seen == default_written
    assert returns <= 6, returns
    assert default_returns > 6, default_returns


def test_the_agent_refuses_a_bad_batch_naming_the_flag(monkeypatch, tmp_path, capsys):
    started: list = []
    monkeypatch.setattr("podnet.agent.daemon.run_agent", lambda *args: started.append(args) or 0)
    monkeypatch.setenv("PODNET_AGENT_SOCKET", str(tmp_path / "a.sock"))
    assert main(["agent", "--store", "memory://", "--watch-batch", "9"]) == 2
    assert "--watch-batch" in capsys.readouterr().err
    assert started == []
    assert main(["agent", "--store", "memory://", "--watch-batch", "0.2"]) == 0
    assert store_module._watch_batch == 0.2 and len(started) == 1


def test_lab_up_refuses_a_bad_batch_before_building_anything(capsys):
    assert main(["lab", "up", "--lab", "wbx", "--watch-batch", "0"]) == 2
    assert "--watch-batch: from 0.01 to 5 seconds" in capsys.readouterr().err

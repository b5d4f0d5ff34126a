"""lab/orchestrator.py's `register`: a store too busy to take the lab's registrations
is waited for again (its writes are idempotent), and fails only after BUSY_ATTEMPTS."""

from __future__ import annotations

import types

import pytest

from podnet.errors import TryAgainLater
from podnet.lab import orchestrator


@pytest.fixture
def lab(monkeypatch):
    monkeypatch.setattr(orchestrator.LabState, "load", lambda _name: types.SimpleNamespace(data={"pods": {}}))
    calls: list[int] = []

    def busy_for(times: int) -> list[int]:
        def write(_data, _pods, _namespaces) -> None:
            calls.append(1)
            if len(calls) <= times:
                raise TryAgainLater("store lab.db is busy: no write lock after 15s")

        monkeypatch.setattr(orchestrator, "_write_registrations", write)
        return calls

    return busy_for


def test_a_busy_store_is_written_again(lab, capsys):
    calls = lab(orchestrator.BUSY_ATTEMPTS - 1)
    assert orchestrator.register("q1") == 0
    assert len(calls) == orchestrator.BUSY_ATTEMPTS
    assert "registering again (1/3)" in capsys.readouterr().err


def test_a_store_busy_every_time_fails_with_its_error(lab):
    calls = lab(orchestrator.BUSY_ATTEMPTS)
    with pytest.raises(TryAgainLater, match="is busy"):
        orchestrator.register("q1")
    assert len(calls) == orchestrator.BUSY_ATTEMPTS

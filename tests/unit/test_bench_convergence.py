"""bench/convergence.py's options: the settle time between `lab up` and the first pod."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import convergence  # noqa: E402  (bench/ is no package)


@pytest.mark.parametrize("settle", ["-1", "601", "soon"])
def test_settle_out_of_range_is_refused_before_any_lab(settle, capsys, monkeypatch):
    monkeypatch.setattr(convergence.os, "geteuid", lambda: 1000)  # were it let through: "needs root", no lab
    with pytest.raises(SystemExit) as exc:
        convergence.main(["--settle", settle])
    assert exc.value.code == 2
    assert "--settle" in capsys.readouterr().err

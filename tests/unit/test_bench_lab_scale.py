"""bench/lab_scale.py's pure parts: the rounds' summary (the busy labs against the quiet
ones) and the busy neighbour's life."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import lab_scale  # noqa: E402  (bench/ is no package)


def run(variant: str, up_s: float) -> dict:
    return {"nodes": 100, "pods_per_node": 10, "variant": variant, "up_s": up_s,
            "phases": [{"phase": "pods: 1000 attached", "took_s": up_s - 20}],
            "cpu_s_at_up": {"agent": 80.0}, "idle_cores": {"agent": 0.5}}


def test_busy_labs_are_compared_with_the_quiet_ones_not_with_the_target():
    runs = [run("zygote", 47.0), run("busy", 70.0), run("zygote", 45.0), run("busy", 64.0), run("zygote", 50.0)]
    quiet, busy = lab_scale.summarize(runs)
    assert (quiet["variant"], quiet["target_s"], quiet["over_quiet"]) == ("zygote", 60.0, None)
    assert quiet["ratio_to_target"] == pytest.approx(47.0 / 60.0, abs=0.01)
    assert busy["target_s"] is None and busy["met"] is None
    assert busy["over_quiet"] == pytest.approx(67.0 / 47.0, abs=0.01)


def test_the_busy_neighbour_runs_in_its_own_session_and_is_gone_after_the_block():
    with pytest.raises(RuntimeError), lab_scale.busy_neighbour(True) as proc:
        pid = proc.pid
        assert os.getsid(pid) == pid != os.getsid(0)
        assert proc.poll() is None  # busy until the block ends
        raise RuntimeError("the lab failed")
    assert proc.returncode is not None and not Path(f"/proc/{pid}").exists()
    with lab_scale.busy_neighbour(False) as none:
        assert none is None

"""`make demo` runs `podnet demo`: it must pass its own live checks and leave nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cniharness import needs_root

pytestmark = pytest.mark.root


def test_demo_passes_and_cleans_up():
    needs_root()
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    proc = subprocess.run([sys.executable, "-m", "podnet.cli", "demo"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed, 0 failed" in proc.stdout and "FAIL" not in proc.stdout
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert [n for n in after.splitlines() if "pn-demo-" in n] == []
    assert len(after.splitlines()) <= len(before.splitlines())

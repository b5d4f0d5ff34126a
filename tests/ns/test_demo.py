"""`make demo` runs `podnet demo` (the 3-node lab); `podnet demo --host` is the
single-host one. Both must pass their own live checks and leave nothing."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

from cniharness import needs_root
from podnet.lab.state import lab_dir, state_file

pytestmark = pytest.mark.root


def test_lab_demo_passes_tours_and_cleans_up():
    needs_root()
    name = f"d{secrets.token_hex(2)}"
    try:
        proc = subprocess.run([sys.executable, "-m", "podnet.cli", "demo", "--name", name], capture_output=True,
                              text=True, timeout=180, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert " passed, 0 failed" in proc.stdout and "FAIL" not in proc.stdout
        assert "✓ service load balancing and fail-over" in proc.stdout and "failed over: answered by" in proc.stdout
        assert "what to try next" in proc.stdout and f"podnet connectivity test --lab {name}" in proc.stdout
        assert f"lab {name} removed" in proc.stdout
        after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"pn-lab-{name}-" not in after
        assert not state_file(name).exists() and not lab_dir(name).exists()
    finally:
        if state_file(name).exists():
            subprocess.run([sys.executable, "-m", "podnet.cli", "lab", "down", "--name", name], check=False)


def test_lab_demo_refuses_a_taken_name_without_touching_it():
    needs_root()
    name = f"d{secrets.token_hex(2)}"
    try:
        subprocess.run([sys.executable, "-m", "podnet.cli", "lab", "up", "--name", name, "--nodes", "1",
                        "--pods-per-node", "1"], capture_output=True, check=True, timeout=120)
        proc = subprocess.run([sys.executable, "-m", "podnet.cli", "demo", "--name", name], capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 1 and "already exists" in proc.stdout
        assert state_file(name).exists()  # the existing lab was left alone
    finally:
        if state_file(name).exists():
            subprocess.run([sys.executable, "-m", "podnet.cli", "lab", "down", "--name", name], check=False)
        assert not state_file(name).exists()


def test_host_demo_passes_and_cleans_up():
    needs_root()
    proc = subprocess.run([sys.executable, "-m", "podnet.cli", "demo", "--host"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed, 0 failed" in proc.stdout and "FAIL" not in proc.stdout
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert [n for n in after.splitlines() if "pn-demo-" in n] == []  # others' namespaces come and go meanwhile

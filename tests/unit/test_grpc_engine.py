"""The gRPC engine choice made before grpc is imported (store/etcd/grpc_engine.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from podnet.store.etcd.grpc_engine import CLASSIC_CLIENT, VARIABLE, prefer_classic_client


def test_the_classic_client_is_chosen_when_nobody_chose() -> None:
    environ: dict[str, str] = {}
    assert prefer_classic_client(environ) is True
    assert environ == {VARIABLE: CLASSIC_CLIENT}


def test_a_users_own_choice_is_kept_even_an_empty_one() -> None:
    for mine in ("", "event_engine_client", "-something_else"):
        environ = {VARIABLE: mine}
        assert prefer_classic_client(environ) is False
        assert environ == {VARIABLE: mine}


def _grpc_sees(env: dict[str, str]) -> str:
    """What a fresh interpreter has in its environment when grpc is first imported,
    through the store package as the agent imports it."""
    probe = (
        "import sys, podnet.store.etcd, os; "
        "assert 'grpc' in sys.modules; "
        # grpc reads the variable from the C environment: look there, as it does
        "import ctypes; libc = ctypes.CDLL(None); libc.getenv.restype = ctypes.c_char_p; "
        f"print((libc.getenv(b'{VARIABLE}') or b'<unset>').decode())"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True,
                          timeout=60)
    return done.stdout.strip()


def test_the_store_package_sets_it_before_grpc_starts() -> None:
    base = {k: v for k, v in os.environ.items() if k != VARIABLE}
    assert _grpc_sees(base) == CLASSIC_CLIENT
    assert _grpc_sees({**base, VARIABLE: "-other"}) == "-other"

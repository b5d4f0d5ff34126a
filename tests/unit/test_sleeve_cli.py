"""The sleeve forwarder's command line refuses bad input by field, before it touches
the kernel (podnet.fabric.sleeve.forwarder), and its address parsing."""

from __future__ import annotations

import pytest

from podnet.fabric.sleeve.datapath import PORT, PeerRoute, Sleeve, parse_address
from podnet.fabric.sleeve.forwarder import main

GOOD = ["--tun", "pnsl0", "--address", "10.97.0.1/24", "--listen", "127.0.0.1:6784",
        "--name", "na", "--peer", "nb=127.0.0.2", "--route", "10.97.0.2/32=nb"]


def replaced(flag: str, value: str) -> list[str]:
    argv = list(GOOD)
    argv[argv.index(flag) + 1] = value
    return argv


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (replaced("--tun", "eth0"), "--tun"),
        (replaced("--tun", "pnsl-much-too-long"), "--tun"),
        (replaced("--address", "10.97.0.300/24"), "--address"),
        (replaced("--peer", "nb"), "--peer"),
        (replaced("--peer", "nb=127.0.0.2:70000"), "--peer"),
        (replaced("--route", "10.97.0.2/32=nc"), "--route"),
        (replaced("--route", "10.97.0.2/33=nb"), "--route"),
        (replaced("--listen", "127.0.0.1:0"), "--listen"),
        ([*GOOD, "--queues", "0"], "--queues"),
        ([*GOOD, "--mtu", "100"], "--mtu"),
        ([*GOOD, "--secret-file", "/nonexistent/secret"], "--secret-file"),
    ],
)
def test_bad_input_exits_2_naming_the_field(argv, field, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert field in capsys.readouterr().err


def test_a_short_secret_is_refused_by_name(tmp_path, capsys) -> None:
    secret = tmp_path / "secret"
    secret.write_text("abcd")
    with pytest.raises(SystemExit) as exc:
        main([*GOOD, "--secret-file", str(secret)])
    assert exc.value.code == 2 and "session_secret" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", PORT)),
        ("192.0.2.1:7000", ("192.0.2.1", 7000)),
        ("[fd00::1]:7000", ("fd00::1", 7000)),
        ("[fd00::1]", ("fd00::1", PORT)),
        ("fd00::1", ("fd00::1", PORT)),
    ],
)
def test_addresses_parse_with_the_default_port(text, expected) -> None:
    assert parse_address(text) == expected


def test_changing_peers_keeps_the_state_of_an_unchanged_one() -> None:
    key = bytes(32)
    sleeve = Sleeve("pnsl9", "127.0.0.1:6784", {"nb": PeerRoute("127.0.0.2", tx_key=key, rx_key=key)})
    kept = sleeve._peers["nb"]
    next(kept.counter)
    sleeve.set_peers({"nb": PeerRoute("127.0.0.2", tx_key=key, rx_key=key), "nc": PeerRoute("127.0.0.3")})
    assert sleeve._peers["nb"] is kept
    sleeve.set_peers({"nb": PeerRoute("127.0.0.2")})  # keys changed: a fresh peer
    assert sleeve._peers["nb"] is not kept and sleeve._peers["nb"].sealer is None
    with pytest.raises(ValueError, match="threads_per_queue"):
        Sleeve("pnsl9", "127.0.0.1:6784", {}, threads_per_queue=3)

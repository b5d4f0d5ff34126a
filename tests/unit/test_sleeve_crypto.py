"""The sleeve's keys, sealing and replay window (podnet.fabric.sleeve.crypto)."""

from __future__ import annotations

import random

import pytest

from podnet.fabric.sleeve.crypto import (
    Opener,
    ReplayWindow,
    Sealer,
    SleeveCryptoError,
    derive_sleeve_keys,
    nonce,
)

SECRET = bytes(range(32))


def test_each_side_transmits_with_the_key_the_other_receives_with() -> None:
    a_tx, a_rx = derive_sleeve_keys(SECRET, "node0", "node1")
    b_tx, b_rx = derive_sleeve_keys(SECRET, "node1", "node0")
    assert (a_tx, a_rx) == (b_rx, b_tx)
    assert a_tx != a_rx and len(a_tx) == len(a_rx) == 32


def test_keys_depend_on_the_secret_and_both_names() -> None:
    base = derive_sleeve_keys(SECRET, "node0", "node1")
    assert derive_sleeve_keys(bytes(32), "node0", "node1") != base
    assert derive_sleeve_keys(SECRET, "node0", "node2") != base
    assert derive_sleeve_keys(SECRET, "node9", "node1") != base
    assert derive_sleeve_keys(SECRET, "node0", "node1") == base  # deterministic


@pytest.mark.parametrize(
    ("secret", "local", "remote", "field"),
    [
        (b"short", "a", "b", "session_secret"),
        (SECRET, "", "b", "local"),
        (SECRET, "a", "b|c", "remote"),
        (SECRET, "a", "a", "same peer"),
    ],
)
def test_unusable_key_inputs_are_refused_by_name(secret, local, remote, field) -> None:
    with pytest.raises(SleeveCryptoError, match=field):
        derive_sleeve_keys(secret, local, remote)


def test_a_sealed_message_opens_only_with_its_key_counter_and_header() -> None:
    tx, rx = derive_sleeve_keys(SECRET, "a", "b")
    sealed = Sealer(tx).seal(7, b"header", b"inner packet")
    assert b"inner packet" not in sealed
    opener = Opener(tx)
    assert opener.open(7, b"header", sealed) == b"inner packet"
    assert opener.open(8, b"header", sealed) is None  # another counter
    assert opener.open(7, b"headeR", sealed) is None  # another header
    assert Opener(rx).open(7, b"header", sealed) is None  # the other direction's key
    flipped = bytearray(sealed)
    flipped[3] ^= 1
    assert opener.open(7, b"header", bytes(flipped)) is None


def test_nonces_are_the_counter_and_stay_in_range() -> None:
    assert nonce(1) == bytes(11) + b"\x01"
    assert len({nonce(n) for n in range(1000)}) == 1000
    with pytest.raises(SleeveCryptoError):
        nonce(2**64)
    with pytest.raises(SleeveCryptoError):
        nonce(-1)
    with pytest.raises(SleeveCryptoError):
        Sealer(b"short key")


def test_the_window_accepts_each_counter_once_in_any_order() -> None:
    window = ReplayWindow(size=64)
    order = list(range(100, 140))
    random.Random(4).shuffle(order)
    for counter in order:
        assert window.check(counter)
        assert window.accept(counter)
    for counter in order:
        assert not window.check(counter)
        assert not window.accept(counter)
    assert window.highest == 139


def test_the_window_refuses_what_is_too_old_to_judge_and_takes_jumps() -> None:
    window = ReplayWindow(size=64)
    assert window.accept(1000)
    assert window.check(1000 - 63) and not window.check(1000 - 64)
    assert window.accept(5000)  # a jump forward clears the history
    assert not window.check(1000)
    assert window.check(4999) and window.accept(4999)
    assert not window.accept(4999)


def test_check_alone_does_not_move_the_window() -> None:
    window = ReplayWindow(size=8)
    window.accept(10)
    assert window.check(10**6)  # a forged counter is only checked, never accepted
    assert window.highest == 10 and window.check(9)

"""gossip/auth.py: the handshake, played between two sans-io sides."""

from __future__ import annotations

import pytest

from podnet.gossip.auth import AuthRefused, Channel, Handshake, load_credential
from podnet.gossip.wire import Hello, decode, parse_hello


def play(a_key: bytes | None, b_key: bytes | None):
    """a dials b; both hellos cross, then both proofs. Returns both sides."""
    a, b = Handshake("a", 1, a_key, initiator=True), Handshake("b", 2, b_key, initiator=False)
    hello_a, hello_b = parse_hello(decode(a.hello().encode())), parse_hello(decode(b.hello().encode()))
    proof_a, proof_b = a.on_hello(hello_b), b.on_hello(hello_a)
    if proof_a is not None:
        b.on_proof(proof_a)
        a.on_proof(proof_b)
    return a, b


def test_without_a_password_nothing_is_refused_and_there_is_no_secret():
    a, b = play(None, None)
    assert a.done and b.done and a.secret is None and b.secret is None
    assert a.peer.name == "b" and b.peer.port == 1


def test_the_same_password_gives_both_sides_one_fresh_secret():
    a, b = play(b"pw", b"pw")
    assert a.secret == b.secret and len(a.secret) == 32
    again, _ = play(b"pw", b"pw")
    assert again.secret != a.secret  # new nonces, new secret


def test_a_wrong_password_is_refused_by_both():
    a, b = Handshake("a", 1, b"pw", True), Handshake("b", 2, b"other", False)
    proof_a, proof_b = a.on_hello(b.hello()), b.on_hello(a.hello())
    with pytest.raises(AuthRefused, match="wrong password"):
        b.on_proof(proof_a)
    with pytest.raises(AuthRefused, match="wrong password"):
        a.on_proof(proof_b)


@pytest.mark.parametrize(("mine", "theirs", "reason"), [
    (None, b"pw", "it has a password"), (b"pw", None, "it has no password")])
def test_a_password_on_one_side_only_is_refused(mine, theirs, reason):
    with pytest.raises(AuthRefused, match=reason):
        Handshake("a", 1, mine, True).on_hello(Handshake("b", 2, theirs, False).hello())


def test_a_proof_is_useless_in_the_other_direction_and_with_other_nonces():
    a, b = Handshake("a", 1, b"pw", True), Handshake("b", 2, b"pw", False)
    proof_a = a.on_hello(b.hello())
    b.on_hello(a.hello())
    with pytest.raises(AuthRefused):
        a.on_proof(proof_a)  # reflected back to its sender
    c = Handshake("b", 2, b"pw", False)
    c.on_hello(Handshake("a", 1, b"pw", True).hello())
    with pytest.raises(AuthRefused):
        c.on_proof(proof_a)  # replayed into another session


def test_own_name_and_other_protocols_are_refused():
    with pytest.raises(AuthRefused, match="own name"):
        Handshake("a", 1, None, True).on_hello(Handshake("a", 2, None, False).hello())
    with pytest.raises(AuthRefused, match="protocol"):
        Handshake("a", 1, None, True).on_hello(Hello("b", b"\0" * 32, 2, False, protocol=9))


def test_the_channel_seals_in_order_and_refuses_replay_and_tampering():
    a, b = play(b"pw", b"pw")
    tx, rx = Channel(a.secret, "a", "b"), Channel(b.secret, "b", "a")
    first, second = tx.seal(b"one"), tx.seal(b"two")
    assert b"one" not in first and rx.open(first) == b"one"
    with pytest.raises(AuthRefused):
        rx.open(first)  # replayed
    tampered = bytes([second[0] ^ 1]) + second[1:]
    with pytest.raises(AuthRefused):
        rx.open(tampered)
    assert Channel(b.secret, "b", "a").open(Channel(a.secret, "a", "b").seal(b"x")) == b"x"


def test_credentials_come_from_a_password_or_a_key_file(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(b"\x00secret\n")
    assert load_credential(key_file=str(key)) == b"\x00secret\n"
    assert load_credential("pw") == b"pw" and load_credential() is None
    with pytest.raises(ValueError):
        load_credential("pw", key_file=str(key))
    with pytest.raises(ValueError):
        load_credential("")

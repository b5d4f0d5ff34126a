"""Isolation rules as nft tokens (kernel/isolation.py through kernel/nftsyntax.py):
names read back from the store are checked again, and whatever reaches the renderer
either renders as single tokens or is refused (no root)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from podnet import keys
from podnet.agent.isolation_service import IsolationService
from podnet.errors import InvalidConfig
from podnet.kernel import isolation
from podnet.kernel.nft import FakeNft
from podnet.model.base import CorruptRecord
from podnet.model.network import NetworkRecord
from podnet.store import open_store


def net(name: str, bridge: str | None, internal: bool = False, driver: str = "bridge") -> NetworkRecord:
    return NetworkRecord(name, name.ljust(64, "0"), driver, (), internal=internal, bridge=bridge)


@pytest.fixture
def store(tmp_path):
    with open_store(str(tmp_path / "store.db")) as handle:
        yield handle


CRAFTED = 'x"; flush ruleset'


@pytest.mark.parametrize(("field", "value"), [
    ("name", CRAFTED), ("name", 'x"\nflush ruleset\n#'), ("name", "a\n"), ("bridge", CRAFTED),
    ("bridge", "pnb\nflush"),
])
def test_crafted_record_is_refused_on_read(field, value):
    """A record read back from the store passes the name rules again."""
    raw = {**net("a", "pnba").to_json(), field: value}
    with pytest.raises(CorruptRecord):
        NetworkRecord.from_json(raw)


@pytest.mark.parametrize(("name", "bridge"), [
    (CRAFTED, "pnba"),  # whatever reaches the renderer without a record's checks
    ('x"\nflush ruleset\n#', "pnba"),
    ("é", "pnba"),
    ("a", 'pn";flush'),
    ("a", 'pn"x'),  # a name the kernel takes (is_ifname), but not one nft string
    ("a", "pnb*"),  # nft would read a trailing * as a wildcard: every pnb bridge
    ("a", "pnb\\x"),
])
def test_renderer_refuses_what_cannot_be_one_token(name, bridge):
    bad = SimpleNamespace(name=name, driver="bridge", bridge=bridge, internal=True)
    with pytest.raises(InvalidConfig, match="cannot be rendered"):
        isolation.render([bad, net("b", "pnbb")])


def test_a_stored_record_nft_cannot_quote_applies_nothing(store):
    """A record that passes the record's rules but not nft's (a quote in the bridge
    name) stops the converge with a clear error; no script half-quoted reaches nft."""
    raw = {**net("a", "pnba").to_json(), "bridge": 'pn"x'}
    assert NetworkRecord.from_json(raw).bridge == 'pn"x'  # the kernel's rule allows it
    store.put(keys.network("a"), json.dumps(raw))
    store.put(keys.network("b"), net("b", "pnbb").encode())
    nft = FakeNft()
    with pytest.raises(InvalidConfig, match="network 'a'"):
        IsolationService(lambda: store, nft).converge()
    assert nft.scripts == []

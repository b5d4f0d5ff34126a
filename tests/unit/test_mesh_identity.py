"""Mesh identities: SPIFFE IDs of pods, and the certificate CN that mirrors them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.mesh.identity import (
    DEFAULT_TRUST_DOMAIN,
    IdentityError,
    SpiffeId,
    account_of,
    cn_of,
    identity_of_pod,
    parse_spiffe,
    spiffe_id,
    spiffe_of_cn,
)

LABELS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@pytest.mark.parametrize(("labels", "account"), [
    ({"podnet.io/service-account": "billing", "app": "web"}, "billing"),
    ({"app": "web", "tier": "front"}, "web"),
    ({"tier": "front"}, "default"),
    ({}, "default"),
])
def test_account_of_a_pod(labels, account) -> None:
    assert account_of(labels) == account


def test_identity_of_a_pod() -> None:
    ident = identity_of_pod("shop", {"app": "cart"})
    assert ident.uri == "spiffe://cluster.local/ns/shop/sa/cart"
    assert ident.cn == "cart.shop"
    assert identity_of_pod("shop", {}, "example.org").uri == "spiffe://example.org/ns/shop/sa/default"
    assert DEFAULT_TRUST_DOMAIN == "cluster.local"


def test_a_bad_label_value_names_the_label() -> None:
    with pytest.raises(IdentityError, match=r"pod shop/x: label podnet.io/service-account: 'Bad_Name'"):
        account_of({"podnet.io/service-account": "Bad_Name", "app": "ok"}, "pod shop/x")
    with pytest.raises(IdentityError, match=r"label app: 'a.b' is not a DNS label"):
        account_of({"app": "a.b"})


@pytest.mark.parametrize(("namespace", "account", "domain", "problem"), [
    ("Shop", "web", "cluster.local", "namespace: 'Shop'"),
    ("shop", "-web", "cluster.local", "service account: '-web'"),
    ("shop", "w" * 64, "cluster.local", "service account"),
    ("s" * 32, "w" * 32, "cluster.local", "has 65 characters, over X.509's limit of 64"),
    ("shop", "web", "Cluster.Local", "trust domain: 'Cluster.Local'"),
    ("shop", "web", "", "trust domain: ''"),
])
def test_names_are_validated(namespace, account, domain, problem) -> None:
    with pytest.raises(IdentityError, match=problem):
        spiffe_id(namespace, account, domain)


@pytest.mark.parametrize("text", [
    "http://cluster.local/ns/a/sa/b",
    "spiffe://cluster.local/ns/a/sa",
    "spiffe://cluster.local/ns/a/sa/b/c",
    "spiffe://cluster.local/sa/b/ns/a",
    "spiffe://cluster.local:8443/ns/a/sa/b",
    "spiffe:///ns/a/sa/b",
    "spiffe://cluster.local/ns/a/sa/b?x=1",
    "spiffe://cluster.local/ns/a/sa/B",
    42,
])
def test_what_is_not_a_spiffe_id(text) -> None:
    with pytest.raises(IdentityError):
        parse_spiffe(text)


@pytest.mark.parametrize("cn", ["web", "web.shop.x", "Web.shop", ".shop", "web.", "", None])
def test_what_is_not_a_mesh_cn(cn) -> None:
    with pytest.raises(IdentityError, match="CN"):
        spiffe_of_cn(cn)


@given(LABELS, LABELS, st.sampled_from(["cluster.local", "example.org", "mesh"]))
def test_spiffe_and_cn_map_back_and_forth(namespace, account, domain) -> None:
    uri = spiffe_id(namespace, account, domain)
    assert parse_spiffe(uri) == SpiffeId(domain, namespace, account)
    assert cn_of(uri) == f"{account}.{namespace}"
    assert spiffe_of_cn(cn_of(uri), domain) == uri
    assert str(parse_spiffe(uri)) == uri

"""Label selectors: Kubernetes matching rules, validation and kubectl's text form."""

from __future__ import annotations

import pytest

from podnet.errors import ObjectError
from podnet.policy.selectors import LabelSelector, Requirement, parse_selector_text

LABELS = {"app": "web", "tier": "front", "app.kubernetes.io/name": "shop"}


def sel(obj: dict) -> LabelSelector:
    return LabelSelector.parse(obj, "sel")


def test_empty_selector_selects_everything():
    s = sel({})
    assert s.selects_all and s.matches({}) and s.matches(LABELS)
    assert s.to_dict() == {} and parse_selector_text("") == s


def test_match_labels_are_anded():
    assert sel({"matchLabels": {"app": "web", "tier": "front"}}).matches(LABELS)
    assert not sel({"matchLabels": {"app": "web", "tier": "back"}}).matches(LABELS)
    assert not sel({"matchLabels": {"app": "web"}}).selects_all


@pytest.mark.parametrize(
    ("operator", "values", "labels", "expected"),
    [
        ("In", ["web", "db"], {"app": "web"}, True),
        ("In", ["db"], {"app": "web"}, False),
        ("In", ["web"], {}, False),  # In with the key absent does not match
        ("NotIn", ["db"], {"app": "web"}, True),
        ("NotIn", ["web"], {"app": "web"}, False),
        ("NotIn", ["web"], {}, True),  # NotIn matches when the key is absent
        ("Exists", [], {"app": ""}, True),
        ("Exists", [], {}, False),
        ("DoesNotExist", [], {}, True),
        ("DoesNotExist", [], {"app": "web"}, False),
    ],
)
def test_expression_operators(operator, values, labels, expected):
    expr = {"key": "app", "operator": operator, "values": values}
    assert sel({"matchExpressions": [expr]}).matches(labels) is expected


def test_labels_and_expressions_are_anded():
    s = sel({"matchLabels": {"tier": "front"},
             "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]})
    assert s.matches(LABELS) and not s.matches({"tier": "front", "app": "db"})


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("app=web", "sel: must be a label selector mapping"),
        ({"matchLabel": {}}, "sel.matchLabel: unknown field"),
        ({"matchLabels": {"-bad": "x"}}, "sel.matchLabels: label key '-bad'"),
        ({"matchLabels": {"a": "x" * 64}}, "sel.matchLabels: label value"),
        ({"matchLabels": {"Bad_Prefix/a": "x"}}, "the prefix must be a DNS subdomain"),
        ({"matchLabels": {"a": 1}}, "1 is not a label value"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]},
         "sel.matchExpressions[0]: operator In needs at least one value"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
         "sel.matchExpressions[0]: operator Exists takes no values"),
        ({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
         "sel.matchExpressions[0]: operator 'Gt' is not one of"),
        ({"matchExpressions": {"key": "a"}}, "sel.matchExpressions: must be a list"),
    ],
)
def test_invalid_selectors(obj, message):
    with pytest.raises(ObjectError) as err:
        LabelSelector.parse(obj, "sel")
    assert message in str(err.value)


def test_valid_keys_and_values():
    s = sel({"matchLabels": {"example.com/a_b.c-d": "", "x": "A-1_b.2"}})
    assert s.matches({"example.com/a_b.c-d": "", "x": "A-1_b.2"})


@pytest.mark.parametrize(
    ("text", "obj"),
    [
        ("app=web", {"matchLabels": {"app": "web"}}),
        ("app==web", {"matchLabels": {"app": "web"}}),
        (" app = web , tier=front ", {"matchLabels": {"app": "web", "tier": "front"}}),
        ("app!=web", {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}),
        ("app in (web, db)",
         {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "web"]}]}),
        ("app notin (db)",
         {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}),
        ("app", {"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
        ("!app", {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}),
        ("app.kubernetes.io/name=shop", {"matchLabels": {"app.kubernetes.io/name": "shop"}}),
    ],
)
def test_selector_text_equals_dict_form(text, obj):
    s = parse_selector_text(text)
    assert s == sel(obj)
    assert parse_selector_text(s.to_text()) == s  # the text form round-trips


def test_selector_text_matching():
    s = parse_selector_text("app in (web,db),!canary,tier")
    assert s.matches(LABELS)
    assert not s.matches({**LABELS, "canary": "1"})
    assert not s.matches({"app": "web"})
    # the same key twice: both requirements must hold
    assert not parse_selector_text("app=web,app=db").matches(LABELS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app in ()", "'in' needs at least one value"),
        ("app in web", "expected '(' after 'in'"),
        ("app in (web", "unexpected end"),
        ("app=web,", "trailing ','"),
        ("app web", "unexpected 'web' after label key 'app'"),
        ("app>3", "unexpected character '>'"),
        ("=web", "expected a label key, got '='"),
        ("-app=x", "label key '-app'"),
        ("!", "unexpected end"),
    ],
)
def test_selector_text_errors(text, message):
    with pytest.raises(ObjectError) as err:
        parse_selector_text(text)
    assert message in str(err.value) and text in str(err.value)
    assert err.value.details  # a hint with the syntax


def test_requirement_values_are_a_set():
    assert Requirement("a", "In", ("y", "x", "y")).values == ("x", "y")
    assert str(parse_selector_text("")) == "<all>"

"""The store's key schema (keys.py): one function per family, names that cannot escape
their family, and no key spelled anywhere else in the source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from podnet import keys
from podnet.errors import InvalidConfig

SRC = Path(__file__).parents[2] / "src" / "podnet"
DOCS = Path(__file__).parents[2] / "docs" / "architecture.md"


def test_each_family_function_builds_and_parses_its_pattern():
    assert keys.endpoint("net", "c1", "eth0") == "endpoints/net/c1/eth0"
    assert keys.parse_endpoint("endpoints/net/c1/eth0") == ("net", "c1", "eth0")
    assert keys.ipam_address("net", "10.0.0.2") == "ipam/net/ip/10.0.0.2"
    assert keys.parse_ipam_address("ipam/net/ip/10.0.0.2") == ("net", "10.0.0.2")
    assert keys.parse_ipam_address("ipam/net/last/0") is None
    assert keys.ipam_last("net", 1) == "ipam/net/last/1"
    assert keys.block("10.244.3.0", 24) == "blocks/10.244.3.0-24"
    assert keys.node("n1") == "nodes/n1" and keys.host("vm1") == "hosts/vm1"
    assert keys.network("web") == "networks/web" and keys.container("api") == "containers/api"
    assert keys.pod("x", "a") == "policy/pods/x/a"
    assert re.fullmatch(r"meta/stores/[0-9a-f]{16}", keys.stored_store("/var/lib/podnet/store.db"))
    assert keys.object_key(keys.NETWORK_POLICIES, "p", "x") == "policy/networkpolicies/x/p"
    for family in keys.FAMILIES:
        assert family.pattern.startswith(family.prefix.rstrip("/"))


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".", "a\0b", None, 3])
def test_a_name_cannot_leave_its_family(bad):
    with pytest.raises(InvalidConfig):
        keys.endpoint("net", bad, "eth0")  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig):
        keys.network(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["endpoints/net/c1", "endpoints/net/c1/eth0/x", "networks/web", "endpoints//c/e"])
def test_parse_refuses_keys_of_another_shape(key):
    with pytest.raises(InvalidConfig):
        keys.parse_endpoint(key)


def _literals(tree: ast.AST):
    """Every string constant, and the leading text of every f-string."""
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                yield node.lineno, head.value
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_no_store_key_literal_outside_the_keys_module():
    roots = tuple({family.prefix.split("/")[0] + "/" for family in keys.FAMILIES})
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "keys.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if id(node) in docstrings:
                continue
            for lineno, text in _literals(node) if isinstance(node, ast.JoinedStr | ast.Constant) else ():
                if text.startswith(roots):
                    found.append(f"{path.relative_to(SRC)}:{lineno}: {text!r}")
    assert not found, "store keys spelled outside keys.py:\n" + "\n".join(sorted(set(found)))


def test_the_documented_key_table_is_the_schema():
    text = DOCS.read_text()
    table = text[text.index("<!-- keys:begin -->"):text.index("<!-- keys:end -->")]
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([^`]+)` \| ([^|]+) \|", table, re.M)}
    assert rows == {f.pattern: f.record for f in keys.FAMILIES}

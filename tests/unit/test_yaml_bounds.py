"""YAML podnet reads (`apply -f`, lab topologies, the config file) is bounded (issue
10, item 8): aliases cannot make a small file expand into a huge tree (a "billion
laughs" document), nesting cannot blow the stack, and a file has a size limit. Each
fails fast with a clear error, and ordinary anchors keep working."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from podnet.cli.objects import read_documents
from podnet.config import load as load_config
from podnet.errors import InvalidConfig, PodnetError
from podnet.lab import topology as topo
from podnet.lab.topology import TopologyError

FAST = 10.0  # seconds: "not stalled", far above the milliseconds these take


def laughs(levels: int = 9, width: int = 9) -> str:
    """The classic: each level a list of `width` aliases of the level below."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def policy_bomb(width: int) -> str:
    """A *valid* NetworkPolicy that expands to width**4 selector values: 2.6 KB at
    width 200 kept `podnet apply` busy for over a minute before the bound."""

    def many(alias: str, first: str) -> str:
        return "[" + ", ".join([first] + [f"*{alias}"] * (width - 1)) + "]"

    expr = "&e {key: k, operator: In, values: " + many("s", "&s x") + "}"
    peer = "&p {podSelector: {matchExpressions: " + many("e", expr) + "}}"
    rule = "&r {to: " + many("p", peer) + "}"
    return ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            "metadata: {name: bomb, namespace: default}\n"
            "spec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: " + many("r", rule) + "\n")


def timed(fn, *args):
    start = time.monotonic()
    try:
        fn(*args)
    finally:
        assert time.monotonic() - start < FAST


def test_billion_laughs_fails_fast_through_read_documents(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(laughs())
    with pytest.raises(PodnetError) as err:
        timed(read_documents, [str(bomb)])
    assert str(bomb) in err.value.msg
    assert "alias" in err.value.details and "nodes" in err.value.details


def test_billion_laughs_fails_fast_in_topologies_and_configs(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(laughs())
    with pytest.raises(TopologyError) as err:
        timed(topo.load, bomb)
    assert "alias" in err.value.details
    with pytest.raises(InvalidConfig) as err:
        timed(load_config, str(bomb))
    assert "alias" in err.value.details


def test_apply_of_a_valid_alias_bomb_fails_fast():
    """End to end: the CLI exits non-zero with the reason, instead of walking 1.6e9 nodes.
    A subprocess with a timeout, so the unfixed code fails instead of hanging the run."""
    done = subprocess.run([sys.executable, "-m", "podnet.cli", "apply", "-f", "-", "--store", "memory://"],
                          input=policy_bomb(200), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "not valid YAML" in done.stderr and "alias" in done.stderr


def test_recursive_alias_is_refused(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("a: &a [1, *a]\n")
    with pytest.raises(PodnetError) as err:
        read_documents([str(loop)])
    assert "recursive" in err.value.details


def test_deep_nesting_is_a_clear_error_not_a_recursion_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PodnetError) as err:
        read_documents([str(deep)])
    assert "nested" in err.value.details


def test_oversized_file_is_refused(tmp_path):
    from podnet.yamlsafe import MAX_BYTES

    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(PodnetError) as err:
        read_documents([str(big)])
    assert "larger than" in err.value.details


def test_ordinary_anchors_and_merge_keys_still_load(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "kind: Namespace\nmetadata: &m {name: a, labels: &l {team: x}}\n"
        "spec: {copy: *m, merged: {<<: *l, tier: y}}\n---\nkind: Namespace\nmetadata: {name: b}\n"
    )
    docs = read_documents([str(good)])
    assert [d["metadata"]["name"] for d in docs] == ["a", "b"]
    assert docs[0]["spec"]["copy"] == docs[0]["metadata"]
    assert docs[0]["spec"]["merged"] == {"team": "x", "tier": "y"}


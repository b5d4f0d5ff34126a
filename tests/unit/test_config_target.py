"""Which cluster a command talks to (config.resolve), and the config file's checks."""

from __future__ import annotations

import pytest

from podnet import config
from podnet.errors import InvalidConfig

FILE = """
apiVersion: podnet.io/v1
kind: Config
current-context: prod
contexts:
  - {name: prod, store: "etcd://10.0.0.1:2379/podnet", socket: /run/podnet/agent.sock}
  - {name: mylab, lab: dev}
agent: {node: node1, fabric: host-gw, clusterCIDR: 10.244.0.0/16, blockPrefix: 26, leaseTTL: 5, watchBatch: 0.2}
"""


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(FILE)
    return str(path)


def test_flags_win_over_everything(cfg):
    env = {"PODNET_CONFIG": cfg, "PODNET_STORE": "/s.db", "PODNET_LAB": "envlab"}
    assert config.resolve(lab="x", environ=env) == config.Target(lab="x", source="--lab")
    assert config.resolve(store="/a.db", environ=env).store == "/a.db"
    assert config.resolve(context="mylab", environ=env).lab == "dev"
    with pytest.raises(InvalidConfig, match="exclude each other"):
        config.resolve(lab="x", store="/a.db", environ=env)


def test_environment_then_file_then_default_lab(cfg, tmp_path):
    env = {"PODNET_CONFIG": cfg}
    assert config.resolve(environ={**env, "PODNET_STORE": "/s.db"}).source == "$PODNET_STORE"
    assert config.resolve(environ={**env, "PODNET_LAB": "l2"}) == config.Target(lab="l2", source="$PODNET_LAB")
    target = config.resolve(environ=env)
    assert (target.store, target.socket) == ("etcd://10.0.0.1:2379/podnet", "/run/podnet/agent.sock")
    assert "current-context 'prod'" in target.source
    nothing = {"PODNET_CONFIG": str(tmp_path / "absent.yaml")}
    assert config.resolve(environ=nothing) == config.Target(lab="lab", source="the default lab")


def test_agent_section_maps_to_flag_destinations(cfg):
    agent = config.load(cfg).agent
    assert agent == {"node": "node1", "fabric": "host-gw", "cluster_cidr": "10.244.0.0/16",
                     "block_prefix": 26, "lease_ttl": 5.0, "watch_batch": 0.2}


@pytest.mark.parametrize("text, message", [
    ("contexts: [{name: a}]", "contexts[0]: give exactly one of lab or store"),
    ("contexts: [{name: a, lab: x, store: y}]", "give exactly one of lab or store"),
    ("contexts: [{name: a, lab: x}, {name: a, lab: y}]", "contexts[1].name: context 'a' is defined twice"),
    ("current-context: b\ncontexts: [{name: a, lab: x}]", "current-context: no context named 'b'"),
    ("agent: {nodes: x}", "agent.nodes: unknown field"),
    ("agent: {blockPrefix: x}", "agent.blockPrefix: 'x' is not an integer"),
    ("kind: Pod", "expected apiVersion podnet.io/v1, kind Config"),
    ("contexts: [", "is not valid YAML"),
])
def test_bad_files_name_the_field(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InvalidConfig) as err:
        config.load(str(path))
    assert message in f"{err.value.msg} {err.value.details}"
    assert str(path) in err.value.msg


def test_unknown_context(cfg):
    with pytest.raises(InvalidConfig, match="no context named 'nope'"):
        config.resolve(context="nope", environ={"PODNET_CONFIG": cfg})

"""Pods the plugin's fallback made while no agent ran keep their network when the
agent starts (issue 10, item 5): the fallback notes every store it writes to beside
the agent's socket, and the agent's resync deletes a veth or NAT rule only when no
store it knows claims it."""

from __future__ import annotations

import shutil

import pytest

from cniharness import Agent, Cni, bridge_config, links, nft_rules, start_echo, tcp_probe
from podnet.endpoints.stores import registry_for

pytestmark = pytest.mark.root


def test_a_fallback_pod_in_a_fresh_data_dir_survives_the_agent_start(
    sandbox, host_ns, cni_bin, data_dir, socket_path, tmp_path
):
    # no agent listens on socket_path: the plugin does the ADD in-process, into the
    # network's own dataDir, which no agent has ever seen
    config = bridge_config("t-net", data_dir, agentSocket=socket_path, ipMasq=True)
    cni = Cni(cni_bin, host_ns, config, sandbox)
    c1 = sandbox.netns("c1")
    ports = {"portMappings": [{"hostPort": 8084, "containerPort": 80, "protocol": "tcp"}]}
    try:
        cni.add(c1, "c1", config={**config, "runtimeConfig": ports})
        veths, rules = links(sandbox, host_ns), nft_rules(sandbox, host_ns)
        assert len(veths) == 1 and "dport 8084" in rules and "masquerade" in rules
        # the agent starts with a store of its own, elsewhere
        agent = Agent(sandbox, host_ns, socket_path, str(tmp_path / "agent.db")).start()
        log = agent.stop()
        assert "orphan_links=[], orphan_rules=[]" in log, log
        assert links(sandbox, host_ns) == veths and nft_rules(sandbox, host_ns) == rules
        start_echo(sandbox, host_ns, 7071, "the host", bind="10.80.0.1")
        assert tcp_probe(sandbox, c1, "10.80.0.1", 7071) == "hello from the host"
        # and an agent started again later still knows that store (it remembered it)
        shutil.rmtree(registry_for(socket_path), ignore_errors=True)
        Agent(sandbox, host_ns, socket_path, str(tmp_path / "agent.db")).start().stop()
        assert links(sandbox, host_ns) == veths and nft_rules(sandbox, host_ns) == rules
    finally:
        shutil.rmtree(registry_for(socket_path), ignore_errors=True)

"""Fuzzing of the installed executables (`podnet`, `podnet-ipam`) run as subprocesses
inside a test host namespace, with random CNI_* and random (mostly plausible) configs.

The contract: exit code 0 with a result (or nothing) on stdout, or exit code 1 with
a spec error object; never a traceback on stderr, never another exit code.

Safety: whatever the fuzzer draws, the plugins only ever touch the test's own
namespaces and tmp dirs. The agent socket and every data dir are forced, IPAM
delegation is limited to podnet's own IPAM, the reference host-local (under tmp) or a
plugin that does not exist, and CNI_NETNS is either one of the test's namespaces or a
path that does not exist.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cniharness import REFERENCE_DIR, Agent
from fuzzing import json_slots
from podnet.lab.sandbox import Sandbox
from podnet.runtime.libcni import invoke

pytestmark = pytest.mark.root

FUZZ = settings(
    max_examples=int(os.environ.get("PODNET_FUZZ_EXEC_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,  # examples name per-run namespaces and dirs: replaying them is moot
)
IPAM_TYPES = ("podnet-ipam", "podnet", "host-local", "pn-no-such-plugin")
MASTER = "pntfzm0"

KEYS = [
    "cniVersion", "name", "type", "mode", "bridge", "mtu", "master", "isGateway",
    "isDefaultGateway", "ipMasq", "hairpinMode", "ipam", "ranges", "subnet", "rangeStart",
    "gateway", "routes", "dst", "gw", "runtimeConfig", "portMappings", "hostPort",
    "containerPort", "protocol", "hostIP", "ips", "dns", "prevResult",
    "cni.dev/valid-attachments", "containerID", "ifname",
]
no_nul = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
# \udc80..\udcff: subprocess passes these as the raw bytes 0x80..0xff (not UTF-8).
undecodable = st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)])
env_junk = (
    st.text(alphabet=no_nul, max_size=30)
    | st.text(alphabet="/.:;=-_aZ9 ", max_size=30)
    | st.text(alphabet=undecodable | st.sampled_from("eth0=;IP"), min_size=1, max_size=10)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
    max_leaves=8,
)
subnets = st.sampled_from(["10.95.0.0/24", "10.95.0.0/30", "10.96.0.0/28", "fd00:95::/64", "10.95.0.0/31", "bad"])
base_configs = st.fixed_dictionaries(
    {
        "cniVersion": st.sampled_from(["1.1.0", "1.1.0", "1.0.0", "0.4.0", "0.3.1", "2.0.0"]),
        "name": st.sampled_from(["fz", "fz", "fz2", "bad/name"]),
        "type": st.just("podnet"),
        "ipam": st.fixed_dictionaries(
            {
                "type": st.sampled_from(IPAM_TYPES),
                "ranges": st.lists(st.lists(st.fixed_dictionaries({"subnet": subnets}), min_size=1, max_size=1),
                                   min_size=1, max_size=2),
            },
            optional={"subnet": subnets, "routes": st.just([{"dst": "0.0.0.0/0"}])},
        ),
    },
    optional={
        "mode": st.sampled_from(["bridge", "macvlan", "vepa", "ipvlan"]),
        "master": st.sampled_from([MASTER, "pntfznope"]),
        "bridge": st.sampled_from(["pntfz0", "pntfz1", "a" * 16, MASTER]),
        "mtu": st.sampled_from([0, 1300, 1500, 9000, 70000, -1]),
        "isDefaultGateway": st.booleans(),
        "ipMasq": st.booleans(),
        "runtimeConfig": st.fixed_dictionaries(
            {},
            optional={
                "portMappings": st.lists(
                    st.fixed_dictionaries({"hostPort": st.sampled_from([18080, 18081, 0, 70000]),
                                           "containerPort": st.sampled_from([80, 81]),
                                           "protocol": st.sampled_from(["tcp", "udp", "icmp"])}),
                    max_size=2),
                "ips": st.lists(st.sampled_from(["10.95.0.9", "10.95.0.9/24", "fd00:95::9", "nope"]), max_size=2),
            },
        ),
        "prevResult": st.fixed_dictionaries({"cniVersion": st.just("1.0.0"), "ips": st.just(
            [{"address": "10.95.0.2/24"}])}),
        "cni.dev/valid-attachments": st.lists(st.fixed_dictionaries({"containerID": st.sampled_from(["c1", "c2"]),
                                                                     "ifname": st.just("eth0")}), max_size=2),
    },
)



@st.composite
def configs(draw):
    """A plausible config with 0-2 random mutations."""
    config = copy.deepcopy(draw(base_configs))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        slots = json_slots(config, [])
        container, key = draw(st.sampled_from(slots))
        if draw(st.booleans()):
            container[key] = draw(json_values)
        else:
            del container[key]
    return config


def make_safe(config, data_dir: str, agent_socket: str):
    """Force every path the plugins would write to, and the IPAM delegate."""
    if not isinstance(config, dict):
        return config
    config["agentSocket"] = agent_socket
    config["dataDir"] = data_dir
    ipam = config.get("ipam")
    if isinstance(ipam, dict):
        ipam["dataDir"] = data_dir
        if "type" in ipam and ipam["type"] not in IPAM_TYPES:
            ipam["type"] = "pn-no-such-plugin"
    return config


GOOD_ENV = {
    "CNI_COMMAND": ["ADD", "ADD", "ADD", "DEL", "DEL", "CHECK", "GC", "STATUS", "VERSION"],
    "CNI_CONTAINERID": ["c1", "c2", "c3"],
    "CNI_IFNAME": ["eth0", "eth0", "net1"],
    "CNI_ARGS": ["", "", "IgnoreUnknown=1;IP=10.95.0.7", "IP=10.95.0.7/24", "K8S_POD_NAME=p"],
}
BAD_ENV = {
    "CNI_COMMAND": ["add", "", "DELETE"],
    "CNI_CONTAINERID": ["", "-c", "c/1"],
    "CNI_IFNAME": ["", "a" * 16, "e:0", "..", "e\udcff"],
    "CNI_ARGS": ["X=1", "foo", "IP=nope"],
}


@st.composite
def fuzz_env(draw, netns_paths: list[str], cni_path: str):
    """A valid environment, in which at most one variable is bad or random. (The
    in-process fuzz covers arbitrary environments; here each example costs a process.)"""
    env = {key: draw(st.sampled_from(values)) for key, values in GOOD_ENV.items()}
    env["CNI_NETNS"] = draw(st.sampled_from([*netns_paths, ""]))
    env["CNI_PATH"] = draw(st.sampled_from([cni_path, cni_path, ""]))
    victim = draw(st.sampled_from([None, None, None, None, "CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME",
                                   "CNI_NETNS", "CNI_ARGS"]))
    if victim == "CNI_NETNS":
        # never a path that exists: it could name a namespace that is not the test's
        env[victim] = draw(st.text(alphabet=no_nul, max_size=40).filter(lambda t: not os.path.lexists(t)))
    elif victim is not None:
        env[victim] = draw(st.sampled_from(BAD_ENV[victim]) | env_junk)
    return env


def check_contract(result, command: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1), (result.returncode, result.output, result.stderr)
    out = result.output
    if result.returncode == 0:
        assert out is None or (isinstance(out, dict) and "unparsable" not in out), out
        if command == "ADD":
            assert isinstance(out, dict) and isinstance(out.get("cniVersion"), str), out
            assert isinstance(out.get("ips"), list), out
        if command == "VERSION":
            assert isinstance(out, dict) and "supportedVersions" in out, out
    else:
        assert isinstance(out, dict) and "unparsable" not in out, (out, result.stderr)
        assert isinstance(out.get("code"), int) and not isinstance(out["code"], bool), out
        assert isinstance(out.get("msg"), str) and out["msg"], out
        assert not out["msg"].startswith("internal error"), out


@pytest.fixture
def fuzz_host(sandbox, host_ns, tmp_path):
    """The host namespace with a macvlan master, and two container namespaces."""
    sandbox.exec(host_ns, ["ip", "link", "add", MASTER, "mtu", "1400", "type", "veth", "peer", "name", "pntfzm1"])
    sandbox.exec(host_ns, ["ip", "link", "set", MASTER, "up"])
    sandbox.exec(host_ns, ["ip", "link", "set", "pntfzm1", "up"])
    return [Sandbox.path(sandbox.netns("c1")), Sandbox.path(sandbox.netns("c2"))]


def _run_fuzz(data, binary, host_ns, cni_path, netns_paths, data_dir, agent_socket, stats):
    environ = data.draw(fuzz_env(netns_paths, cni_path), label="environ")
    shape = data.draw(st.sampled_from(["config"] * 8 + ["json", "garbled"]), label="stdin shape")
    config = make_safe(data.draw(json_values if shape == "json" else configs(), label="config"),
                       data_dir, agent_socket)
    stdin = json.dumps(config).encode()
    if shape == "garbled":
        stdin = stdin[: len(stdin) // 2]
    result = invoke(binary, environ.get("CNI_COMMAND", ""), stdin, netns_exec=host_ns,
                    extra_env=environ, timeout=60)
    check_contract(result, environ["CNI_COMMAND"])
    key = (environ["CNI_COMMAND"], result.returncode)
    stats[key] = stats.get(key, 0) + 1


def _something_succeeded(stats: dict) -> bool:
    """Not everything was refused: the fuzz reached the real work (VERSION aside)."""
    return any(code == 0 and command != "VERSION" for (command, code) in stats)


@pytest.mark.parametrize("served", ["agent", "in-process"])
def test_fuzz_podnet_executable(served, sandbox, host_ns, fuzz_host, cni_bin, tmp_path, socket_path):
    data_dir = str(tmp_path / "fz-data")
    os.makedirs(data_dir)
    agent = None
    if served == "agent":
        agent = Agent(sandbox, host_ns, socket_path, str(tmp_path / "agent.db")).start()
    cni_path = f"{cni_bin}:{REFERENCE_DIR}"
    stats: dict = {}

    @FUZZ
    @given(data=st.data())
    def fuzz(data):
        _run_fuzz(data, os.path.join(cni_bin, "podnet"), host_ns, cni_path, fuzz_host, data_dir,
                  socket_path, stats)

    fuzz()
    if agent is not None:
        assert agent.proc.poll() is None, "the agent died under fuzzing"
    assert _something_succeeded(stats), stats


def test_fuzz_podnet_ipam_executable(sandbox, host_ns, fuzz_host, cni_bin, tmp_path, socket_path):
    data_dir = str(tmp_path / "fz-data")
    os.makedirs(data_dir)
    cni_path = f"{cni_bin}:{REFERENCE_DIR}"
    stats: dict = {}

    @FUZZ
    @given(data=st.data())
    def fuzz(data):
        _run_fuzz(data, os.path.join(cni_bin, "podnet-ipam"), host_ns, cni_path, fuzz_host, data_dir,
                  socket_path, stats)

    fuzz()
    assert _something_succeeded(stats), stats

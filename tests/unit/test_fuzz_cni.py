"""Fuzzing of the CNI input layer, in-process (no root): whatever a runtime (or an
attacker) puts in CNI_* and on stdin, `skel.run` answers with a result or a spec
error object, never a traceback, and never the internal-error code 999 for a mere
input problem.

Two handlers are driven: the `podnet` plugin's input layer (config, IPAM section,
port mappings, DNS, requested IPs, store path: everything parsed before any kernel
work) and the real `podnet-ipam` handler, which allocates in SQLite under a tmp dir.

Configs are mostly plausible ones with a few random mutations (a value replaced by
arbitrary JSON, a key deleted or added): a fully random object almost never gets past
the first check, so the deep parsing paths would go untested.
"""

from __future__ import annotations

import copy
import io
import json
import os
import string
from collections import Counter

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from fuzzing import json_slots
from podnet.cni import ipam_plugin, plugin, skel
from podnet.cni.config import conf_dns, parse_call, requested_ips
from podnet.cni.types import SUPPORTED_VERSIONS
from podnet.ipam.config import parse_address, parse_ipam_config
from podnet.kernel.nat.parse import parse_port_mappings

# PODNET_FUZZ_EXAMPLES=20000 for a deeper run by hand.
FUZZ = settings(
    max_examples=int(os.environ.get("PODNET_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- arbitrary JSON ---------------------------------------------------------------------

KEYS = [
    "cniVersion", "name", "type", "mode", "bridge", "mtu", "master", "macvlanMode",
    "isGateway", "isDefaultGateway", "ipMasq", "hairpinMode", "agentSocket", "dataDir",
    "ipam", "ranges", "subnet", "rangeStart", "rangeEnd", "gateway", "routes", "dst",
    "gw", "reserved", "exclude", "runtimeConfig", "portMappings", "hostPort",
    "containerPort", "protocol", "hostIP", "ips", "dns", "prevResult",
    "cni.dev/valid-attachments", "containerID", "ifname",
]

junk_text = st.text(max_size=24) | st.text(alphabet=string.printable, max_size=300)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | junk_text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

# -- plausible values ---------------------------------------------------------------------


def _cidr(address, prefix: int) -> str:
    return f"{address}/{prefix}"


addresses = st.ip_addresses().map(str) | st.sampled_from(
    ["10.1.0.5", "10.1.0.1", "10.1.0.255", "10.1.0.0", "fd00::5", "fd00::1", "10.1.0.5/24",
     "fe80::1%eth0", "1.2.3", "::ffff:10.1.0.5"]
)
cidrs = st.sampled_from(
    ["10.1.0.0/24", "10.1.0.0/28", "10.1.0.0/30", "10.1.0.0/31", "10.2.0.0/16", "fd00::/64",
     "fd00::/120", "fd00::/127", "0.0.0.0/0", "::/0", "10.1.0.0/24/1", "10.1.0.300/24", "", "/24",
     "10.1.0.7/24"]
) | st.builds(_cidr, st.ip_addresses(), st.integers(min_value=-2, max_value=140))
one_range = st.fixed_dictionaries(
    {"subnet": cidrs}, optional={"rangeStart": addresses, "rangeEnd": addresses, "gateway": addresses}
)
ipam_section = st.fixed_dictionaries(
    {"type": st.sampled_from(["podnet-ipam", "podnet-ipam", "podnet", "host-local", "", "../x"])},
    optional={
        "ranges": st.lists(st.lists(one_range, min_size=1, max_size=3), min_size=1, max_size=3),
        "subnet": cidrs,
        "rangeStart": addresses,
        "rangeEnd": addresses,
        "gateway": addresses,
        "routes": st.lists(st.fixed_dictionaries({"dst": cidrs}, optional={"gw": addresses}), max_size=3),
        "reserved": st.lists(cidrs | addresses, max_size=3),
        "exclude": st.lists(cidrs, max_size=3),
        "dataDir": st.sampled_from(["relative/dir", "/tmp/pn-fuzz-never-written", ""]),
    },
)
ports = st.integers(min_value=-5, max_value=70000) | st.sampled_from([80, 8080, 65535, 0, True, "80", 80.0])
port_mapping = st.fixed_dictionaries(
    {"hostPort": ports, "containerPort": ports},
    optional={
        "protocol": st.sampled_from(["tcp", "udp", "sctp", "TCP", "icmp", ""]),
        "hostIP": addresses | st.sampled_from(["", "0.0.0.0", "::", "localhost"]),
    },
)
runtime_config = st.fixed_dictionaries(
    {},
    optional={
        "portMappings": st.lists(port_mapping, max_size=4),
        "ips": st.lists(addresses | cidrs, max_size=3),
        "bandwidth": st.fixed_dictionaries({"ingressRate": st.integers(0, 10**9)}),
    },
)
attachment = st.fixed_dictionaries(
    {"containerID": st.sampled_from(["c1", "c2", "", "x/y"])},
    optional={"ifname": st.sampled_from(["eth0", "net1", ""])},
)
plausible_configs = st.fixed_dictionaries(
    {
        "cniVersion": st.sampled_from([*SUPPORTED_VERSIONS, "1.1.0", "1.0.0", "0.2.0", "1.2.0", "x.y.z"]),
        "name": st.sampled_from(["net", "net", "a.b-c_d", "bad/name", "", " ", "n" * 300, "ünï"]),
        "type": st.sampled_from(["podnet", "podnet-ipam", "bridge"]),
    },
    optional={
        "mode": st.sampled_from(["bridge", "macvlan", "private", "vepa", "passthru", "ipvlan", ""]),
        "macvlanMode": st.sampled_from(["bridge", "private", "source"]),
        "master": st.sampled_from(["eth0", "", "a" * 16, "a/b", ".", "ü" * 8]),
        "bridge": st.sampled_from(["br0", "", "a" * 16, "a b", "..", "ünïcode", "e:0"]),
        "mtu": st.integers(min_value=-10, max_value=70000) | st.sampled_from([0, 1500, 1500.0, True, "1500"]),
        "isGateway": st.booleans(),
        "isDefaultGateway": st.booleans(),
        "ipMasq": st.booleans(),
        "hairpinMode": st.booleans(),
        "agentSocket": st.sampled_from(["/run/podnet/never.sock", ""]),
        "dataDir": st.sampled_from(["relative", "/tmp/pn-fuzz-never-written"]),
        "dns": st.fixed_dictionaries({}, optional={"nameservers": st.lists(addresses, max_size=2)}),
        "ipam": ipam_section,
        "runtimeConfig": runtime_config,
        "prevResult": st.fixed_dictionaries(
            {"cniVersion": st.just("1.0.0"), "ips": st.lists(st.fixed_dictionaries({"address": cidrs}), max_size=2)}
        ),
        "cni.dev/valid-attachments": st.lists(attachment, max_size=3),
    },
)



@st.composite
def mutated(draw, base):
    config = copy.deepcopy(draw(base))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        slots = json_slots(config, [])
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "add" or not slots:
            targets = [config] + [c[k] for c, k in slots if isinstance(c[k], dict)]
            target = draw(st.sampled_from(targets))
            target[draw(st.sampled_from(KEYS))] = draw(json_values)
            continue
        container, key = draw(st.sampled_from(slots))
        if action == "delete":
            del container[key]
        else:
            container[key] = draw(json_values)
    return config


config_objects = mutated(plausible_configs)


def _dump(obj) -> bytes:
    return json.dumps(obj).encode()


stdin_bytes = st.one_of(
    config_objects.map(_dump),
    config_objects.map(_dump),
    config_objects.map(_dump),
    json_values.map(_dump),
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    config_objects.map(_dump).map(lambda b: b[: len(b) // 2]),  # truncated JSON
    config_objects.map(_dump).map(lambda b: b"\xff" + b),  # not UTF-8
)

# What os.environ holds for bytes that are not UTF-8 (surrogateescape): \udc80..\udcff.
undecodable = st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)])
env_text = (
    st.text(max_size=20)
    | st.text(alphabet="/.:;= \t-_aZ9", max_size=40)
    | st.text(min_size=200, max_size=400)
    | st.text(alphabet=undecodable | st.sampled_from("eth0=;IP"), min_size=1, max_size=12)
)
GOOD_ENV = {
    "CNI_COMMAND": ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"],
    "CNI_CONTAINERID": ["c1", "abc-123_x.y"],
    "CNI_NETNS": ["/run/netns/pn-t-nope", ""],
    "CNI_IFNAME": ["eth0", "net1", "a" * 15],
    "CNI_ARGS": ["IgnoreUnknown=1;IP=10.1.0.5", "IP=10.1.0.7/24", "K8S_POD_NAME=x", ""],
    "CNI_PATH": ["/opt/cni/bin", "", "::"],
}
BAD_ENV = {
    "CNI_COMMAND": ["add", "", "DELETE", "ADD "],
    "CNI_CONTAINERID": ["", "-x", "a/b", "ü", "c1\n"],
    "CNI_IFNAME": ["a" * 16, ".", "..", "e:0", "e/0", "e 0", "ü" * 8, "", "e\udcff"],
    "CNI_ARGS": ["foo", "=1", ";;", "IgnoreUnknown=true;X=1", "X=1", "IP=a,b,,"],
}


@st.composite
def environments(draw):
    """A valid environment with 0-3 variables replaced by junk or removed."""
    env = {key: draw(st.sampled_from(values)) for key, values in GOOD_ENV.items()}
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        key = draw(st.sampled_from(sorted(GOOD_ENV)))
        action = draw(st.sampled_from(["bad", "junk", "delete"]))
        if action == "delete":
            env.pop(key, None)
        elif action == "bad" and key in BAD_ENV:
            env[key] = draw(st.sampled_from(BAD_ENV[key]))
        else:
            env[key] = draw(env_text)
    return env


good_environments = st.fixed_dictionaries(
    {
        "CNI_COMMAND": st.sampled_from(["ADD", "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]),
        "CNI_CONTAINERID": st.sampled_from(["c1", "c2", "c3"]),
        "CNI_NETNS": st.just("/run/netns/pn-t-nope"),
        "CNI_IFNAME": st.sampled_from(["eth0", "net1"]),
        "CNI_PATH": st.just("/opt/cni/bin"),
    },
    optional={"CNI_ARGS": st.sampled_from(["IgnoreUnknown=1;IP=10.1.0.5", "IP=10.1.0.7/24",
                                           "IP=10.1.0.5,fd00::5", "IP=nonsense", "IP=", "IP=10.1.0.5/33"])},
)


# -- the contract -----------------------------------------------------------------------


def run_and_check(handler, environ: dict, stdin: bytes) -> tuple[int, dict | None]:
    out = io.StringIO()
    try:
        code = skel.run(handler, environ, stdin, out)
    except BaseException as exc:  # noqa: BLE001 - the point: nothing may escape
        pytest.fail(f"skel.run let {type(exc).__name__}: {exc} escape for {environ!r} {stdin[:300]!r}")
    text = out.getvalue()
    if code == 0:
        _event("success")
        if not text.strip():
            return 0, None
        value = json.loads(text)
        assert isinstance(value, dict), text
        return 0, value
    assert code == 1, code
    error = json.loads(text)
    assert isinstance(error, dict), text
    assert isinstance(error.get("code"), int) and not isinstance(error["code"], bool), error
    assert isinstance(error.get("msg"), str) and error["msg"], error
    assert isinstance(error.get("cniVersion"), str), error
    assert not error["msg"].startswith("internal error"), (
        f"input problem reported as an internal error: {error} for {environ!r} {stdin[:500]!r}"
    )
    # 999 is podnet's generic code: an input problem always has a spec code.
    assert error["code"] != 999, error
    _event(f"error code {error['code']}")
    return 1, error


def _event(name: str) -> None:
    if currently_in_test_context():
        event(name)


def podnet_input_layer(req: skel.CniRequest) -> None:
    """Everything the `podnet` plugin parses before it touches the kernel (skel
    answers VERSION itself)."""
    conf = parse_call(req).conf
    conf_dns(req.config)
    parse_port_mappings(conf.port_mappings)
    if conf.builtin_ipam:
        ipam = parse_ipam_config(conf.ipam)
        for raw in requested_ips(req.args, req.config):
            parse_address(raw, "requested address")
        assert ipam.range_sets


@FUZZ
@given(environ=environments(), stdin=stdin_bytes)
def test_podnet_input_layer_never_crashes(environ, stdin):
    run_and_check(podnet_input_layer, environ, stdin)


@FUZZ
@given(environ=good_environments, config=config_objects)
def test_podnet_input_layer_random_config(environ, config):
    """With a valid environment, only the config decides: the deepest parsing paths."""
    run_and_check(podnet_input_layer, environ, _dump(config))


def test_known_good_config_passes_the_input_layer():
    """The fuzz contract is not vacuous: a sensible config parses all the way."""
    config = {
        "cniVersion": "1.1.0", "name": "net", "type": "podnet", "bridge": "br0", "mtu": 1400,
        "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]},
        "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 8080}], "ips": ["10.1.0.9"]},
    }
    environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
               "CNI_PATH": ""}
    assert run_and_check(podnet_input_layer, environ, _dump(config)) == (0, None)


@pytest.mark.parametrize("ips", [5, "10.1.0.5", {"a": 1}, True])
def test_requested_ips_that_are_not_a_list_are_invalid_config(tmp_path, ips):
    """Found by the fuzzer: runtimeConfig.ips of the wrong type was an internal error."""
    config = {"cniVersion": "1.0.0", "name": "net", "type": "podnet",
              "ipam": {"type": "podnet-ipam", "subnet": "10.1.0.0/24", "dataDir": str(tmp_path)},
              "runtimeConfig": {"ips": ips}}
    environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
               "CNI_PATH": ""}
    for handler in (podnet_input_layer, ipam_plugin.handle):
        code, error = run_and_check(handler, environ, _dump(config))
        assert code == 1 and error["code"] == 7 and "ips" in error["msg"], error


@pytest.mark.parametrize("ifname", ["e\udcff", "\udc80" * 4])
def test_undecodable_ifname_is_invalid_environment(ifname):
    """Found by the fuzzer: CNI_IFNAME bytes that are not UTF-8 reached len(.encode())
    and came out as an internal error."""
    environ = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": ifname, "CNI_PATH": ""}
    code, error = run_and_check(podnet_input_layer, environ, _dump({"cniVersion": "1.0.0", "name": "n"}))
    assert code == 1 and error["code"] == 4 and "UTF-8" in error["msg"], error


# -- the thin plugin's own parsing ------------------------------------------------------


@FUZZ
@given(stdin=stdin_bytes, key=st.sampled_from(["agentSocket", "cniVersion", "name"]))
def test_thin_plugin_config_value_never_raises(stdin, key):
    """The thin plugin peeks at agentSocket/cniVersion with the C scanner; whatever
    stdin holds, it gets a value or None, and agrees with json where json succeeds.
    (Known, accepted gap: a key spelt with JSON escapes, "agent\\u0053ocket", is not
    seen by the byte pre-check, so the plugin uses the default socket.)"""
    value = plugin.config_value(stdin, key)
    try:
        parsed = json.loads(stdin.decode("utf-8"))
    except ValueError:
        return
    if isinstance(parsed, dict) and key.encode() in stdin:
        assert json.dumps(value) == json.dumps(parsed.get(key))  # (NaN != NaN)
    elif not isinstance(parsed, dict):
        assert value is None


@FUZZ
@given(environ=environments(), extra=st.dictionaries(env_text, env_text, max_size=3))
def test_thin_plugin_forwards_the_environment_faithfully(environ, extra):
    """What the plugin sends the agent is JSON that gives back exactly its CNI_* vars."""
    meta = json.loads(plugin._meta({**extra, **environ}))
    assert meta["op"] == "cni"
    expected = {k: v for k, v in {**extra, **environ}.items() if k.startswith("CNI_")}
    assert meta["env"] == expected


# -- podnet-ipam, for real ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ipam_dir(tmp_path_factory) -> str:
    # Module scope: hypothesis runs many examples in one call of the test function.
    return str(tmp_path_factory.mktemp("fuzz-ipam"))


def _with_data_dir(config: dict, data_dir: str) -> dict:
    """Keep the store under tmp, whatever the fuzzer chose. (Without an ipam object
    the handler fails before it opens any store.)"""
    config.pop("dataDir", None)
    ipam = config.get("ipam")
    if isinstance(ipam, dict):
        ipam["dataDir"] = data_dir
    return config


ipam_configs = mutated(
    st.fixed_dictionaries(
        {
            "cniVersion": st.sampled_from([*SUPPORTED_VERSIONS, "1.1.0", "1.1.0", "9.9.9"]),
            "name": st.sampled_from(["net", "net2", "bad/name", ".hidden", "x" * 80]),
            "type": st.just("podnet-ipam"),
            "ipam": ipam_section
            | st.fixed_dictionaries({"type": st.just("podnet-ipam"), "subnet": st.sampled_from(
                ["10.1.0.0/28", "10.1.0.0/30", "fd00::/120"]), "routes": st.just([{"dst": "0.0.0.0/0"}])}),
        },
        optional={"runtimeConfig": runtime_config, "cni.dev/valid-attachments": st.lists(attachment, max_size=3)},
    )
)


@FUZZ
@given(environ=good_environments, config=ipam_configs)
def test_podnet_ipam_handler_never_crashes(ipam_dir, environ, config):
    config = _with_data_dir(config, ipam_dir)
    code, output = run_and_check(ipam_plugin.handle, environ, _dump(config))
    if code == 0 and environ["CNI_COMMAND"] == "ADD":
        assert output and output["ips"], output
        assert all("/" in ip["address"] for ip in output["ips"]), output


@FUZZ
@given(environ=environments(), stdin=stdin_bytes)
def test_podnet_ipam_random_env_and_stdin(ipam_dir, environ, stdin):
    try:
        config = json.loads(stdin)
    except ValueError:
        config = None
    if isinstance(config, dict):
        stdin = _dump(_with_data_dir(config, ipam_dir))
    run_and_check(ipam_plugin.handle, environ, stdin)


def test_ipam_fuzz_reached_real_allocations(tmp_path):
    """The ipam fuzz configs are not all rejected: a plain sample allocates."""
    seen: Counter = Counter()
    environ = {"CNI_COMMAND": "ADD", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": ""}
    for i in range(5):
        config = {"cniVersion": "1.1.0", "name": "net", "type": "podnet-ipam",
                  "ipam": {"type": "podnet-ipam", "subnet": "10.1.0.0/29", "dataDir": str(tmp_path)}}
        code, out = run_and_check(ipam_plugin.handle, {**environ, "CNI_CONTAINERID": f"c{i}"}, _dump(config))
        seen[code] += 1
    assert seen == Counter({0: 5})

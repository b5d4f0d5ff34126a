"""The CNI environment contract: validation and error codes (no root needed)."""

from __future__ import annotations

import io
import json

import pytest

from podnet.cni import skel
from podnet.cni.types import SUPPORTED_VERSIONS, convert_result, version_result
from podnet.errors import DecodingFailure, IncompatibleVersion, InvalidEnvironment

CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "podnet"}
ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/usr/lib/cni",
}


class Echo:
    """A typed result naming the command it answers."""

    def __init__(self, req):
        self.command = req.command

    def as_cni(self) -> dict:
        return {"ips": [{"address": f"10.0.0.{len(self.command)}/24"}]}


def run(env, conf, handler=Echo):
    out = io.StringIO()
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    code = skel.run(handler, env, data, out)
    return code, json.loads(out.getvalue()) if out.getvalue() else None


def test_valid_add_reaches_handler():
    code, out = run(ENV, CONF)
    assert code == 0 and out == {"ips": [{"address": "10.0.0.3/24"}], "cniVersion": "1.0.0"}


def test_result_is_written_in_the_request_version():
    code, out = run(ENV, {**CONF, "cniVersion": "0.4.0"})
    assert code == 0 and out == {"ips": [{"address": "10.0.0.3/24", "version": "4"}], "cniVersion": "0.4.0"}


def test_no_result_prints_nothing():
    out = io.StringIO()
    assert skel.run(lambda req: None, {**ENV, "CNI_COMMAND": "DEL"}, json.dumps(CONF).encode(), out) == 0
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("change", "expected_code"),
    [
        ({"CNI_COMMAND": "FROB"}, 4),
        ({"CNI_COMMAND": ""}, 4),
        ({"CNI_CONTAINERID": ""}, 4),
        ({"CNI_CONTAINERID": "-leading-dash"}, 4),
        ({"CNI_CONTAINERID": "has space"}, 4),
        ({"CNI_CONTAINERID": "../etc"}, 4),
        ({"CNI_IFNAME": "a" * 16}, 4),
        ({"CNI_IFNAME": "."}, 4),
        ({"CNI_IFNAME": ".."}, 4),
        ({"CNI_IFNAME": "et/h0"}, 4),
        ({"CNI_IFNAME": "eth:0"}, 4),
        ({"CNI_IFNAME": "eth 0"}, 4),
        ({"CNI_NETNS": ""}, 4),
        ({"CNI_ARGS": "FOO=bar"}, 4),
        ({"CNI_ARGS": "garbage"}, 4),
    ],
)
def test_invalid_environment_is_code_4(change, expected_code):
    code, out = run({**ENV, **change}, CONF)
    assert code == 1
    assert out["code"] == expected_code
    assert out["msg"]


def test_missing_path_variable_is_code_4():
    env = dict(ENV)
    del env["CNI_PATH"]
    code, out = run(env, CONF)
    assert (code, out["code"]) == (1, 4)


def test_cni_args_ignore_unknown_and_k8s_keys():
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web;FOO=bar"
    seen = {}

    def handler(req):
        seen.update(req.args)

    code, _ = run({**ENV, "CNI_ARGS": args}, CONF, handler)
    assert code == 0
    assert seen["K8S_POD_NAMESPACE"] == "ns1" and seen["K8S_POD_NAME"] == "web"
    assert skel.parse_cni_args("K8S_POD_NAME=a;K8S_POD_NAMESPACE=b") == {
        "K8S_POD_NAME": "a",
        "K8S_POD_NAMESPACE": "b",
    }


@pytest.mark.parametrize(
    ("stdin", "expected_code"),
    [
        (b"{not json", 6),
        (b"[1, 2]", 6),
        (b"\xff\xfe", 6),
        (json.dumps({"cniVersion": "9.9.9", "name": "n"}).encode(), 1),
        (json.dumps({"cniVersion": "bogus", "name": "n"}).encode(), 1),
        (json.dumps({"name": "n"}).encode(), 1),
        (json.dumps({"cniVersion": "1.0.0"}).encode(), 6),
    ],
)
def test_bad_stdin(stdin, expected_code):
    code, out = run(ENV, stdin)
    assert code == 1 and out["code"] == expected_code


def test_gc_and_status_need_11():
    for command in ("GC", "STATUS"):
        env = {"CNI_COMMAND": command, "CNI_PATH": "/x"}
        code, out = run(env, CONF)
        assert (code, out["code"]) == (1, 1)
        code, out = run(env, {**CONF, "cniVersion": "1.1.0"})
        assert code == 0


def test_del_tolerates_empty_netns():
    code, _ = run({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}, CONF)
    assert code == 0


def test_handler_exception_becomes_error_json_not_traceback():
    def boom(req):
        raise RuntimeError("kaput")

    code, out = run(ENV, CONF, boom)
    assert code == 1 and out["code"] == 999 and "kaput" in out["msg"]


def test_version_is_answered_without_the_handler():
    def never(req):
        raise AssertionError("VERSION reached the handler")

    code, out = run({"CNI_COMMAND": "VERSION"}, b"", never)
    assert code == 0
    assert set(out) == {"cniVersion", "supportedVersions"}
    assert "1.1.0" in out["supportedVersions"] and "1.0.0" in out["supportedVersions"]
    assert version_result("1.0.0")["cniVersion"] == "1.0.0"


def test_result_conversion():
    result = {
        "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/x"}],
        "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0},
                {"address": "fd00::2/64", "interface": 0}],
        "routes": [],
        "dns": {},
    }
    old = convert_result(result, "0.4.0")
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert "dns" not in old and "routes" not in old and "version" not in result["ips"][0]  # a copy
    new = convert_result(result, "1.1.0")
    assert new["cniVersion"] == "1.1.0" and "version" not in new["ips"][0]
    assert set(SUPPORTED_VERSIONS) >= {"0.4.0", "1.0.0", "1.1.0"}


def test_exceptions_have_spec_codes():
    assert IncompatibleVersion("x").code == 1
    assert InvalidEnvironment("x").code == 4
    assert DecodingFailure("x").code == 6


def test_plugin_fallback_imports_nothing_of_the_agent():
    """Without an agent the plugin runs the CNI service (podnet.endpoints) in-process,
    without importing the agent package."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from podnet.cni import plugin\n"
        "code, out = plugin.run_in_process({'CNI_COMMAND': 'VERSION'}, b'', [])\n"
        "assert code == 0 and b'supportedVersions' in out, out\n"
        "assert 'podnet.endpoints.service' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.startswith('podnet.agent')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout

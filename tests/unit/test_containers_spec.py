"""Parsing and validation of `podnet container run` (pure, no root)."""

from __future__ import annotations

import pytest

from podnet.containers import spec
from podnet.containers.files import ContainerFiles, render_hosts, render_resolv
from podnet.containers.process import exec_argv, launch_argv
from podnet.containers.spec import BadSpec, NetworkChoice, RunRequest
from podnet.runtime import init


@pytest.mark.parametrize(("text", "expected"), [
    ("8080:80", {"hostIP": "", "hostPort": 8080, "containerPort": 80, "protocol": "tcp"}),
    ("127.0.0.1:8080:80/udp", {"hostIP": "127.0.0.1", "hostPort": 8080, "containerPort": 80, "protocol": "udp"}),
    ("[::1]:53:5353/UDP", {"hostIP": "::1", "hostPort": 53, "containerPort": 5353, "protocol": "udp"}),
    ("fd00::1:443:8443", {"hostIP": "fd00::1", "hostPort": 443, "containerPort": 8443, "protocol": "tcp"}),
])
def test_parse_port(text, expected):
    assert spec.parse_port(text) == expected


@pytest.mark.parametrize("text", [
    "80", "", "a:80", "8080:b", "0:80", "8080:65536", "8080:80/icmp", "1.2.3:8080:80",
    "8080:80/", "-1:80", "x:8080:80",
])
def test_parse_port_rejects_bad_syntax(text):
    with pytest.raises(BadSpec, match="bad -p|protocol"):
        spec.parse_port(text)


def test_parse_ports_duplicates():
    with pytest.raises(BadSpec, match="published twice"):
        spec.parse_ports(["8080:80", "127.0.0.1:8080:81"])
    assert len(spec.parse_ports(["127.0.0.1:8080:80", "127.0.0.2:8080:80", "8080:80/udp"])) == 3


@pytest.mark.parametrize(("value", "mode", "network", "joined"), [
    (None, "bridge", "podnet", None),
    ("host", "host", None, None),
    ("none", "none", None, None),
    ("container:web", "container", None, "web"),
    ("my-net.1", "bridge", "my-net.1", None),
])
def test_parse_network(value, mode, network, joined):
    choice = spec.parse_network(value)
    assert (choice.mode, choice.network, choice.joined) == (mode, network, joined)
    assert choice.defaulted == (value is None)


@pytest.mark.parametrize("value", ["bridge", "container:", "container:-x", "bad name", "../x"])
def test_parse_network_rejects(value):
    with pytest.raises(BadSpec):
        spec.parse_network(value)


@pytest.mark.parametrize("name", ["a", "web-1", "Web_1.x", "0abc"])
def test_valid_names(name):
    assert spec.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "_a", ".a", "a b", "a/b", "a:b", "x" * 129])
def test_invalid_names(name):
    with pytest.raises(BadSpec, match="invalid container name"):
        spec.check_name(name)


def test_hostnames():
    assert spec.default_hostname("my_app") == "my-app"
    assert spec.check_hostname("web-1.example") == "web-1.example"
    for bad in ("-x", "a..b", "a_b", "x" * 65):
        with pytest.raises(BadSpec):
            spec.check_hostname(bad)


def _req(**kw) -> RunRequest:
    base = {"name": "c", "choice": NetworkChoice("bridge", "net"), "cmd": ("true",)}
    return RunRequest(**{**base, **kw})


@pytest.mark.parametrize(("kw", "match"), [
    ({"cmd": ()}, "no command"),
    ({"choice": NetworkChoice("host"), "ports": ({"hostIP": "", "hostPort": 1, "containerPort": 1, "protocol": "tcp"},)}, "-p needs a network"),
    ({"choice": NetworkChoice("none"), "ip": "10.0.0.2"}, "--ip needs a network"),
    ({"choice": NetworkChoice("container", joined="x"), "aliases": ("a",)}, "--alias needs a network"),
    ({"ip": "10.0.0.300"}, "not an IP address"),
    ({"aliases": ("bad alias",)}, "invalid alias"),
    ({"choice": NetworkChoice("container", joined="c")}, "its own"),
])
def test_check_request_rejects(kw, match):
    with pytest.raises(BadSpec, match=match):
        spec.check_request(_req(**kw))


def test_env_and_signals_and_exit_status():
    assert spec.parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(BadSpec):
        spec.parse_env(["NOVALUE"])
    assert [spec.signal_number(s) for s in ("TERM", "SIGKILL", "9", 2)] == [15, 9, 9, 2]
    with pytest.raises(BadSpec):
        spec.signal_number("NOPE")
    assert (spec.exit_status(-9), spec.exit_status(-15), spec.exit_status(3)) == (137, 143, 3)


def test_record_and_ls_row():
    req = _req(ports=spec.parse_ports(["127.0.0.1:8080:80"]), aliases=("www",))
    cid = spec.new_id()
    record = spec.new_record(req, cid, spec.netns_path(cid), "c", "1:2")
    assert len(cid) == 64 and record.netns == f"/run/netns/pnc-{cid[:12]}"
    assert record.state == "created" and record.network == "net" and record.aliases == ("www",)
    row = spec.ls_row(record.but(ips=("10.0.0.2/24",), state="exited", exit_code=3,
                                 cmd=("/usr/bin/python3", "-c", "x" * 50)))
    assert row["ID"] == cid[:12] and row["IPS"] == ["10.0.0.2"]
    assert row["PORTS"] == ["127.0.0.1:8080->80/tcp"] and row["STATE"] == "exited (3)"
    assert row["CMD"].startswith("python3 -c x") and len(row["CMD"]) == 30
    assert spec.network_label(record.but(network_mode="container", network=None, joined="web")) == "container:web"


def test_rendered_files():
    hosts = render_hosts("web", "web", ["10.0.0.2/24", "fd00::2/64"])
    assert "127.0.0.1\tlocalhost" in hosts and "10.0.0.2\tweb\n" in hosts and "fd00::2\tweb\n" in hosts
    assert "127.0.1.1\th n" in render_hosts("h", "n", [])
    assert render_resolv("10.0.0.1") == "nameserver 10.0.0.1\n" and render_resolv(None) == ""


def test_argv(tmp_path):
    files = ContainerFiles(tmp_path)
    argv = launch_argv("/run/netns/pnc-x", "h", files, ["sleep", "1"], own_netns=True)
    assert argv[:3] == ["nsenter", "--net=/run/netns/pnc-x", "--"]
    assert argv[3:9] == ["unshare", "--uts", "--mount", "--propagation", "private", "--"]
    assert "--sysfs" in argv and argv[-3:] == ["--", "sleep", "1"]
    host = launch_argv(None, "h", files, ["true"], own_netns=False)
    assert host[0] == "unshare" and "--sysfs" not in host
    assert exec_argv(42, ["ip", "a"]) == ["nsenter", "--target=42", "--net", "--uts", "--mount", "--", "ip", "a"]


def test_init_parse():
    args, cmd = init.parse(["--hostname", "h", "--resolv", "r", "--hosts", "s", "--", "sh", "-c", "x"])
    assert (args.hostname, args.sysfs, cmd) == ("h", False, ["sh", "-c", "x"])
    with pytest.raises(init.SetupError):
        init.parse(["--hostname", "h", "--resolv", "r", "--hosts", "s"])
    with pytest.raises(init.SetupError):
        init.parse(["--hostname", "h", "--resolv", "r", "--hosts", "s", "--"])

"""For any input podnet's validators accept, the nft scripts it renders are what they
seem: `nft -c -f -` takes them (checked in a scratch namespace: -c needs
CAP_NET_ADMIN, and changes nothing), and no token carries a newline, a quote or a
semicolon (issue 10, item 7).

Inputs: network records as read back from a store (NetworkRecord.from_json, then the
isolation renderer's own check of names nft must quote), and CNI port mappings,
container addresses, ipMasq and ipMasqExclude as the CNI path takes them
(parse_port_mappings, addresses.*). Whatever the validators refuse is left out; what
they accept must render and parse.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cniharness import needs_root
from podnet import addresses, naming
from podnet.errors import InvalidConfig, PodnetError
from podnet.kernel import isolation
from podnet.kernel import nftsyntax as tok
from podnet.kernel.nat.parse import parse_port_mappings
from podnet.kernel.nat.render import CHAIN_SPECS, GUARD_SPEC, render_add
from podnet.lab.sandbox import Sandbox
from podnet.model.network import NAME_RE, NetworkRecord

pytestmark = pytest.mark.root

PROPERTY = settings(
    max_examples=int(os.environ.get("PODNET_NFT_SYNTAX_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)

# -- inputs

junk = st.text(max_size=20) | st.text(alphabet='abc09_.-"; \n\\*{}#@%$\'/:', max_size=20)
names = st.from_regex(NAME_RE, fullmatch=True).filter(lambda n: len(n) <= 64) | junk
bridges = (st.none() | st.from_regex(r"pnb[0-9a-f]{10}", fullmatch=True)
           | st.from_regex(r"[A-Za-z0-9_.@+=-]{1,15}", fullmatch=True) | junk)
records = st.fixed_dictionaries({
    "name": names, "id": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    "driver": st.sampled_from(["bridge", "bridge", "macvlan"]), "bridge": bridges, "internal": st.booleans(),
    "subnets": st.just([]),
})

v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
host_ips = st.none() | st.just("") | v4 | v6 | st.sampled_from(["0.0.0.0", "::", "127.0.0.1", "fe80::1%eth0",
                                                                 "fe80::1%x;flush ruleset"]) | junk
ports = st.integers(-2, 65540) | st.sampled_from([True, "80", None])
protocols = st.sampled_from(["tcp", "udp", "sctp", "TCP", "Udp", "icmp", "tcp;", ""]) | junk
key_case = st.sampled_from([str.lower, str.title, lambda k: k[0].upper() + k[1:], lambda k: k])
mappings = st.builds(
    lambda hp, cp, proto, hip, case: {case(k): v for k, v in (("hostPort", hp), ("containerPort", cp),
                                                              ("protocol", proto), ("hostIP", hip)) if v is not None},
    ports, ports, protocols, host_ips, key_case,
)
interfaces = (st.tuples(st.ip_addresses(v=4), st.integers(0, 32)) | st.tuples(st.ip_addresses(v=6), st.integers(0, 128))
              ).map(lambda a: f"{a[0]}/{a[1]}")
cidrs = interfaces.map(lambda text: str(ipaddress.ip_network(text, strict=False))) | st.just("fe80::%x;y/64") | junk


def accepted_records(raws: list[dict]) -> list[NetworkRecord]:
    """What NetworkRecord.from_json takes, one record per name (a store key)."""
    out: dict[str, NetworkRecord] = {}
    for raw in raws:
        try:
            record = NetworkRecord.from_json(raw)
        except PodnetError:
            continue
        out.setdefault(record.name, record)
    return list(out.values())


def accepted_mappings(raws: list[dict]) -> list[dict]:
    """Mappings parse_port_mappings takes, together (clashes refused as the CNI path does)."""
    out: list[dict] = []
    for raw in raws:
        try:
            parse_port_mappings([*out, raw])
        except InvalidConfig:
            continue
        out.append(raw)
    return out


def accepted(values: list[str], parse) -> list:
    out = []
    for value in values:
        try:
            out.append(parse(value))
        except InvalidConfig:
            continue
    return out


# -- the checks

QUOTED = re.compile(r'"([^"\n]*)"')
SPECS = [*CHAIN_SPECS.values(), GUARD_SPEC, isolation.CHAIN_SPEC]
STATEMENTS = ("add ", "delete ", "flush ", "table ", "chain ", "}", "type ", "iifname ", "oifname ")


def assert_single_tokens(script: str) -> None:
    """Every quoted token is safe text; outside quotes there is no quote, backslash or
    comment sign, and a semicolon only inside podnet's fixed chain specs."""
    for line in script.splitlines():
        for text in QUOTED.findall(line):
            assert tok.is_safe_text(text) and len(text.encode()) <= tok.COMMENT_MAX, line
        rest = QUOTED.sub("STRING", line)
        for spec in SPECS:
            rest = rest.replace(spec, "")
        assert not set(rest) & set('"\\#;\r'), line
        assert rest.strip().startswith(STATEMENTS) or (line.strip() in SPECS), line


@pytest.fixture(scope="module")
def scratch():
    needs_root()
    with Sandbox("pn-t-") as box:
        yield box.netns("nft")


def nft_check(ns: str, script: str) -> None:
    proc = subprocess.run(["nsenter", f"--net={Sandbox.path(ns)}", "nft", "-c", "-f", "-"], input=script,
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr + "\n" + script


@PROPERTY
@given(raws=st.lists(records, max_size=5), network=st.text(max_size=30), cid=st.text(min_size=1, max_size=20),
       ips=st.lists(interfaces, max_size=3), maps=st.lists(mappings, max_size=4), ip_masq=st.booleans(),
       exclude=st.lists(cidrs, max_size=2))
def test_rendered_scripts_parse_and_every_token_is_one_token(scratch, raws, network, cid, ips, maps, ip_masq, exclude):
    networks = accepted_records(raws)
    renderable = [n for n in networks if n.driver != "bridge" or n.bridge is None or tok.is_ifname(n.bridge)]
    if len(renderable) < len(networks):  # a bridge name the kernel takes but nft cannot quote: refused
        with pytest.raises(InvalidConfig, match="cannot be rendered"):
            isolation.render(networks)
    iso = isolation.render(renderable)
    nat = render_add(network, naming.attach_id(network, cid, "eth0"),
                     accepted(ips, lambda v: addresses.interface(v, "ip")), accepted_mappings(maps), ip_masq,
                     [str(n) for n in accepted(exclude, lambda v: addresses.network(v, "ipMasqExclude"))])
    for script in (iso, nat):
        assert_single_tokens(script)
    nft_check(scratch, iso + nat)

"""IPAM config parsing: host-local's fields, podnet's reserved/exclude, validation."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from podnet.errors import InvalidConfig
from podnet.ipam.config import IpamConfig, Route, parse_address, parse_ipam_config


def v4(subnet: str = "10.1.0.0/24", **extra: Any) -> dict[str, Any]:
    return {"type": "podnet-ipam", "ranges": [[{"subnet": subnet, **extra}]]}


def test_flat_subnet_defaults() -> None:
    conf = parse_ipam_config({"type": "host-local", "subnet": "10.1.0.0/24"})
    (rset,) = conf.range_sets
    (rng,) = rset.ranges
    assert rng.subnet == ip_network("10.1.0.0/24")
    assert rng.gateway == ip_address("10.1.0.1")
    assert (rng.start, rng.end) == (ip_address("10.1.0.1"), ip_address("10.1.0.254"))
    assert conf.type == "host-local"
    assert conf.routes == () and conf.reserved == () and conf.data_dir is None


def test_flat_fields_explicit() -> None:
    conf = parse_ipam_config(
        {
            "subnet": "192.168.5.0/24",
            "rangeStart": "192.168.5.100",
            "rangeEnd": "192.168.5.200",
            "gateway": "192.168.5.254",
            "dataDir": "/var/lib/x",
        }
    )
    rng = conf.range_sets[0].ranges[0]
    assert (str(rng.start), str(rng.end), str(rng.gateway)) == (
        "192.168.5.100",
        "192.168.5.200",
        "192.168.5.254",
    )
    assert conf.data_dir == "/var/lib/x"


def test_dual_stack_ranges() -> None:
    conf = parse_ipam_config({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]})
    assert [s.version for s in conf.range_sets] == [4, 6]
    v6 = conf.range_sets[1].ranges[0]
    assert v6.gateway == ip_address("fd00:1::1")
    assert v6.start == ip_address("fd00:1::1")
    assert v6.end == ip_address("fd00:1::ffff:ffff:ffff:ffff")  # v6 has no broadcast


def test_flat_subnet_comes_before_ranges() -> None:
    conf = parse_ipam_config({"subnet": "10.9.0.0/24", "ranges": [[{"subnet": "fd00::/64"}]]})
    assert [str(s.ranges[0].subnet) for s in conf.range_sets] == ["10.9.0.0/24", "fd00::/64"]


def test_set_with_several_ranges() -> None:
    conf = parse_ipam_config(
        {
            "ranges": [
                [
                    {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20"},
                    {"subnet": "10.2.0.0/24"},
                ]
            ]
        }
    )
    rset = conf.range_sets[0]
    assert len(rset.ranges) == 2
    assert ip_address("10.2.0.7") in rset
    assert ip_address("10.1.0.9") not in rset
    assert rset.find(ip_address("10.1.0.15")) is rset.ranges[0]
    assert conf.set_index(ip_address("10.2.0.9")) == 0
    assert conf.set_index(ip_address("10.3.0.9")) is None


def test_host_bits_in_subnet_are_masked() -> None:
    conf = parse_ipam_config(v4("10.1.0.77/24"))
    assert conf.range_sets[0].ranges[0].subnet == ip_network("10.1.0.0/24")


def test_smallest_v4_subnet() -> None:
    rng = parse_ipam_config(v4("10.1.0.0/30")).range_sets[0].ranges[0]
    assert (str(rng.start), str(rng.end), str(rng.gateway)) == ("10.1.0.1", "10.1.0.2", "10.1.0.1")


def test_routes() -> None:
    conf = parse_ipam_config(
        {
            **v4(),
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.0.254"}],
        }
    )
    assert conf.routes == (
        Route(ip_network("0.0.0.0/0")),
        Route(ip_network("10.9.0.0/16"), ip_address("10.1.0.254")),
    )
    assert [r.as_cni() for r in conf.routes] == [
        {"dst": "0.0.0.0/0"},
        {"dst": "10.9.0.0/16", "gw": "10.1.0.254"},
    ]


def test_reserved_and_exclude_merge() -> None:
    conf = parse_ipam_config(
        {**v4(), "reserved": ["10.1.0.5", "10.1.0.64/28"], "exclude": ["fd00::9"]}
    )
    assert conf.reserved == (
        ip_network("10.1.0.5/32"),
        ip_network("10.1.0.64/28"),
        ip_network("fd00::9/128"),
    )


def test_config_is_frozen() -> None:
    conf = parse_ipam_config(v4())
    assert isinstance(conf, IpamConfig)
    with pytest.raises(AttributeError):
        conf.routes = ()  # type: ignore[misc]


def test_parse_address_accepts_cidr_form() -> None:
    assert parse_address("10.1.0.5/24", "ip") == ip_address("10.1.0.5")
    assert parse_address("fd00::5", "ip") == ip_address("fd00::5")
    with pytest.raises(InvalidConfig, match="not a valid IP"):
        parse_address("10.1.0.300", "ip")


BAD: list[tuple[object, str]] = [
    ("not a dict", "must be an object"),
    ({"type": "podnet-ipam"}, "no address ranges"),
    ({"ranges": {"subnet": "10.1.0.0/24"}}, "ranges must be a list"),
    ({"ranges": [[]]}, r"ranges\[0\] must be a non-empty list"),
    ({"ranges": [{"subnet": "10.1.0.0/24"}]}, r"ranges\[0\] must be a non-empty list"),
    ({"ranges": [["10.1.0.0/24"]]}, r"ranges\[0\]\[0\] must be an object"),
    ({"ranges": [[{}]]}, r"ranges\[0\]\[0\]\.subnet must be a CIDR"),
    (v4("10.1.0.0/33"), "not a valid CIDR"),
    (v4("banana"), "not a valid CIDR"),
    (v4("10.1.0.0/31"), "too small"),
    (v4("10.1.0.1/32"), "too small"),
    (v4("fd00::/127"), "too small"),
    (v4("fd00::/128"), "too small"),
    (v4(rangeStart="10.2.0.5"), r"rangeStart 10\.2\.0\.5 is outside subnet"),
    (v4(rangeEnd="10.1.1.5"), "rangeEnd 10.1.1.5 is outside subnet"),
    (v4(rangeStart="10.1.0.50", rangeEnd="10.1.0.40"), "is after rangeEnd"),
    (v4(rangeStart="10.1.0.0"), "network or broadcast"),
    (v4(rangeEnd="10.1.0.255"), "network or broadcast"),
    (v4(gateway="10.2.0.1"), "gateway 10.2.0.1 is outside subnet"),
    (v4(gateway="10.1.0.0"), "network or broadcast"),
    (v4(gateway="fd00::1"), "outside subnet"),
    (v4(gateway=17), "must be an IP address string"),
    (
        {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]},
        "mixes IPv4 and IPv6",
    ),
    (
        {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]]},
        "overlaps",
    ),
    (
        {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.128/25"}]]},
        "overlaps",
    ),
    ({"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "10.1.0.0/24"}]]}, "overlaps"),
    ({**v4(), "routes": {"dst": "0.0.0.0/0"}}, "routes must be a list"),
    ({**v4(), "routes": [{"gw": "10.1.0.1"}]}, r"routes\[0\]\.dst must be a CIDR"),
    ({**v4(), "routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]}, "same family"),
    ({**v4(), "reserved": "10.1.0.5"}, "reserved must be a list"),
    ({**v4(), "exclude": ["nope"]}, r"exclude\[0\] 'nope' is not a valid CIDR"),
    ({**v4(), "dataDir": 5}, "dataDir must be a string"),
]


@pytest.mark.parametrize(("raw", "message"), BAD)
def test_invalid_configs(raw: object, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message) as info:
        parse_ipam_config(raw)  # type: ignore[arg-type]
    assert info.value.code == 7

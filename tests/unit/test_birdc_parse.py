"""The parsers of BIRD's control-socket replies, on output captured from a real BIRD
2.0.12 (configs from bgp/render.py, sessions between namespaces; lines exactly as the
socket gave them, trailing spaces included)."""

from __future__ import annotations

import pytest

from podnet.bgp.birdc import (
    BirdConfigError,
    BirdError,
    Line,
    check_reply,
    line_ends_reply,
    parse_lines,
    parse_protocol_detail,
    parse_protocols,
    parse_route_count,
)

PROTOCOLS_STARTING = (  # show protocols
    '2002-Name       Proto      Table      State  Since         Info',
    '1002-podnet_device Device     ---        up     2026-12-05 03:01:06  ',
    ' podnet_kernel Kernel     master4    up     2026-12-05 03:01:06  ',
    ' podnet_static Static     master4    up     2026-12-05 03:01:06  ',
    ' pn_b       BGP        ---        start  2026-12-05 03:01:06  Active        ',
    ' pn_gone    BGP        ---        start  2026-12-05 03:01:06  Active        ',
    '0000 ',
)
PROTOCOLS_UP = (  # show protocols
    '2002-Name       Proto      Table      State  Since         Info',
    '1002-podnet_device Device     ---        up     2026-12-05 03:01:06  ',
    ' podnet_kernel Kernel     master4    up     2026-12-05 03:01:06  ',
    ' podnet_static Static     master4    up     2026-12-05 03:01:06  ',
    ' pn_b       BGP        ---        up     2026-12-05 03:01:10  Established   ',
    ' pn_gone    BGP        ---        start  2026-12-05 03:01:06  Connect       ',
    '0000 ',
)
DETAIL_ESTABLISHED = (  # show protocols all pn_b
    '2002-Name       Proto      Table      State  Since         Info',
    '1002-pn_b       BGP        ---        up     2026-12-05 03:01:10  Established   ',
    '1006-  BGP state:          Established',
    '     Neighbor address: 10.0.0.2',
    '     Neighbor AS:      65000',
    '     Local AS:         65000',
    '     Neighbor ID:      10.0.0.2',
    '     Local capabilities',
    '       Multiprotocol',
    '         AF announced: ipv4',
    '       Route refresh',
    '       Graceful restart',
    '         Restart time: 120',
    '         AF supported: ipv4',
    '         AF preserved:',
    '       4-octet AS numbers',
    '       Enhanced refresh',
    '       Long-lived graceful restart',
    '     Neighbor capabilities',
    '       Multiprotocol',
    '         AF announced: ipv4',
    '       Route refresh',
    '       Graceful restart',
    '         Restart time: 120',
    '         AF supported: ipv4',
    '         AF preserved:',
    '       4-octet AS numbers',
    '       Enhanced refresh',
    '       Long-lived graceful restart',
    '     Session:          internal AS4',
    '     Source address:   10.0.0.1',
    '     Hold timer:       214.667/240',
    '     Keepalive timer:  66.322/80',
    '   Channel ipv4',
    '     State:          UP',
    '     Table:          master4',
    '     Preference:     100',
    '     Input filter:   podnet_import',
    '     Output filter:  podnet_export_originated',
    '     Routes:         1 imported, 1 exported, 1 preferred',
    '     Route change stats:     received   rejected   filtered    ignored   accepted',
    '       Import updates:              2          0          1          0          1',
    '       Import withdraws:            0          0        ---          0          0',
    '       Export updates:              2          1          0        ---          1',
    '       Export withdraws:            0        ---        ---        ---          0',
    '     BGP Next hop:   10.0.0.1',
    ' ',
    '0000 ',
)
DETAIL_KERNEL = (  # show protocols all podnet_kernel
    '2002-Name       Proto      Table      State  Since         Info',
    '1002-podnet_kernel Kernel     master4    up     2026-12-05 03:01:06  ',
    '1006-  Channel ipv4',
    '     State:          UP',
    '     Table:          master4',
    '     Preference:     10',
    '     Input filter:   REJECT',
    '     Output filter:  podnet_kernel_export',
    '     Routes:         0 imported, 1 exported, 0 preferred',
    '     Route change stats:     received   rejected   filtered    ignored   accepted',
    '       Import updates:              0          0          0          0          0',
    '       Import withdraws:            0          0        ---          0          0',
    '       Export updates:              3          0          2        ---          1',
    '       Export withdraws:            0        ---        ---        ---          0',
    ' ',
    '0000 ',
)
ROUTE_COUNT = (  # show route count
    '1007-2 of 2 routes for 2 networks in table master4',
    ' 0 of 0 routes for 0 networks in table master6',
    '0014 Total: 2 of 2 routes for 2 networks in 2 tables',
)
STATUS = (  # show status
    '1000-BIRD 2.0.12',
    '1011-Router ID is 10.0.0.1',
    ' Hostname is vm',
    ' Current server time is 2026-12-05 03:01:10.662',
    ' Last reboot on 2026-12-05 03:01:06.315',
    ' Last reconfiguration on 2026-12-05 03:01:06.315',
    '0013 Daemon is up and running',
)
DETAIL_CONNECT = (  # show protocols all pn_gone
    '2002-Name       Proto      Table      State  Since         Info',
    '1002-pn_gone    BGP        ---        start  2026-12-05 03:01:06  Connect       ',
    '1006-  BGP state:          Connect',
    '     Neighbor address: 10.0.0.9',
    '     Neighbor AS:      65009',
    '     Local AS:         65000',
    '   Channel ipv4',
    '     State:          DOWN',
    '     Table:          master4',
    '     Preference:     100',
    '     Input filter:   podnet_import',
    '     Output filter:  podnet_export_all',
    ' ',
    '0000 ',
)
UNKNOWN_PROTOCOL = (  # show protocols all nosuch
    '9001 syntax error, unexpected CF_SYM_UNDEFINED, expecting END or CF_SYM_KNOWN or TEXT',
)
CONFIGURE_REFUSED = (  # configure
    '0002-Reading configuration from /tmp/birdx/a.conf',
    "8002 /tmp/birdx/a.conf:71:1 syntax error, unexpected '}', expecting PORT or ';' or AS",
)
DETAIL_PEER_RESTARTING = (  # show protocols all pn_b
    '2002-Name       Proto      Table      State  Since         Info',
    '1002-pn_b       BGP        ---        start  2026-12-05 03:01:10  Active        Socket: Connection closed',
    '1006-  BGP state:          Active',
    '     Neighbor address: 10.0.0.2',
    '     Neighbor AS:      65000',
    '     Local AS:         65000',
    '     Neighbor graceful restart active',
    '     Connect delay:    3.713/5',
    '     Restart timer:    119.699/-',
    '     Last error:       Socket: Connection closed',
    '   Channel ipv4',
    '     State:          START',
    '     Table:          master4',
    '     Preference:     100',
    '     Input filter:   podnet_import',
    '     Output filter:  podnet_export_originated',
    '     Routes:         1 imported, 0 exported, 1 preferred',
    '     Route change stats:     received   rejected   filtered    ignored   accepted',
    '       Import updates:              2          0          1          0          1',
    '       Import withdraws:            0          0        ---          0          0',
    '       Export updates:              2          1          0        ---          1',
    '       Export withdraws:            0        ---        ---        ---          0',
    '     Neighbor GR:    Regular',
    ' ',
    '0000 ',
)
PROTOCOLS_PEER_RESTARTING = (  # show protocols
    '2002-Name       Proto      Table      State  Since         Info',
    '1002-podnet_device Device     ---        up     2026-12-05 03:01:06  ',
    ' podnet_kernel Kernel     master4    up     2026-12-05 03:01:06  ',
    ' podnet_static Static     master4    up     2026-12-05 03:01:06  ',
    ' pn_b       BGP        ---        start  2026-12-05 03:01:10  Active        Socket: Connection closed',
    ' pn_gone    BGP        ---        start  2026-12-05 03:01:06  Connect       ',
    '0000 ',
)
PROTOCOLS_DEFAULT_TIMEFORMAT = (  # show protocols, BIRD's default timeformat
    '2002-Name       Proto      Table      State  Since         Info',
    '1002-device1    Device     ---        up     03:01:21.984  ',
    ' static1    Static     master4    up     03:01:21.984  ',
    ' peer1      BGP        ---        down   03:01:21.986  Error: Invalid next hop',
    '0000 ',
)
ROUTE_COUNT_ONE_TABLE = (  # show route count table master4, BIRD's default timeformat
    '1007-1 of 1 routes for 1 networks in table master4',
    '0000 ',
)


def reply(raw: tuple[str, ...]) -> list[Line]:
    assert line_ends_reply(raw[-1]) and not any(line_ends_reply(line) for line in raw[:-1])
    return check_reply(parse_lines(raw))


def test_continuation_lines_carry_the_code_of_the_line_before():
    lines = parse_lines(PROTOCOLS_UP)
    assert [line.code for line in lines] == [2002, 1002, 1002, 1002, 1002, 1002, 0]
    assert lines[2].text.startswith("podnet_kernel ")


def test_spontaneous_lines_are_dropped_and_garbage_refused():
    assert parse_lines(["+Reconfigured", "0003 Reconfigured"]) == [Line(3, "Reconfigured")]
    with pytest.raises(BirdError, match="not a BIRD reply line"):
        parse_lines(["hello"])
    with pytest.raises(BirdError, match="continuation"):
        parse_lines([" orphan", "0000 "])


def test_protocols_rows():
    rows = parse_protocols(reply(PROTOCOLS_UP))
    assert [r["name"] for r in rows] == ["podnet_device", "podnet_kernel", "podnet_static", "pn_b", "pn_gone"]
    assert rows[3] == {
        "name": "pn_b", "proto": "BGP", "table": "---", "state": "up",
        "since": "2026-12-05 03:01:10", "info": "Established",
    }
    assert rows[4]["info"] == "Connect" and rows[4]["state"] == "start"
    assert rows[0]["info"] == "" and rows[1]["table"] == "master4"


def test_protocols_info_keeps_the_last_error():
    row = parse_protocols(reply(PROTOCOLS_PEER_RESTARTING))[3]
    assert row["state"] == "start" and row["info"] == "Active        Socket: Connection closed"


def test_protocols_with_birds_default_timeformat():
    rows = parse_protocols(reply(PROTOCOLS_DEFAULT_TIMEFORMAT))
    assert rows[2] == {
        "name": "peer1", "proto": "BGP", "table": "---", "state": "down",
        "since": "03:01:21.986", "info": "Error: Invalid next hop",
    }


def test_detail_of_an_established_session():
    d = parse_protocol_detail(reply(DETAIL_ESTABLISHED))
    assert d["name"] == "pn_b" and d["state"] == "up" and d["info"] == "Established"
    assert d["bgp_state"] == "Established"
    assert d["neighbor_address"] == "10.0.0.2" and d["neighbor_as"] == 65000 and d["local_as"] == 65000
    assert d["neighbor_id"] == "10.0.0.2" and d["source_address"] == "10.0.0.1"
    assert d["session"] == "internal AS4"
    assert d["routes"] == {"imported": 1, "exported": 1, "preferred": 1}
    ipv4 = d["channels"]["ipv4"]
    assert ipv4["state"] == "UP" and ipv4["input_filter"] == "podnet_import"
    assert ipv4["output_filter"] == "podnet_export_originated"
    assert ipv4["bgp_next_hop"] == "10.0.0.1"
    assert ipv4["route_change_stats"]["import_updates"] == {
        "received": 2, "rejected": 0, "filtered": 1, "ignored": 0, "accepted": 1,
    }
    assert ipv4["route_change_stats"]["export_withdraws"]["filtered"] is None  # BIRD's "---"
    # The capabilities' nested "Restart time: 120" lines do not leak into the protocol's keys.
    assert "restart_time" not in d and "af_announced" not in d
    assert "neighbor_graceful_restart_active" not in d


def test_detail_while_the_peer_restarts_gracefully():
    d = parse_protocol_detail(reply(DETAIL_PEER_RESTARTING))
    assert d["bgp_state"] == "Active" and d["last_error"] == "Socket: Connection closed"
    assert d["neighbor_graceful_restart_active"] is True
    assert d["restart_timer"] == "119.699/-"
    assert d["routes"]["imported"] == 1  # kept, stale
    assert d["channels"]["ipv4"]["neighbor_gr"] == "Regular"


def test_detail_of_a_session_never_up_has_no_route_counts():
    d = parse_protocol_detail(reply(DETAIL_CONNECT))
    assert d["bgp_state"] == "Connect" and d["neighbor_as"] == 65009
    assert d["routes"] == {} and d["channels"]["ipv4"]["state"] == "DOWN"


def test_detail_of_the_kernel_protocol():
    d = parse_protocol_detail(reply(DETAIL_KERNEL))
    assert d["proto"] == "Kernel" and "bgp_state" not in d
    assert d["routes"] == {"imported": 0, "exported": 1, "preferred": 0}
    assert d["channels"]["ipv4"]["input_filter"] == "REJECT"


def test_detail_refuses_a_reply_that_is_not_one_protocol():
    with pytest.raises(BirdError, match="one protocol"):
        parse_protocol_detail(reply(PROTOCOLS_UP))


def test_detail_refuses_numbers_that_are_not_numbers():
    bad = tuple(line.replace("Neighbor AS:      65000", "Neighbor AS:      lots") for line in DETAIL_ESTABLISHED)
    with pytest.raises(BirdError, match="neighbor_as"):
        parse_protocol_detail(reply(bad))
    bad = tuple(line.replace("1 imported,", "x imported,") for line in DETAIL_ESTABLISHED)
    with pytest.raises(BirdError, match="routes imported"):
        parse_protocol_detail(reply(bad))


def test_route_count():
    assert parse_route_count(reply(ROUTE_COUNT)) == {
        "tables": {"master4": {"routes": 2, "networks": 2}, "master6": {"routes": 0, "networks": 0}},
        "routes": 2, "networks": 2,
    }
    one = parse_route_count(reply(ROUTE_COUNT_ONE_TABLE))  # no "Total:" line: summed
    assert one == {"tables": {"master4": {"routes": 1, "networks": 1}}, "routes": 1, "networks": 1}
    with pytest.raises(BirdError, match="route count"):
        parse_route_count(reply(STATUS))


def test_error_codes_raise_with_birds_message():
    with pytest.raises(BirdConfigError, match="syntax error, unexpected '}'") as info:
        reply(CONFIGURE_REFUSED)
    assert info.value.bird_code == 8002
    with pytest.raises(BirdError, match="CF_SYM_UNDEFINED") as info:
        reply(UNKNOWN_PROTOCOL)
    assert info.value.bird_code == 9001 and not isinstance(info.value, BirdConfigError)
    assert check_reply(parse_lines(STATUS))[-1] == Line(13, "Daemon is up and running")

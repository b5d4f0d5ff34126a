"""The sidecar access log format and its parser, on lines a real HAProxy 2.6 wrote.

The lines below were captured from Debian's /usr/sbin/haproxy 2.6.12 running
access_log.LOG_FORMAT with HTTP_RULES in a TCP-mode frontend that switches to HTTP (as
the sidecar's) and a TLS frontend with a client certificate (tests/ns/test_mesh_log_sink.py
checks the same format live).
"""

from __future__ import annotations

import pytest

from podnet.mesh.access_log import LOG_FORMAT, TAG, parse

OK_ROUTED = 'podnet-mesh/1 1796480752.638 outbound be s1 200 0 879 879 116 79 0 -- "default/client-1" "default/web:80" "default/web-split#0" "" "GET" "req-1" "/api/items"\n'
RETRIED_500 = 'podnet-mesh/1 1796480752.639 outbound be s1 500 0 1241 1281 135 61 2 -- "default/client-1" "default/web:80" "" "" "GET" "req-2" "/fail"\n'
DENIED_403 = 'podnet-mesh/1 1796480752.640 outbound outbound <NOSRV> 403 -1 - 0 84 44 0 LR "default/client-1" "default/web:80" "" "" "GET" "53086d22-b70e-4090-a722-1003526c4b7a" "/deny"\n'
LIMITED_429 = 'podnet-mesh/1 1796480752.643 outbound outbound <NOSRV> 429 -1 - 0 225 62 0 PR "default/client-1" "default/web:80" "" "" "GET" "req-4" "/limit"\n'
ODD_CHARS = 'podnet-mesh/1 1796480752.643 outbound be s1 200 0 332 347 116 99 0 -- "default/client-1" "default/web:80" "" "spiffe \\"cn\\" | x" "GET" "id \\"with\\" | and \\\\ \\]" "/a|b\\\\c\\]d"\n'
LONG_PATH = 'podnet-mesh/1 1796480752.644 outbound be s1 200 0 551 623 116 657 0 -- "default/client-1" "default/web:80" "" "" "GET" "req-6" "/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"\n'
TCP_PASSTHROUGH = 'podnet-mesh/1 1796480752.645 outbound passthrough original -1 0 - - 360 16 0 -- "" "" "" "" "" "" ""\n'
RFC3164_OK = '<134>Dec  5 14:26:52 localhost haproxy[20281]: podnet-mesh/1 1796480812.322 outbound be s1 200 0 2565 2634 116 79 0 -- "default/client-1" "default/web:80" "default/web-split#0" "" "GET" "req-1" "/api/items"\n'
RFC3164_CUT = '<134>Dec  5 14:26:52 localhost haproxy[20281]: podnet-mesh/1 1796480812.331 outbound be s1 200 0 1416 1446 116 657 0 -- "default/client-1" "default/web:80" "" "" "GET" "req-6" "/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n'
INBOUND_MTLS = 'podnet-mesh/1 1796480833.998 in_tls~ be s1 200 0 673 673 116 113 0 -- "default/web-1" "default/web:80" "" "client.default" "GET" "req-tls" "/orders/7"\n'


def test_a_routed_request_gives_every_field() -> None:
    r = parse(OK_ROUTED)
    assert r is not None
    assert (r.direction, r.tls, r.backend, r.server, r.status) == ("outbound", False, "be", "s1", 200)
    assert (r.pod, r.service, r.route, r.peer) == ("default/client-1", "default/web:80", "default/web-split#0", "")
    assert (r.method, r.request_id, r.path) == ("GET", "req-1", "/api/items")  # the query is never logged
    assert (r.connect_ms, r.response_us, r.total_us, r.bytes_out, r.bytes_in) == (0, 879, 879, 116, 79)
    assert r.time == pytest.approx(1796480752.638)
    assert r.http and not r.failed and r.code_class == "2xx" and not r.truncated


def test_retries_and_a_5xx_are_an_error() -> None:
    r = parse(RETRIED_500)
    assert r is not None
    assert (r.status, r.retries, r.redispatched, r.code_class, r.failed) == (500, 2, False, "5xx", True)


@pytest.mark.parametrize(("line", "status", "termination"), [(DENIED_403, 403, "LR"), (LIMITED_429, 429, "PR")])
def test_the_sidecars_own_refusals_have_no_server_times(line: str, status: int, termination: str) -> None:
    r = parse(line)
    assert r is not None
    assert (r.status, r.termination, r.server) == (status, termination, "<NOSRV>")
    assert (r.connect_ms, r.response_us, r.total_us) == (None, None, 0)
    assert r.request_id and not r.failed  # refused by policy, not broken


def test_quotes_bars_and_backslashes_in_fields_do_not_shift_them() -> None:
    r = parse(ODD_CHARS)
    assert r is not None
    assert r.peer == 'spiffe "cn" | x'
    assert r.request_id == 'id "with" | and \\ ]'
    assert r.path == "/a|b\\c]d"
    assert (r.method, r.status, r.total_us) == ("GET", 200, 347)


def test_a_tcp_passthrough_stream_is_not_an_http_request() -> None:
    r = parse(TCP_PASSTHROUGH)
    assert r is not None
    assert not r.http and r.status == -1 and r.total_us is None and r.code_class == "none"


def test_mtls_inbound_names_the_peer_and_the_direction() -> None:
    r = parse(INBOUND_MTLS)
    assert r is not None
    assert (r.direction, r.tls, r.peer, r.pod, r.path) == ("inbound", True, "client.default", "default/web-1",
                                                           "/orders/7")


def test_an_rfc3164_header_is_skipped() -> None:
    r = parse(RFC3164_OK)
    assert r is not None
    assert (r.route, r.request_id, r.total_us, r.status) == ("default/web-split#0", "req-1", 2634, 200)


def test_a_line_cut_in_its_path_keeps_the_rest() -> None:
    r = parse(RFC3164_CUT)
    assert r is not None and r.truncated
    assert r.request_id == "req-6" and r.path.startswith("/xxxx") and len(r.path) < 600
    whole = parse(LONG_PATH)
    assert whole is not None and not whole.truncated and whole.path.startswith(r.path)


def test_a_line_cut_before_its_path_is_refused() -> None:
    cut_in_id = OK_ROUTED[:OK_ROUTED.index('"req-1"') + 3]
    assert parse(cut_in_id) is None
    assert parse(OK_ROUTED[:40]) is None


@pytest.mark.parametrize("line", ["", "haproxy[1]: Proxy outbound started.", TAG,
                                  OK_ROUTED.replace(" 200 ", " OK "), OK_ROUTED.replace(" 116 ", " - ")])
def test_other_lines_are_not_records(line: str) -> None:
    assert parse(line) is None


def test_redispatch_and_server_side_termination() -> None:
    redispatched = parse(RETRIED_500.replace(" 2 -- ", " +1 SD ").replace(" 500 ", " 200 "))
    assert redispatched is not None
    assert (redispatched.retries, redispatched.redispatched) == (1, True)
    assert redispatched.failed  # 200 sent, then the server broke the body
    client_gone = parse(OK_ROUTED.replace(" -- ", " CD "))
    assert client_gone is not None and not client_gone.failed


def test_haproxy_escapes_and_absolute_uris_give_the_path() -> None:
    escaped = parse(OK_ROUTED.replace('"/api/items"', '"/a#7Fb#23"'))
    assert escaped is not None and escaped.path == "/a\x7fb#"
    absolute = parse(OK_ROUTED.replace('"/api/items"', '"http://web.default:80/v1/x"'))
    assert absolute is not None and absolute.path == "/v1/x"


def test_every_free_text_field_is_quoted_and_escaped() -> None:
    for item in ("var(txn.pod)", "var(txn.service)", "var(txn.route)", "var(txn.peer)", "capture.req.method", "ID"):
        assert "%{+Q,+E}" + ("[" + item + "]" if "(" in item or "." in item else item) in LOG_FORMAT
    assert LOG_FORMAT.endswith("%{+Q,+E}[capture.req.uri,field(1,?)]")  # the path last: a cut loses only it

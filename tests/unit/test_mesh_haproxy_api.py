"""The HAProxy runtime API client against replies captured from Debian's HAProxy 2.6.12.

The client's port is one function (`send(text) -> reply`); these tests pass a script of
captured replies and check what was sent and what each reply means.
"""

from __future__ import annotations

import pytest

from podnet.mesh.haproxy_api import (
    HaproxyApi,
    HAProxyError,
    HAProxyUnreachable,
    parse_key_values,
    parse_servers_state,
    parse_stat_csv,
)

CRT = "/run/podnet/mesh/web/crt.pem"
BUNDLE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n"

SERVERS_STATE = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health "
    "srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord "
    "srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n"
    "3 be 1 s1 127.0.0.1 2 8 5 10 0 1 0 2 0 0 0 0 - 9 - 0 0 - - 0\n"
    "3 be 2 s2 127.0.0.1 0 1 3 3 0 1 0 0 0 0 0 0 - 10 - 0 0 - - 0\n\n"
)
STAT_HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,"
    "lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,"
    "hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,\n"
)
STAT = STAT_HEADER + (
    "mtls,FRONTEND,,,0,0,9986,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,12,0,0,1,0,\n"
    "be,s1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DRAIN,5,1,0,0,0,3,0,,1,3,1,,0,,2,0,,0,,,,0,0,0,0,0,0,\n"
)
SSL_CERT = (
    f"Filename: {CRT}\nStatus: Used\nSerial: 1F014605786E48AAEC19732E844EF17A5C4BF363\n"
    "notBefore: Dec  5 14:21:47 2026 GMT\nnotAfter: Dec  5 15:22:47 2026 GMT\n"
    "Subject Alternative Name: \nAlgorithm: EC256\nSubject: /CN=web.shop\n"
    "Issuer: /O=podnet/CN=podnet mesh CA\nOCSP Response Key: \n\n"
)


class Script:
    """A fake `send`: answers each command with the next captured reply, recording it."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.sent: list[str] = []

    def __call__(self, text: str) -> str:
        self.sent.append(text)
        return self.replies.pop(0)


def api(*replies: str) -> tuple[HaproxyApi, Script]:
    script = Script(*replies)
    return HaproxyApi("/run/web.sock", send=script), script


def test_update_cert_sends_payload_then_commits() -> None:
    client, script = api(f"Transaction created for certificate {CRT}!\n\n",
                         f"Committing {CRT}.\nSuccess!\n\n")
    client.update_cert(CRT, BUNDLE)
    assert script.sent == [f"set ssl cert {CRT} <<\n{BUNDLE}\n", f"commit ssl cert {CRT}\n"]


def test_update_cert_refused_set_names_the_reply() -> None:
    client, script = api(f"Can't replace a certificate which is not referenced by the configuration!\nCan't update {CRT}!\n\n")
    with pytest.raises(HAProxyError, match=r"HAProxy runtime API at /run/web.sock: 'set ssl cert .*' refused: Can't replace a certificate"):
        client.update_cert(CRT, BUNDLE)
    assert len(script.sent) == 1


def test_update_cert_failed_commit_is_aborted() -> None:
    client, script = api(f"Transaction created for certificate {CRT}!\n\n",
                         f"inconsistencies between private key and certificate loaded '{CRT}'.\nCan't commit {CRT}!\n\n",
                         f"Transaction aborted for certificate '{CRT}'!\n\n")
    with pytest.raises(HAProxyError, match="inconsistencies between private key"):
        client.update_cert(CRT, BUNDLE)
    assert script.sent[-1] == f"abort ssl cert {CRT}\n"


@pytest.mark.parametrize("bundle", ["", BUNDLE.replace("-----\n-----BEGIN PRIVATE", "-----\n\n-----BEGIN PRIVATE")])
def test_update_cert_refuses_a_bundle_the_payload_cannot_carry(bundle) -> None:
    client, script = api()
    with pytest.raises(HAProxyError, match="empty or has a blank line"):
        client.update_cert(CRT, bundle)
    assert script.sent == []


def test_show_ssl_cert() -> None:
    client, _ = api(SSL_CERT)
    info = client.show_ssl_cert(CRT)
    assert info["Serial"] == "1F014605786E48AAEC19732E844EF17A5C4BF363"
    assert info["Subject"] == "/CN=web.shop"
    assert info["Subject Alternative Name"] == ""
    assert parse_key_values("no colon here\nA: b") == {"A": "b"}


def test_server_weight_and_state() -> None:
    client, script = api("\n", "\n")
    client.set_server_weight("be", "s1", 5)
    client.set_server_state("be", "s1", "drain")
    assert script.sent == ["set server be/s1 weight 5\n", "set server be/s1 state drain\n"]
    client, _ = api("No such server.\n\n")
    with pytest.raises(HAProxyError, match="refused: No such server."):
        client.set_server_weight("be", "nosuch", 5)


@pytest.mark.parametrize(("call", "problem"), [
    (lambda c: c.set_server_weight("be", "s1", 257), "is not 0-256"),
    (lambda c: c.set_server_weight("be", "s1", True), "is not 0-256"),
    (lambda c: c.set_server_state("be", "s1", "up"), "is not one of ready, drain, maint"),
    (lambda c: c.set_server_state("be", "s 1", "ready"), "not one word"),
    (lambda c: c.set_server_state("be;shutdown", "s1", "ready"), "not one word"),
    (lambda c: c.command("show stat\nshow info"), "one non-empty command line"),
])
def test_bad_arguments_never_reach_haproxy(call, problem) -> None:
    client, script = api()
    with pytest.raises(HAProxyError, match=problem):
        call(client)
    assert script.sent == []


def test_add_server_then_ready_and_del_server_after_maint() -> None:
    client, script = api("New server registered.\n\n", "\n", "\n", "Server deleted.\n")
    client.add_server("be", "s2", "10.0.0.7", 8080, ("weight", "3"))
    client.del_server("be", "s2")
    assert script.sent == ["add server be/s2 10.0.0.7:8080 weight 3\n", "set server be/s2 state ready\n",
                           "set server be/s2 state maint\n", "del server be/s2\n"]


def test_add_and_del_server_refused() -> None:
    client, _ = api("Already exists a server with the same name in backend.\n\n")
    with pytest.raises(HAProxyError, match="Already exists"):
        client.add_server("be", "s1", "10.0.0.7", 8080)
    client, _ = api("\n", "Server still has connections attached to it, cannot remove it.\n")
    with pytest.raises(HAProxyError, match="still has connections"):
        client.del_server("be", "s1")


def test_servers_state() -> None:
    rows = parse_servers_state(SERVERS_STATE)
    assert [(r["srv_name"], r["srv_admin_state"], r["srv_uweight"], r["srv_port"]) for r in rows] == [
        ("s1", "8", "5", "9"), ("s2", "1", "3", "10")]
    assert parse_servers_state("1\n") == []
    client, script = api(SERVERS_STATE)
    assert len(client.show_servers_state("be")) == 2
    assert script.sent == ["show servers state be\n"]


@pytest.mark.parametrize("reply", ["Can't find backend.\n", "1\nno header\n",
                                   SERVERS_STATE.replace(" - - 0\n\n", " -\n")])
def test_servers_state_that_is_not(reply) -> None:
    with pytest.raises(HAProxyError):
        parse_servers_state(reply)


def test_stat_csv() -> None:
    rows = parse_stat_csv(STAT)
    assert [(r["pxname"], r["svname"], r["status"], r["hrsp_2xx"]) for r in rows] == [
        ("mtls", "FRONTEND", "OPEN", "12"), ("be", "s1", "DRAIN", "0")]
    assert "" not in rows[0]  # the trailing comma makes no column
    with pytest.raises(HAProxyError, match="not CSV"):
        parse_stat_csv("Unknown command\n")
    with pytest.raises(HAProxyError, match="row has 3 fields"):
        parse_stat_csv(STAT_HEADER + "a,b,c\n")


def test_unreachable_socket_is_named(tmp_path) -> None:
    path = str(tmp_path / "none.sock")
    with pytest.raises(HAProxyUnreachable, match=f"HAProxy runtime API at {path}"):
        HaproxyApi(path).command("show info")

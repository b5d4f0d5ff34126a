"""The sidecar's HAProxy configuration (mesh/render.py) and the interception table
(mesh/intercept.py): what each part of a spec becomes, weights apart from structure,
and every rendered text accepted by the real `haproxy -c` when it is installed."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from podnet.mesh.intercept import intercept_script
from podnet.mesh.model import (
    MTLS_STRICT,
    PATH_EXACT,
    CircuitBreaker,
    Fault,
    HeaderMatch,
    MeshTrafficPolicy,
    OutlierDetection,
    Retries,
    RouteMatch,
)
from podnet.mesh.render import render, structure, weights
from podnet.mesh.spec import Authz, Backend, InboundPort, OutboundService, Rule, Server, SidecarSpec

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


def spec(tmp_path: Path, mtls: str = "PERMISSIVE", v2_weight: int = 28) -> SidecarSpec:
    policy = MeshTrafficPolicy("shop", "web", "web", retries=Retries(3, 0.5, ("5xx", "connect-failure"), 20),
                               circuit_breaker=CircuitBreaker(10, 5), outlier=OutlierDetection(3, 1.0, 10.0))
    split = Backend("be_split", (Server("s_10_244_0_5_80", "10.244.0.5", 80, 256, True, "web.shop"),
                                 Server("s_10_244_1_5_80", "10.244.1.5", 80, v2_weight, True, "web.shop")), policy,
                    timeout=1.5)
    plain = Backend("be_default", (Server("s_10_244_1_9_80", "10.244.1.9", 80, 1),))
    web = OutboundService("shop/web:80", "10.96.0.20", 80, (
        Rule((RouteMatch(PATH_EXACT, "/exact"), RouteMatch(headers=(HeaderMatch("x-canary", "yes"),), method="GET")),
             "be_split", "shop/web-split#0"),
        Rule((RouteMatch("PathPrefix", "/api/"),), "be_split", "shop/web-split#1"),
        Rule((RouteMatch(),), "be_default", "shop/web:80 default")),
        fault=Fault(50, 0.2, 10, 503))
    for name in ("cert.pem", "ca.pem"):
        (tmp_path / name).write_text("")
    return SidecarSpec("shop/client", "client.shop", mtls,
                       (InboundPort(80, ("shop/web", "shop/web-v1"), (("shop/web-v1", 5),),
                                    (Authz("shop/only-client", "shop/web", ("client.shop",)),)), InboundPort(8080)),
                       (web,), (split, plain), str(tmp_path / "cert.pem"), str(tmp_path / "ca.pem"),
                       str(tmp_path / "haproxy.sock"), str(tmp_path / "log.sock"), str(tmp_path / "delay.lua"),
                       str(tmp_path / "budget.map"))


def test_routes_matches_backends_and_policies_become_haproxy_lines(tmp_path: Path) -> None:
    text = render(spec(tmp_path))
    assert "tcp-request content switch-mode http if { var(txn.dstkey) -m str 10.96.0.20:80 }" in text
    assert "path -m str /exact" in text and "req.hdr(x-canary) -m str \"yes\"" in text and "method GET" in text
    assert "path -m str /api" in text and "path -m beg /api/" in text  # a prefix by path element
    assert "return status 503" in text and "lua.podnet_delay 200" in text
    assert "retries 3" in text and "retry-on 500 502 503 504 conn-failure" in text
    assert "timeout server 500ms" in text  # the per-try timeout, shorter than the request's 1.5 s
    assert f"disable-l7-retry if {{ str(be_split),map({tmp_path}/budget.map) -m str 1 }}" in text
    assert "disable-l7-retry" not in text.split("\nbackend be_default\n")[1]  # no budget there
    assert "maxconn 10 maxqueue 5" in text and "error-limit 3 on-error mark-down" in text
    assert "verifyhost web.shop" in text and "server s_10_244_1_9_80 10.244.1.9:80 weight 1\n" in text
    assert "deny_status 429 if { dst_port 80 } { var(txn.service) -m str shop/web-v1 }" in text
    assert "sc_http_req_rate(0,rl_80) gt 5" in text and 'set-header x-podnet-service "shop/web"' in text
    assert "denied by MeshAuthorizationPolicy shop/only-client" in text
    assert "server original 0.0.0.0:0" in text and "uid 1337" in text


def test_strict_refuses_plain_text_and_permissive_takes_it(tmp_path: Path) -> None:
    strict = render(spec(tmp_path, MTLS_STRICT))
    assert f"frontend in_tls\n  bind :15006 ssl crt {tmp_path}" in strict and "verify required\n" in strict
    assert "frontend inbound" not in strict and "abns@" not in strict  # no sniffing, no local hop
    assert strict.count("denied by MeshAuthorizationPolicy") == 1  # the rules once, on the TLS frontend
    permissive = render(spec(tmp_path))
    assert "frontend inbound\n  bind :15006\n  mode tcp" in permissive and "verify optional" in permissive
    assert "verify required\n" not in permissive.split("frontend in_tls")[1].split("backend app")[0]


def test_a_weight_change_keeps_the_structure(tmp_path: Path) -> None:
    a, b = spec(tmp_path), spec(tmp_path, v2_weight=256)
    assert render(a) != render(b) and structure(render(a)) == structure(render(b))
    assert weights(b)[("be_split", "s_10_244_1_5_80")] == 256
    c = dataclasses.replace(b, inbound=(InboundPort(80),))  # the authorization and rate limit gone
    assert structure(render(c)) != structure(render(b))


def test_interception_skips_the_sidecar_and_loopback() -> None:
    script = intercept_script([80, 8080, 80])
    assert "tcp dport { 80, 8080 } redirect to :15006" in script
    assert "meta skuid 1337 return" in script and 'oifname "lo" return' in script
    assert script.startswith("table inet podnet-mesh\ndelete table inet podnet-mesh\n")
    assert "redirect to :15006" not in intercept_script([])
    # the sidecar is IPv4 only: IPv6 to the app's ports is refused, never let past it
    assert "meta nfproto ipv6 tcp dport { 80, 8080 } reject with tcp reset" in script
    assert "reject" not in intercept_script([])


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (make deps installs it)")
@pytest.mark.parametrize("mtls", ["PERMISSIVE", MTLS_STRICT])
def test_haproxy_accepts_the_rendered_configuration(tmp_path: Path, mtls: str) -> None:
    from podnet.mesh.ca import MeshCA
    from podnet.mesh.render import DELAY_LUA

    sidecar = spec(tmp_path, mtls)
    ca = MeshCA.create()
    (tmp_path / "ca.pem").write_text(ca.cert_pem())
    (tmp_path / "cert.pem").write_text(ca.issue("spiffe://cluster.local/ns/shop/sa/client", 600).pem_bundle())
    (tmp_path / "delay.lua").write_text(DELAY_LUA)
    (tmp_path / "budget.map").write_text("be_split 0\n")
    config = tmp_path / "haproxy.cfg"
    config.write_text(render(sidecar))
    out = subprocess.run([str(HAPROXY), "-c", "-f", str(config)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr

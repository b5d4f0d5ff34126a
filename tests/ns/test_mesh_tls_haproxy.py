"""mTLS with the mesh CA's certificates on a real HAProxy 2.6, driven through its runtime API.

One HAProxy (`haproxy -db`, our child, killed by its PID) on a loopback address of its own:

    client (Python ssl) --mTLS--> frontend mtls   (ssl crt server.pem ca-file ca.pem verify required)
                                   answers 200 with the client's CN: what a sidecar's ACLs see
    client (plain) --> frontend out --> backend up (ssl crt client.pem, verifyhost <server CN>)
                                   --mTLS--> frontend mtls: an outbound sidecar checking the
                                   server's identity by its CN
    backend be: servers driven by weight, state, add and del

Rotation under load: a thread opens a new TLS connection per request while the server
certificate is replaced twice through `set ssl cert` + `commit ssl cert`; every request
must succeed, and a connection after the rotations must see the last serial.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from podnet.mesh.ca import IssuedCert, MeshCA
from podnet.mesh.haproxy_api import HaproxyApi, HAProxyError, HAProxyUnreachable
from podnet.mesh.identity import spiffe_id

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
SERVER, CLIENT, SIDECAR = spiffe_id("shop", "cart"), spiffe_id("shop", "web"), spiffe_id("shop", "gw")
START_TIMEOUT = 10.0
LOAD_S = 3.0
LOAD_THREADS = 2  # each opens a new TLS connection per request

CONFIG = """\
global
    stats socket {dir}/admin.sock mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend mtls
    bind {addr}:{tls_port} ssl crt {dir}/server.pem ca-file {dir}/ca.pem verify required
    http-request return status 200 content-type text/plain lf-string "%[ssl_c_s_dn(cn)]"
frontend out
    bind {addr}:{out_port}
    use_backend up_wrong if {{ path_beg /wrong }}
    default_backend up
backend up
    server up1 {addr}:{tls_port} ssl crt {dir}/sidecar.pem ca-file {dir}/ca.pem verify required verifyhost {server_cn}
backend up_wrong
    server up1 {addr}:{tls_port} ssl crt {dir}/sidecar.pem ca-file {dir}/ca.pem verify required verifyhost web.shop
backend be
    balance roundrobin
    server s1 {addr}:9 weight 10
"""


@dataclass
class Proxy:
    dir: Path
    addr: str
    tls_port: int
    out_port: int
    ca: MeshCA
    api: HaproxyApi

    @property
    def server_crt(self) -> str:
        return str(self.dir / "server.pem")

    def client_context(self, cert: IssuedCert | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # the server's identity is its URI SAN / CN, checked below
        ctx.load_verify_locations(cadata=self.ca.cert_pem())
        if cert is not None:
            path = self.dir / f"client-{cert.serial:x}.pem"
            path.write_text(cert.pem_bundle())
            ctx.load_cert_chain(str(path))
        return ctx


def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


@pytest.fixture(scope="module")
def proxy() -> Iterator[Proxy]:
    if not os.access(HAPROXY, os.X_OK):
        pytest.skip(f"{HAPROXY} is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="pnmt-"))
    addr = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    ca = MeshCA.create()
    _write(tmp / "ca.pem", ca.cert_pem())
    _write(tmp / "server.pem", ca.issue(SERVER, 3600).pem_bundle())
    _write(tmp / "sidecar.pem", ca.issue(SIDECAR, 3600).pem_bundle())
    tls_port, out_port = _free_port(addr), _free_port(addr)
    (tmp / "haproxy.cfg").write_text(CONFIG.format(dir=tmp, addr=addr, tls_port=tls_port,
                                                   out_port=out_port, server_cn="cart.shop"))
    log = open(tmp / "haproxy.log", "wb")  # noqa: SIM115 - closed in the finally
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(tmp / "haproxy.cfg")],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        api = HaproxyApi(str(tmp / "admin.sock"), timeout=2.0)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                api.command("show info")
                break
            except HAProxyUnreachable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("haproxy did not start: "
                                       + (tmp / "haproxy.log").read_text()) from None
                time.sleep(0.05)
        yield Proxy(tmp, addr, tls_port, out_port, ca, api)
    finally:
        proc.kill()
        proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _get(addr: str, port: int, ctx: ssl.SSLContext | None, path: str = "/") -> tuple[int, str, bytes]:
    """One request on a new connection: (status, body, the server's DER certificate or b"")."""
    with socket.create_connection((addr, port), timeout=5) as raw:
        sock = ctx.wrap_socket(raw) if ctx is not None else raw
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        peer = sock.getpeercert(binary_form=True) if ctx is not None else b""
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
    return status, body.decode(errors="replace"), peer or b""


def _spiffe_of(der: bytes) -> str:
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)[0]


def test_client_certificate_cn_reaches_the_acls(proxy) -> None:
    ctx = proxy.client_context(proxy.ca.issue(CLIENT, 600))
    status, body, peer = _get(proxy.addr, proxy.tls_port, ctx)
    assert (status, body) == (200, "web.shop")
    assert _spiffe_of(peer) == SERVER


@pytest.mark.parametrize(("who", "alert"), [("no certificate", "CERTIFICATE_REQUIRED"),
                                             ("another CA", "UNKNOWN_CA")])
def test_client_without_a_mesh_certificate_is_refused(proxy, who, alert) -> None:
    cert = None if who == "no certificate" else MeshCA.create().issue(CLIENT, 600)
    with pytest.raises(ssl.SSLError, match=alert):  # TLS 1.3: the alert comes at the first read
        _get(proxy.addr, proxy.tls_port, proxy.client_context(cert))


def test_outbound_sidecar_checks_the_server_cn(proxy) -> None:
    assert _get(proxy.addr, proxy.out_port, None)[:2] == (200, "gw.shop")
    assert _get(proxy.addr, proxy.out_port, None, "/wrong")[0] == 503  # verifyhost web.shop


def test_servers_through_the_runtime_api(proxy) -> None:
    api = proxy.api
    api.set_server_weight("be", "s1", 5)
    api.set_server_state("be", "s1", "drain")
    (s1,) = api.show_servers_state("be")
    assert (s1["srv_name"], s1["srv_uweight"], s1["srv_admin_state"]) == ("s1", "5", "8")  # 8: drain
    api.add_server("be", "s2", proxy.addr, 10, ("weight", "3"))
    stats = {row["svname"]: row for row in api.show_stat() if row["pxname"] == "be"}
    assert stats["s2"]["weight"] == "3" and stats["s2"]["status"] != "MAINT"
    with pytest.raises(HAProxyError, match="Already exists a server"):
        api.add_server("be", "s2", proxy.addr, 10)
    api.del_server("be", "s2")
    assert [row["srv_name"] for row in api.show_servers_state("be")] == ["s1"]
    with pytest.raises(HAProxyError, match="No such server"):
        api.set_server_weight("be", "s2", 1)
    api.set_server_state("be", "s1", "ready")


def test_a_certificate_for_a_path_haproxy_does_not_serve_is_refused(proxy) -> None:
    with pytest.raises(HAProxyError, match="not referenced by the configuration"):
        proxy.api.update_cert(str(proxy.dir / "nosuch.pem"), proxy.ca.issue(SERVER, 60).pem_bundle())


def test_rotation_under_load_drops_nothing(proxy) -> None:
    ctx = proxy.client_context(proxy.ca.issue(CLIENT, 600))
    done = threading.Event()
    outcomes: list[list[str]] = [[] for _ in range(LOAD_THREADS)]  # one list per thread

    def load(mine: list[str]) -> None:
        while not done.is_set():
            try:
                status, body, _ = _get(proxy.addr, proxy.tls_port, ctx)
                mine.append("ok" if (status, body) == (200, "web.shop") else f"status {status}: {body!r}")
            except OSError as exc:  # ssl.SSLError is one
                mine.append(repr(exc))

    workers = [threading.Thread(target=load, args=(mine,)) for mine in outcomes]
    for worker in workers:
        worker.start()
    rotated = []
    try:
        for _ in range(2):
            time.sleep(LOAD_S / 3)
            cert = proxy.ca.issue(SERVER, 3600)
            started = time.perf_counter()
            proxy.api.update_cert(proxy.server_crt, cert.pem_bundle())
            rotated.append((cert, time.perf_counter() - started))
        time.sleep(LOAD_S / 3)
    finally:
        done.set()
        for worker in workers:
            worker.join()
    requests = [outcome for mine in outcomes for outcome in mine]
    failed = [outcome for outcome in requests if outcome != "ok"]
    print(f"rotation under load: {len(requests)} requests, {len(failed)} failed; "
          f"update_cert took {', '.join(f'{s * 1e3:.1f} ms' for _, s in rotated)}")
    assert failed == []
    assert len(requests) > 0
    last = rotated[-1][0]
    _, _, peer = _get(proxy.addr, proxy.tls_port, ctx)
    assert x509.load_der_x509_certificate(peer).serial_number == last.serial
    assert int(proxy.api.show_ssl_cert(proxy.server_crt)["Serial"], 16) == last.serial

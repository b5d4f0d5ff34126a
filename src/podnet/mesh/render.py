"""A sidecar's HAProxy configuration from its SidecarSpec (pure).

    app -> nft output redirect -> :15001 outbound (tcp) --known service: switch to http,
                                  route (HTTPRoute rules), fault, retries, timeout,
                                  mTLS to meshed endpoints--> the endpoint pod
                                --anything else: passthrough to the original destination
    client -> nft prerouting redirect -> :15006 inbound (tcp) --TLS hello--> in_tls
                                  (terminates mTLS, knows the peer) --+--> app 127.0.0.1:<port>
                                --plain (PERMISSIVE)--> http ---------+
                                  rate limit (429), authorization (403 naming the policy)
              STRICT: :15006 is in_tls itself (TLS on the bind, a certificate required):
              no sniffing, no local hop, and plain text never gets an HTTP answer

Design notes:
- One frontend per direction, in TCP mode, switching to HTTP only for what the mesh
  understands (`tcp-request content switch-mode http`): a meshed pod still talks
  to anything else through a transparent passthrough (server 0.0.0.0:0 = the
  connection's original destination, read by HAProxy from SO_ORIGINAL_DST).
- Weighted splits are server weights inside one backend per rule (roundrobin keeps a
  90/10 exact over a few hundred requests); the names are stable, so a weight change
  goes through the runtime API without a reload (mesh/sidecar.py compares the texts
  with weights masked: `structure()`).
- HAProxy 2.6 cannot match URI SANs: peers are recognised by their certificate's CN
  (mesh/identity.py), checked with `verifyhost` on the way out and by ACL on the way in.
- Everything a request shows in the access log (pod, service, route, peer) is a txn
  variable, set where it is known (mesh/access_log.py's format reads them).
"""

from __future__ import annotations

import hashlib
import re

from podnet.mesh.access_log import HTTP_RULES, LOG_FORMAT, log_line
from podnet.mesh.model import MTLS_STRICT, PATH_EXACT, RouteMatch
from podnet.mesh.spec import (
    INBOUND_PORT,
    OUTBOUND_PORT,
    SIDECAR_UID,
    Backend,
    OutboundService,
    SidecarSpec,
)

SERVICE_HEADER = "x-podnet-service"  # which service the calling sidecar meant (inbound rate limits)
DELAY_LUA = 'core.register_action("podnet_delay", {"http-req"}, function(txn, ms) core.msleep(tonumber(ms)) end, 1)\n'
RETRY_ON = {"5xx": "500 502 503 504", "gateway-error": "502 503 504", "connect-failure": "conn-failure",
            "reset": "empty-response junk-response", "retriable-4xx": "409"}
_WEIGHT = re.compile(r" weight \d+")


def render(spec: SidecarSpec) -> str:
    lines = _global(spec) + _outbound(spec) + _inbound(spec)
    for backend in spec.backends:
        lines += _backend(spec, backend)
    return "\n".join(lines) + "\n"


def structure(text: str) -> str:
    """The configuration without its server weights: equal for two texts that differ
    only in weights (the runtime API's business, no reload)."""
    return _WEIGHT.sub("", text)


def weights(spec: SidecarSpec) -> dict[tuple[str, str], int]:
    return {(b.name, s.name): s.weight for b in spec.backends for s in b.servers}


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _global(spec: SidecarSpec) -> list[str]:
    out = ["global", f"  uid {SIDECAR_UID}", f"  gid {SIDECAR_UID}", "  maxconn 4096",
           f"  stats socket {spec.stats_socket} mode 600 level admin", f"  {log_line(spec.log_socket)}"]
    if spec.lua:
        out.append(f"  lua-load {spec.lua}")
    return out + ["", "defaults", "  mode http", "  log global", f"  log-format {_quote(LOG_FORMAT)}",
                  "  option dontlognull", "  timeout connect 2s", "  timeout client 60s", "  timeout server 60s",
                  "  timeout http-request 10s", "  timeout queue 2s", "  unique-id-format %[req.hdr(x-request-id)]", ""]


def _acl_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _match_acls(prefix: str, match: RouteMatch) -> tuple[list[str], list[str]]:
    """(acl lines, names to AND) for one HTTPRoute match."""
    acls, names = [], []
    if match.path_type == PATH_EXACT:
        acls.append(f"  acl {prefix}_p path -m str {match.path}")
        names.append(f"{prefix}_p")
    elif match.path != "/":  # a prefix by path element: /api matches /api and /api/x, not /apix
        base = match.path.rstrip("/")
        acls += [f"  acl {prefix}_p path -m str {base}", f"  acl {prefix}_p path -m beg {base}/"]
        names.append(f"{prefix}_p")
    for i, header in enumerate(match.headers):
        how = "-m reg" if header.regex else "-m str"
        acls.append(f"  acl {prefix}_h{i} req.hdr({header.name}) {how} {_quote(header.value)}")
        names.append(f"{prefix}_h{i}")
    if match.method:
        acls.append(f"  acl {prefix}_m method {match.method}")
        names.append(f"{prefix}_m")
    return acls, names


def _outbound(spec: SidecarSpec) -> list[str]:
    keys = " ".join(f"{s.cluster_ip}:{s.port}" for s in spec.outbound)
    out = ["frontend outbound", f"  bind 127.0.0.1:{OUTBOUND_PORT}", "  mode tcp",
           '  tcp-request content set-var-fmt(txn.dstkey) "%[dst]:%[dst_port]"']
    if keys:
        out += [f"  tcp-request content switch-mode http if {{ var(txn.dstkey) -m str {keys} }}",
                f"  http-request set-var-fmt(txn.pod) {_quote(spec.pod)}",
                "  http-request set-header x-request-id %[uuid] unless { req.hdr(x-request-id) -m found }",
                *(f"  {rule}" for rule in HTTP_RULES), f"  http-request del-header {SERVICE_HEADER}"]
    for svc in spec.outbound:
        out += _service_rules(svc)
    return out + ["  default_backend passthrough", "", "backend passthrough", "  mode tcp",
                  "  server original 0.0.0.0:0", ""]


def _service_rules(svc: OutboundService) -> list[str]:
    sid = f"s{_acl_id(svc.ref)}"
    out = [f"  acl {sid} var(txn.dstkey) -m str {svc.cluster_ip}:{svc.port}",
           f"  http-request set-var-fmt(txn.service) {_quote(svc.ref)} if {sid}",
           f"  http-request set-header {SERVICE_HEADER} {_quote(svc.ref.rsplit(':', 1)[0])} if {sid}"]
    if svc.fault and svc.fault.abort_percent:
        out.append(f"  http-request return status {svc.fault.abort_status} content-type text/plain "
                   f"string \"podnet mesh: fault injected\\n\" if {sid} {{ rand(10000) lt "
                   f"{round(svc.fault.abort_percent * 100)} }}")
    if svc.fault and svc.fault.delay_percent and svc.fault.delay:
        out.append(f"  http-request lua.podnet_delay {round(svc.fault.delay * 1000)} if {sid} "
                   f"{{ rand(10000) lt {round(svc.fault.delay_percent * 100)} }}")
    for r, rule in enumerate(svc.rules):
        for m, match in enumerate(rule.matches):
            acls, names = _match_acls(f"{sid}r{r}m{m}", match)
            cond = " ".join([sid, *names])
            out += acls
            out.append(f"  http-request set-var-fmt(txn.route) {_quote(rule.route)} if {cond} "
                       "!{ var(txn.route) -m found }")
            out.append(f"  use_backend {rule.backend} if {cond}")
    return out


def _inbound(spec: SidecarSpec) -> list[str]:
    tls = f"ssl crt {spec.cert} ca-file {spec.ca}"
    if spec.mtls == MTLS_STRICT:  # TLS on the intercepted port itself: no hello, no certificate, no entry
        out = ["frontend in_tls", f"  bind :{INBOUND_PORT} {tls} verify required", "  mode http",
               "  http-request set-var(txn.peer) ssl_c_s_dn(cn)"]
    else:  # plain text passes too: sniff, then hand TLS to a second frontend (one more local hop)
        out = ["frontend inbound", f"  bind :{INBOUND_PORT}", "  mode tcp", "  tcp-request inspect-delay 5s",
               "  tcp-request content accept if { req.ssl_hello_type 1 }", "  tcp-request content accept if HTTP",
               "  tcp-request content switch-mode http", *_inbound_http(spec, plain=True),
               "  use_backend in_tls if { req.ssl_hello_type 1 }", "  default_backend app", "",
               "backend in_tls", "  mode tcp", "  server tls abns@podnet-in-tls send-proxy-v2", "",
               "frontend in_tls", f"  bind abns@podnet-in-tls accept-proxy {tls} verify optional", "  mode http",
               "  http-request set-var(txn.peer) ssl_c_s_dn(cn) if { ssl_c_used }"]
    out += _inbound_http(spec, plain=False)
    out += ["  default_backend app", "", "backend app", "  mode http", "  server app 127.0.0.1", ""]
    for port in spec.inbound:
        if port.rate_limits:
            out += [f"backend rl_{port.port}", "  stick-table type string len 128 size 64 expire 10s "
                    "store http_req_rate(1s)", ""]
    return out


def _inbound_http(spec: SidecarSpec, plain: bool) -> list[str]:
    out = [*(f"  {rule}" for rule in HTTP_RULES), f"  http-request set-var-fmt(txn.pod) {_quote(spec.pod)}",
           f"  http-request set-var(txn.service) req.hdr({SERVICE_HEADER})"]
    for port in spec.inbound:
        at = f"{{ dst_port {port.port} }}"
        if port.services:
            out.append(f"  http-request set-var-fmt(txn.service) {_quote(port.services[0])} "
                       f"if {at} !{{ var(txn.service) -m found }}")
        for rule in port.authz:  # every policy on the port must let the caller in
            allowed = " ".join(rule.allowed) if rule.allowed else "-"
            reason = (f"podnet mesh: denied by MeshAuthorizationPolicy {rule.policy}: "
                      f"%[var(txn.peer)] may not call {rule.service}\\n")
            out.append(f"  http-request return status 403 content-type text/plain lf-string {_quote(reason)} "
                       f"if {at} !{{ var(txn.peer) -m str {allowed} }}")
        if port.rate_limits:
            out.append(f"  http-request track-sc0 var(txn.service) table rl_{port.port} if {at}")
            for service, limit in port.rate_limits:
                out.append(f"  http-request deny deny_status 429 if {at} {{ var(txn.service) -m str {service} }} "
                           f"{{ sc_http_req_rate(0,rl_{port.port}) gt {limit} }}")
    return out


def _backend(spec: SidecarSpec, backend: Backend) -> list[str]:
    out = [f"backend {backend.name}", "  mode http", "  balance roundrobin"]
    policy = backend.policy
    retries = policy.retries if policy else None
    if retries:
        kinds = " ".join(dict.fromkeys(w for k in retries.retry_on for w in RETRY_ON[k].split()))
        out += [f"  retries {retries.attempts}", f"  retry-on {kinds}", "  option redispatch 1"]
        if retries.budget_percent and spec.budget_map:  # over budget: the agent set our key to 1
            out.append(f"  http-request disable-l7-retry if {{ str({backend.name}),map({spec.budget_map}) -m str 1 }}")
    else:
        out.append("  retries 0")
    # HAProxy times each try: the per-try timeout, at most the request's (504 beyond)
    timeouts = [t for t in (retries.per_try_timeout if retries else None, backend.timeout) if t]
    if timeouts:
        out.append(f"  timeout server {_ms(min(timeouts))}")
    outlier = policy.outlier if policy else None
    if outlier:
        out.append("  option httpchk GET /")
    breaker = policy.circuit_breaker if policy else None
    for server in backend.servers:
        line = f"  server {server.name} {server.ip}:{server.port} weight {server.weight}"
        if breaker and breaker.max_connections:
            line += f" maxconn {breaker.max_connections}"
        if breaker and breaker.max_pending_requests is not None:  # HAProxy's 0 means unlimited: at least 1
            line += f" maxqueue {max(1, breaker.max_pending_requests)}"
        if outlier:
            line += (f" check inter {_ms(outlier.interval)} rise 1 fall 1 observe layer7 "
                     f"error-limit {outlier.consecutive_5xx} on-error mark-down")
        if server.meshed and spec.mtls != "DISABLE":
            line += f" ssl crt {spec.cert} ca-file {spec.ca} verify required"
            if server.identity:
                line += f" verifyhost {server.identity}"
        out.append(line)
    return out + [""]

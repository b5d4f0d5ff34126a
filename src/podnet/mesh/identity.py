"""Workload identities of the mesh (pure): SPIFFE IDs, and the certificate CN that mirrors them.

A meshed pod's identity is `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`, as
Istio and SPIFFE spell it. Its certificate carries it twice:

- the URI SAN holds the SPIFFE ID, for standard verifiers and other meshes;
- the subject CN holds `<account>.<namespace>`, because HAProxy 2.6 cannot match URI
  SANs: the sidecar's ACLs check `ssl_c_s_dn(cn)`, and an outbound sidecar can check the
  server's identity with `verifyhost <account>.<namespace>` (it falls back to the CN).

Both parts are DNS labels, so the CN has exactly one dot and maps back to one ID; an
X.509 CN holds at most 64 characters, so account and namespace together get 63.
The account of a pod is its label `podnet.io/service-account`, else its `app` label,
else "default" (pods without labels share the namespace's default identity).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from podnet.errors import PodnetError
from podnet.schema.fields import DNS_LABEL_RE, DNS_SUBDOMAIN_RE

DEFAULT_TRUST_DOMAIN = "cluster.local"
ACCOUNT_LABEL = "podnet.io/service-account"
APP_LABEL = "app"
DEFAULT_ACCOUNT = "default"
SCHEME = "spiffe://"
CN_MAX = 64  # RFC 5280's ub-common-name; `cryptography` refuses longer
_LABEL_HINT = "at most 63 lowercase alphanumerics or '-', starting and ending with an alphanumeric"


class IdentityError(PodnetError):
    """A name that cannot be, or a text that is not, a mesh identity."""


@dataclass(frozen=True)
class SpiffeId:
    """One workload identity; `uri` is the SPIFFE ID, `cn` the certificate CN."""

    trust_domain: str
    namespace: str
    account: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        check_label(self.namespace, "namespace")
        check_label(self.account, "service account")
        if len(self.cn) > CN_MAX:
            raise IdentityError(
                f"identity {self.uri}: its certificate CN {self.cn!r} has {len(self.cn)} characters, "
                f"over X.509's limit of {CN_MAX}", "shorten the service account or the namespace")

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.account}"

    @property
    def cn(self) -> str:
        return f"{self.account}.{self.namespace}"

    def __str__(self) -> str:
        return self.uri


def check_label(name: object, what: str) -> str:
    """`name` if it is a DNS label, else IdentityError naming `what`."""
    if not isinstance(name, str) or not DNS_LABEL_RE.fullmatch(name):
        raise IdentityError(f"{what}: {name!r} is not a DNS label", _LABEL_HINT)
    return name


def check_trust_domain(name: object) -> str:
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN_RE.fullmatch(name):
        raise IdentityError(f"trust domain: {name!r} is not a DNS name",
                            "at most 253 lowercase alphanumerics, '-' or '.'")
    return name


def account_of(labels: Mapping[str, str], where: str = "pod") -> str:
    """The service account of a pod with these labels; a bad label value names the label."""
    for label in (ACCOUNT_LABEL, APP_LABEL):
        if label in labels:
            return check_label(labels[label], f"{where}: label {label}")
    return DEFAULT_ACCOUNT


def identity_of_pod(namespace: str, labels: Mapping[str, str],
                    trust_domain: str = DEFAULT_TRUST_DOMAIN, where: str = "pod") -> SpiffeId:
    check_label(namespace, f"{where}: namespace")
    return SpiffeId(trust_domain, namespace, account_of(labels, where))


def spiffe_id(namespace: str, account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    return SpiffeId(trust_domain, namespace, account).uri


def parse_spiffe(uri: object) -> SpiffeId:
    """`spiffe://<td>/ns/<ns>/sa/<account>`, exactly (no query, fragment, port or extra path)."""
    if not isinstance(uri, str) or not uri.startswith(SCHEME):
        raise IdentityError(f"{uri!r} is not a SPIFFE ID", f"expected {SCHEME}<trust-domain>/ns/<namespace>/sa/<account>")
    domain, _, path = uri[len(SCHEME):].partition("/")
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
        raise IdentityError(f"{uri!r} is not a SPIFFE ID of a workload",
                            "expected the path /ns/<namespace>/sa/<account>")
    try:
        return SpiffeId(domain, parts[1], parts[3])
    except IdentityError as exc:
        raise IdentityError(f"SPIFFE ID {uri!r}: {exc.msg}", exc.details) from None


def cn_of(spiffe: str | SpiffeId) -> str:
    """The certificate CN for a SPIFFE ID: `<account>.<namespace>`."""
    return (spiffe if isinstance(spiffe, SpiffeId) else parse_spiffe(spiffe)).cn


def spiffe_of_cn(cn: object, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The SPIFFE ID a CN stands for within `trust_domain` (the CN does not carry it)."""
    if not isinstance(cn, str) or cn.count(".") != 1:
        raise IdentityError(f"CN {cn!r} is not a mesh identity", "expected <account>.<namespace>")
    account, namespace = cn.split(".")
    try:
        return SpiffeId(trust_domain, namespace, account).uri
    except IdentityError as exc:
        raise IdentityError(f"CN {cn!r}: {exc.msg}", exc.details) from None

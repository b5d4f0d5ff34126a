"""A Service's IP families (pure): `ipFamilyPolicy`, `ipFamilies` and `clusterIPs`, as
Kubernetes' dual-stack Services have them.

Two steps, as the API server takes them:
- `parse_cluster_ips` (when a manifest is read): the shape alone. At most two families
  and two addresses, of different families; `clusterIPs[0]` is `clusterIP`; "None"
  (headless) only alone; an address of the family its `ipFamilies` entry names.
- `resolve` (when it is applied, services/allocate.py): defaulting against the
  cluster's service CIDRs (`cluster`: their families, the primary first) and the stored
  service. A policy left out is the stored one, else SingleStack (RequireDualStack for
  a headless service without selector); families left out come from the cluster IPs,
  else the cluster's primary; PreferDualStack and RequireDualStack add the other family
  when the cluster has both, and RequireDualStack is refused when it has one. The
  primary family and address are immutable; the secondary may be added (the policy
  raised from SingleStack) or dropped (the policy set back to SingleStack), nothing
  else. A PreferDualStack service is not upgraded behind its owner's back when the
  cluster becomes dual-stack (as the API server, only an explicit change does).
The addresses themselves are claimed by allocate.py; `resolve` leaves a family's
entry of `cluster_ips` out when it is still to be allocated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from podnet.schema import fields
from podnet.schema.fields import Loc

if TYPE_CHECKING:
    from podnet.services.objects import Service

HEADLESS = "None"
SINGLE, PREFER, REQUIRE = "SingleStack", "PreferDualStack", "RequireDualStack"
POLICIES = (SINGLE, PREFER, REQUIRE)
FAMILIES = ("IPv4", "IPv6")


def family_of(ip: str) -> str:
    """"IPv4" or "IPv6" of an address the parsers already checked."""
    return "IPv6" if ":" in ip else "IPv4"


def other(family: str) -> str:
    return "IPv4" if family == "IPv6" else "IPv6"


# -- the shape of a manifest's fields ------------------------------------------------------

def parse_cluster_ips(spec: Mapping[str, Any], loc: Loc) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    """(clusterIPs with clusterIP first, ipFamilyPolicy or "", ipFamilies) as given."""
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in POLICIES:
        raise loc.field("ipFamilyPolicy").error(f"{policy!r} is not one of {', '.join(POLICIES)}")
    families = _families(spec.get("ipFamilies"), loc.field("ipFamilies"))
    ips = _addresses(spec.get("clusterIP"), spec.get("clusterIPs"), loc)
    for i, ip in enumerate(ips[:len(families)]):
        if ip != HEADLESS and family_of(ip) != families[i]:
            raise loc.field("clusterIPs").item(i).error(
                f"{ip} is not {families[i]}, as spec.ipFamilies[{i}] says", "list the families in the same order")
    return ips, policy or "", families


def _families(raw: Any, loc: Loc) -> tuple[str, ...]:
    if raw is None:
        return ()
    listed = fields.items(raw, loc)
    if len(listed) > 2:
        raise loc.error(f"{len(listed)} families given: at most two, IPv4 and IPv6")
    out: list[str] = []
    for i, family in enumerate(listed):
        if family not in FAMILIES:
            raise loc.item(i).error(f"{family!r} is not one of {', '.join(FAMILIES)}")
        if family in out:
            raise loc.item(i).error(f"{family} is given twice: one entry per family")
        out.append(family)
    return tuple(out)


def _addresses(single: Any, listed: Any, loc: Loc) -> tuple[str, ...]:
    many: list[Any] = []
    if listed is not None:
        many = list(fields.items(listed, loc.field("clusterIPs")))
        if len(many) > 2:
            raise loc.field("clusterIPs").error(f"{len(many)} addresses given: at most two, one per family")
        if many and single not in (None, "") and many[0] != single:
            raise loc.field("clusterIPs").item(0).error(f"{many[0]!r} differs from spec.clusterIP {single!r}")
    if not many and single not in (None, ""):
        many = [single]
    if not many or many[0] in (None, ""):
        if len(many) > 1:
            raise loc.field("clusterIPs").item(0).error("empty: the primary address comes first")
        return ()
    out: list[str] = []
    for i, ip in enumerate(many):
        where = loc.field("clusterIP" if listed is None else "clusterIPs")
        where = where if listed is None else where.item(i)
        if ip == HEADLESS:
            if i or len(many) > 1:
                raise where.error("'None' (headless) must be the only address")
            return (HEADLESS,)
        out.append(str(fields.address(ip, where)))
    if len(out) == 2 and family_of(out[0]) == family_of(out[1]):
        raise loc.field("clusterIPs").item(1).error(
            f"{out[1]} is {family_of(out[1])} as {out[0]} is: one address per family")
    return tuple(out)


# -- defaulting against the cluster and the stored service -----------------------------------

def resolve(svc: Service, old: Service | None, cluster: Sequence[str]) -> Service:
    """`svc` with its policy and families set and the cluster IPs it keeps or asked for
    (those still to be allocated left out); see the module docstring."""
    loc = Loc(f"Service {svc.ref}").field("spec")
    ips, families = list(svc.cluster_ips), list(svc.ip_families)
    headless = (ips or list(old.cluster_ips if old is not None else ()))[:1] == [HEADLESS]
    policy = svc.ip_family_policy or (old.ip_family_policy if old is not None else "")
    if not policy:
        policy = REQUIRE if headless and svc.selector is None else SINGLE
    if old is not None and old.cluster_ips:
        ips, families = _against_old(loc, svc, old, policy, ips, families)
        if (policy == PREFER and old.ip_family_policy == PREFER and tuple(ips) == old.cluster_ips
                and tuple(families) == old.families):
            return _with(svc, policy, families, ips)  # unchanged: no upgrade after a cluster change
    if policy == SINGLE and (len(ips) > 1 or len(families) > 1):
        raise loc.field("ipFamilyPolicy").error(
            f"SingleStack takes one family, but two {'cluster IPs' if len(ips) > 1 else 'IP families'} are given",
            "set ipFamilyPolicy: PreferDualStack or RequireDualStack for a dual-stack service")
    for i, ip in enumerate(ips):
        if ip == HEADLESS:
            break
        if i < len(families):
            if family_of(ip) != families[i]:
                raise loc.field("clusterIPs").item(i).error(f"{ip} is not {families[i]}, as spec.ipFamilies[{i}] says")
        elif family_of(ip) not in cluster:
            raise loc.field("clusterIPs").item(i).error(f"{family_of(ip)} is not configured on this cluster",
                                                        _configured(cluster))
        else:
            families.append(family_of(ip))
    if headless and svc.selector is None:  # no address to allocate: any family may be asked for
        families = families or [cluster[0]]
        if len(families) < 2 and policy != SINGLE:
            families.append(other(families[0]))
        return _with(svc, policy, families, ips)
    if policy == REQUIRE and len(cluster) < 2:
        raise loc.field("ipFamilyPolicy").error(
            "RequireDualStack: this cluster is not configured for dual-stack services",
            f"{_configured(cluster)}; PreferDualStack takes what there is")
    for i, family in enumerate(families):
        if family not in cluster:
            raise loc.field("ipFamilies").item(i).error(f"{family} is not configured on this cluster",
                                                        _configured(cluster))
    families = families or [cluster[0]]
    if policy != SINGLE and len(families) == 1 and len(cluster) == 2:
        families.append(other(families[0]))
    return _with(svc, policy, families, ips)


def _against_old(loc: Loc, svc: Service, old: Service, policy: str, ips: list[str],
                 families: list[str]) -> tuple[list[str], list[str]]:
    """What a re-apply keeps of the stored service, and the changes refused: the
    primary is immutable; the secondary goes only with SingleStack."""
    before, old_families = list(old.cluster_ips), list(old.families)
    if ips and ips[0] != before[0]:
        raise loc.field("clusterIP").error(f"{ips[0]!r} differs from {before[0]!r}, and it is immutable",
                                           "delete the service and apply it again to change it")
    if len(ips) > 1 and len(before) > 1 and ips[1] != before[1]:
        raise loc.field("clusterIPs").item(1).error(f"{ips[1]!r} differs from {before[1]!r}, and it is immutable",
                                                    "set ipFamilyPolicy: SingleStack to release it first")
    if families and old_families and families[0] != old_families[0]:
        raise loc.field("ipFamilies").item(0).error(
            f"{families[0]} differs from {old_families[0]}: the primary family is immutable",
            "delete the service and apply it again to change it")
    ips, families = ips or before, families or old_families  # left out: kept
    if policy == SINGLE:  # clear intent: the secondary goes (the primary is immutable, so it stays)
        return ips[:1] if ips == before else ips, families[:1] if families == old_families else families
    if len(ips) < len(before):
        raise loc.field("ipFamilyPolicy").error(f"{policy}: must be SingleStack to release the secondary cluster IP")
    if len(families) < len(old_families):
        raise loc.field("ipFamilyPolicy").error(f"{policy}: must be SingleStack to release the secondary IP family")
    return ips, families


def _configured(cluster: Sequence[str]) -> str:
    return f"the cluster's service CIDRs are {' and '.join(cluster)} (settings/services)"


def _with(svc: Service, policy: str, families: list[str], ips: list[str]) -> Service:
    return replace(svc, ip_family_policy=policy, ip_families=tuple(families),
                   cluster_ip=ips[0] if ips else "", cluster_ips=tuple(ips))

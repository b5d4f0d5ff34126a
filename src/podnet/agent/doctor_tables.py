"""`podnet doctor`'s nft check: each nft table the node agent keeps (`inet podnet-policy`,
agent/policy_service.py; `inet podnet-svc`, agent/services_service.py) against what
that service applied, and the fix: the service re-applies its whole table.

Why compare shapes, not text: `nft list table` prints a rule in its own words (a
base chain's priority as `filter - 5`, sets folded, handles and counter values
added), so the rendered script never reads back the same. What does read back the
same is the table's outline: the chain names, each chain's rules in order, named by
their comments (every policy line and every service DNAT rule carries one; a rule
without one still counts), and the set and map names with their element counts
(left out: the generation stamp, interval sets, which nft may merge, and sets the
packet path fills, like affinity's `dynamic` ones). A flushed chain, a deleted rule,
a deleted table, an emptied map: each changes the outline. Handles, counters,
named counter objects and the order of listing are not part of it.

Why against what the service applied, not a fresh compile from the store: a
table that is exactly what the agent last applied is healthy even while a newer
change is on its way; and a difference seen once is checked once more after a short
wait (an apply may have been running), so a healthy node does not flap.

The services' own periodic pass rebuilds a table deleted or replaced by hand (its
generation set changes), but not one flushed in place (the generation survives):
doctor finds both; `--fix` runs the service's full apply (one nft transaction that
replaces the table whole), as `policy.sync {"full": true}` does.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from podnet.agent.doctor_finding import Finding

if TYPE_CHECKING:
    from podnet.agent.node_service import NodeService
    from podnet.kernel.nft import NftPort
    from podnet.policy.table import Compiled
    from podnet.services.render_diff import Objects

_COMMENT = re.compile(r'\bcomment "([^"]*)"')
_INLINE = re.compile(r"elements = \{([^}]*)\}")
UNCOUNTED = ("interval", "dynamic", "timeout")  # set flags whose element count is not ours to judge
SHOWN = 4  # names shown per kind of difference
RECHECK_SECONDS = 0.5


@dataclass(frozen=True)
class TableShape:
    """A table's outline: chain -> its rules' comments in order (None: a rule without
    one); set or map -> its element count (None: not compared)."""

    chains: Mapping[str, tuple[str | None, ...]]
    sets: Mapping[str, int | None]


def comment_of(line: str) -> str | None:
    found = _COMMENT.search(line)
    return found.group(1) if found else None


def policy_shape(compiled: Compiled) -> TableShape:
    """The outline of policy/table.py's `Compiled.render()` (a base chain's first line
    is its hook, not a rule)."""
    from podnet.policy.table import GENERATION_SET

    chains = {name: tuple(comment_of(line) for line in lines if not line.startswith("type "))
              for name, lines in compiled.chains.items()}
    sets: dict[str, int | None] = {GENERATION_SET: None}
    sets.update({name: None if s.interval else len(s.elements) for name, s in compiled.sets.items()})
    sets.update({name: len(elements) for name, (_kind, elements) in compiled.maps.items()})
    return TableShape(chains, sets)


def services_shape(objects: Objects, generation_set: str) -> TableShape:
    """The outline of services/render.py's full table of `objects`
    (render.table_objects): elements are the ports' map and set elements, the shared
    ones some port holds, and those written inline in a set's declaration."""
    held = Counter(name for name, _key in objects.elements)
    held.update(name for (name, _key), count in objects.shared.items() if count > 0)
    sets: dict[str, int | None] = {generation_set: None}
    for name, (kind, body) in objects.sets.items():
        if kind not in ("set", "map"):  # a named counter object: not part of the outline
            continue
        if any(flag in body for flag in UNCOUNTED):
            sets[name] = None
            continue
        inline = _INLINE.search(body)
        sets[name] = held[name] + (len(inline.group(1).split(",")) if inline else 0)
    return TableShape({name: tuple(comment_of(rule) for rule in rules) for name, rules in objects.chains.items()},
                      sets)


def live_shape(doc: Mapping[str, Any] | None) -> TableShape | None:
    """The outline of an `nft -j list table` document; None when the table is absent."""
    items = (doc or {}).get("nftables", [])
    if not any("table" in item for item in items):
        return None
    chains: dict[str, list[str | None]] = {item["chain"]["name"]: [] for item in items if "chain" in item}
    sets: dict[str, int | None] = {}
    for item in items:
        if "rule" in item:
            chains.setdefault(item["rule"]["chain"], []).append(item["rule"].get("comment"))
        for kind in ("set", "map"):
            if kind in item:
                sets[item[kind]["name"]] = len(item[kind].get("elem") or ())
    return TableShape({name: tuple(rules) for name, rules in chains.items()}, sets)


def _names(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def differences(want: TableShape, have: TableShape | None) -> list[str]:
    """What keeps the live table (`have`, None: absent) from the outline the agent
    applied (`want`), one phrase per kind of difference; [] when they agree."""
    if have is None:
        return ["the table is missing"]
    out = []
    for kind, wanted, held in (("chain", want.chains, have.chains), ("set or map", want.sets, have.sets)):
        if missing := sorted(set(wanted) - set(held)):
            out.append(f"{kind} missing: {_names(missing)}")
        if extra := sorted(set(held) - set(wanted)):
            out.append(f"{kind} the agent did not apply: {_names(extra)}")
    counts = [f"{name} ({len(have.chains[name])} of {len(rules)})" for name, rules in sorted(want.chains.items())
              if name in have.chains and len(have.chains[name]) != len(rules)]
    if counts:
        out.append(f"rules in chain: {_names(counts)}")
    changed = sorted(name for name, rules in want.chains.items()
                     if name in have.chains and len(have.chains[name]) == len(rules) and have.chains[name] != rules)
    if changed:
        out.append(f"other rules (by comment) in chain: {_names(changed)}")
    elements = [f"{name} ({have.sets[name]} of {count})" for name, count in sorted(want.sets.items())
                if count is not None and name in have.sets and have.sets[name] != count]
    if elements:
        out.append(f"elements in: {_names(elements)}")
    return out


def table_finding(table: str, service: str, diffs: list[str]) -> Finding:
    what = "is missing" if diffs == ["the table is missing"] else "differs from what the agent applied: " + \
        "; ".join(diffs)
    return Finding("nft", f"table {table} {what}",
                   f"the {service} service re-applies its whole table in one nft transaction (podnet doctor --fix)",
                   True, (table, service))


# ------------------------------------------------------------------- reading the node


def _policy(node: NodeService) -> Any:
    from podnet.agent.policy_service import PolicyService

    return next((s for s in getattr(node.agent, "services", ()) if isinstance(s, PolicyService)), None)


def _services(node: NodeService) -> Any:
    from podnet.agent.services_service import ServicesService

    return next((s for s in getattr(node.agent, "services", ()) if isinstance(s, ServicesService)), None)


def _wanted(node: NodeService) -> dict[str, tuple[str, TableShape]]:
    """Each kept table -> (its service, the outline of what that service last applied);
    a service that applied nothing (no policy at all, not started) keeps no table."""
    from podnet.agent.services_service import GENERATION_SET
    from podnet.policy.table import FAMILY as POLICY_FAMILY
    from podnet.policy.table import TABLE as POLICY_TABLE
    from podnet.services import render

    out = {}
    policy, services = _policy(node), _services(node)
    if policy is not None and policy.applied is not None:
        out[f"{POLICY_FAMILY} {POLICY_TABLE}"] = ("policy", policy_shape(policy.applied))
    plan = services.applied if services is not None else None
    if plan is not None:
        out[f"{render.FAMILY} {render.TABLE}"] = ("services", services_shape(render.table_objects(plan),
                                                                            GENERATION_SET))
    return out


def _compare(node: NodeService, nft: NftPort) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for table, (service, shape) in _wanted(node).items():
        family, name = table.split()
        diffs = differences(shape, live_shape(nft.list_table_json(family, name)))
        if diffs:
            out[table] = (service, diffs)
    return out


def nft_findings(node: NodeService, nft: NftPort | None = None) -> list[Finding]:
    """A table that differs twice, RECHECK_SECONDS apart (not an apply caught halfway)."""
    from podnet.kernel.nft import Nft

    nft = nft or Nft()  # its own nft process: the services' libnftables handles are their threads'
    if not _compare(node, nft):
        return []
    time.sleep(RECHECK_SECONDS)
    return [table_finding(table, service, diffs) for table, (service, diffs) in sorted(_compare(node, nft).items())]


def reapply_tables(node: NodeService, findings: list[Finding]) -> None:
    """`--fix`: each named table's service applies its whole table now (its own full
    converge: the store read again, one nft transaction)."""
    services = {"policy": _policy(node), "services": _services(node)}
    for finding in findings:
        if finding.check == "nft" and (service := services.get(finding.target[1])) is not None:
            service.converge(full=True)

"""Which cluster a command talks to, and the config file that can say so.

One rule for every command, first match wins:

    --lab NAME          a lab on this machine (its state file names the store and sockets)
    --store URL         a store: a SQLite path, sqlite:///path or etcd://h1:p1,h2:p2/prefix
    --context NAME      a context of the config file
    $PODNET_STORE       as --store
    $PODNET_LAB         as --lab
    config file         its current-context ($PODNET_CONFIG, else /etc/podnet/config.yaml)
    the lab "lab"       what a developer on one machine has

The config file is kubeconfig-like; the agent reads its `agent` section too (what
`podnet agent` takes as flags; a flag given wins):

    apiVersion: podnet.io/v1
    kind: Config
    current-context: prod
    contexts:
      - name: prod
        store: etcd://10.0.0.1:2379,10.0.0.2:2379/podnet
        socket: /run/podnet/agent.sock     # the local agent (flows, policy status)
      - name: lab
        lab: lab
    agent:
      node: node1
      fabric: vxlan
      clusterCIDR: 10.244.0.0/16

Pure except for reading the file; errors name the file and the field path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.defaults import DEFAULT_CONFIG
from podnet.errors import InvalidConfig, ObjectError
from podnet.schema import fields
from podnet.schema.fields import Loc

DEFAULT_LAB = "lab"
API_VERSION = "podnet.io/v1"
# agent: key in the file -> `podnet agent` flag destination, and its type
AGENT_FIELDS: dict[str, tuple[str, type]] = {
    "node": ("node", str), "fabric": ("fabric", str), "clusterCIDR": ("cluster_cidr", str),
    "blockPrefix": ("block_prefix", int), "underlay": ("underlay", str), "leaseTTL": ("lease_ttl", float),
    "store": ("store", str), "socket": ("socket", str), "stateDir": ("state_dir", str),
    "dnsUpstream": ("dns_upstream", str), "policyHost": ("policy_host", str),
    "strictAffinity": ("strict_affinity", bool), "metricsAddr": ("metrics_addr", str),
    "watchBatch": ("watch_batch", float),
}


@dataclass(frozen=True)
class Context:
    name: str
    lab: str | None = None
    store: str | None = None
    socket: str | None = None


@dataclass(frozen=True)
class Config:
    path: str
    current_context: str | None = None
    contexts: Mapping[str, Context] = field(default_factory=dict)
    agent: Mapping[str, Any] = field(default_factory=dict)  # flag destination -> value

    def context(self, name: str) -> Context:
        if name not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise InvalidConfig(f"{self.path}: no context named {name!r}", f"contexts: {known}")
        return self.contexts[name]


@dataclass(frozen=True)
class Target:
    """Where a command's cluster is: a lab by name, or a store URL (with the local
    agent's socket, when a context names one). `source` says which rule chose it."""

    lab: str | None = None
    store: str | None = None
    socket: str | None = None
    source: str = ""

    def __str__(self) -> str:
        what = f"lab {self.lab!r}" if self.lab else f"store {self.store}"
        return f"{what} (from {self.source})"


def config_path(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("PODNET_CONFIG") or DEFAULT_CONFIG


def load(path: str) -> Config:
    """Read and check a config file; InvalidConfig names the file and the field."""
    from podnet import yamlsafe

    try:
        raw = yamlsafe.load(yamlsafe.read_file(path))
    except OSError as exc:
        raise InvalidConfig(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yamlsafe.YAMLError as exc:
        raise InvalidConfig(f"config file {path} is not valid YAML", str(exc).replace("\n", " ")) from None
    try:
        return parse(raw or {}, path)
    except ObjectError as exc:  # a field of the file: the same message, the config's error code
        raise InvalidConfig(exc.msg, exc.details) from None


def parse(raw: Any, path: str) -> Config:
    loc = Loc(path)
    doc = fields.mapping(raw, loc, ("apiVersion", "kind", "current-context", "contexts", "agent"))
    if doc.get("apiVersion", API_VERSION) != API_VERSION or doc.get("kind", "Config") != "Config":
        raise loc.field("apiVersion").error(f"expected apiVersion {API_VERSION}, kind Config")
    contexts: dict[str, Context] = {}
    for i, item in enumerate(fields.items(doc.get("contexts") or [], loc.field("contexts"))):
        at = loc.field("contexts").item(i)
        entry = fields.mapping(item, at, ("name", "lab", "store", "socket"))
        values = {key: _text(entry, key, at) for key in ("name", "lab", "store", "socket")}
        if not values["name"]:
            raise at.field("name").error("required")
        if bool(values["lab"]) == bool(values["store"]):
            raise at.error("give exactly one of lab or store")
        if values["name"] in contexts:
            raise at.field("name").error(f"context {values['name']!r} is defined twice")
        contexts[values["name"]] = Context(**values)  # type: ignore[arg-type]
    current = _text(doc, "current-context", loc)
    if current is not None and current not in contexts:
        raise loc.field("current-context").error(f"no context named {current!r}")
    return Config(path, current, contexts, _agent(doc.get("agent"), loc.field("agent")))


def _text(doc: Mapping[str, Any], key: str, loc: Loc) -> str | None:
    value = doc.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise loc.field(key).error(f"{value!r} is not a non-empty string")
    return value


def _agent(raw: Any, loc: Loc) -> dict[str, Any]:
    if raw is None:
        return {}
    doc = fields.mapping(raw, loc, AGENT_FIELDS)
    out: dict[str, Any] = {}
    for key, value in doc.items():
        dest, kind = AGENT_FIELDS[key]
        if kind is str:
            out[dest] = _text(doc, key, loc)
        elif kind is int:
            out[dest] = fields.integer(value, loc.field(key))
        elif kind is bool:
            if not isinstance(value, bool):
                raise loc.field(key).error(f"{value!r} is not true or false")
            out[dest] = value
        else:
            out[dest] = float(fields.number(value, loc.field(key)))
    return out


def resolve(lab: str | None = None, store: str | None = None, context: str | None = None,
            environ: Mapping[str, str] | None = None) -> Target:
    """The cluster a command talks to, by the rule in this module's docstring."""
    environ = os.environ if environ is None else environ
    if lab and store:
        raise InvalidConfig("--lab and --store exclude each other", "name one cluster")
    if lab:
        return Target(lab=lab, source="--lab")
    if store:
        return Target(store=store, source="--store")
    path = config_path(environ)
    if context:
        return _from_context(load(path).context(context), f"context {context!r} of {path}")
    if environ.get("PODNET_STORE"):
        return Target(store=environ["PODNET_STORE"], source="$PODNET_STORE")
    if environ.get("PODNET_LAB"):
        return Target(lab=environ["PODNET_LAB"], source="$PODNET_LAB")
    if os.path.exists(path):
        config = load(path)
        if config.current_context:
            return _from_context(config.context(config.current_context),
                                 f"current-context {config.current_context!r} of {path}")
    return Target(lab=DEFAULT_LAB, source="the default lab")


def _from_context(ctx: Context, source: str) -> Target:
    return Target(lab=ctx.lab, store=ctx.store, socket=ctx.socket, source=source)

"""Which node a record in a shared store belongs to (issue 10, item 1).

A network namespace's (dev, inode) is no machine identity: every machine's root
namespace is dev 4, inode 4026531833 on this kernel. So records that several machines
may share (endpoint records, IPAM reservations, the owner of an ADD in flight) also
name their node, and cleanup, GC, repair and dead-owner rollback act only on their own
node's records.

Decisions:
- **A record's node** is the agent's `--node` name when it has one, else this
  machine's id (/etc/machine-id, else /var/lib/dbus/machine-id).
- **The fallback and the agent agree without sharing a file.** The plugin's fallback
  and podnet-ipam never know a node name: they write the machine id. An agent answers
  to both its node name and its machine id (`names`), so what the fallback wrote on
  its machine is its own. Its own records carry the name, which stays right on
  machines cloned with one machine id (only the fallback's records are ambiguous there).
- **Namespace too.** A record is this agent's to repair or roll back when its node is
  one of `names` *and* it was built in the agent's namespace (agents of one machine in
  different namespaces, e.g. the lab's nodes, share the machine id); GC checks the
  namespace where it always did (a store the config names). A record of before (no
  node) belongs to the namespace that wrote it, as it always did.
- **Owner tags** are `<node>:<boot_id>:<pid>:<starttime>` (procs.py): only the node
  that wrote one may look its pid up, and an owner of an earlier boot is dead. Without
  a machine id or a boot id the tags (and records) stay what they were before.
- **A node renamed** (another `--node` on the same machine) no longer owns what the
  old name wrote: GC and rollback leave those records alone, and nothing of them is
  deleted as an orphan (every known record claims its links and rules).

Test hook: `PODNET_TEST_NETNS_IDENTITY=dev:inode` replaces the namespace identity that
records carry and are judged by (only that: netlink sockets and caches keep the real
namespaces), so two agents of one test machine can look like two machines' root
namespaces. Standard library only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

from podnet import procs

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
TEST_NETNS_ENV = "PODNET_TEST_NETNS_IDENTITY"
_MACHINE_ID = re.compile(r"[0-9a-f]{32}")
_BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class NodeIdentity:
    """This node as the records it writes name it, and how it judges theirs."""

    machine_id: str  # "" when unknown: records then carry no node, as before
    boot_id: str
    node_name: str = ""  # the agent's --node
    netns_override: tuple[int, int] | None = None  # the test hook, see the module doc

    @classmethod
    def local(cls, node_name: str = "") -> NodeIdentity:
        return _local(node_name, os.environ.get(TEST_NETNS_ENV, ""))

    @property
    def node(self) -> str:
        """What this node writes into records and owner tags."""
        return self.node_name or self.machine_id

    @property
    def names(self) -> frozenset[str]:
        """Every node name this node answers to."""
        return frozenset(n for n in (self.node_name, self.machine_id) if n)

    def owns(self, node: str) -> bool:
        """Is a record naming `node` this node's? A record of before names none: its
        namespace decides (the caller checks that)."""
        return not node or node in self.names

    def owner(self, pid: int | None = None) -> str:
        """The owner tag of this process (or pid) on this node."""
        return procs.process_owner(pid, self.node if self.boot_id else "", self.boot_id)

    def owner_alive(self, tag: str) -> bool:
        """False only for an owner of this node that is provably dead."""
        return procs.owner_alive(tag, self.names, self.boot_id)


@lru_cache(maxsize=8)
def _local(node_name: str, netns_env: str) -> NodeIdentity:
    return NodeIdentity(machine_id(), boot_id(), node_name, _parse_netns(netns_env))


def machine_id() -> str:
    """This machine's id, or "" when it has none readable."""
    for path in MACHINE_ID_FILES:
        value = _read(path)
        if _MACHINE_ID.fullmatch(value):
            return value
    return ""


def boot_id() -> str:
    """The kernel's id of this boot, or "" when unreadable."""
    value = _read(BOOT_ID_FILE)
    return value if _BOOT_ID.fullmatch(value) else ""


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(100).strip().lower()
    except OSError:
        return ""


def _parse_netns(text: str) -> tuple[int, int] | None:
    dev, sep, inode = text.partition(":")
    if not sep or not dev.isdigit() or not inode.isdigit():
        return None
    return int(dev), int(inode)

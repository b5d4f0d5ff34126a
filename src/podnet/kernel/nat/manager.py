"""NatManager: the one place that touches the kernel's NAT tables (lock, read, check, apply).

Parsing and rendering are pure (parse.py, render.py); this module adds what needs the
kernel: the cross-process lock, reading the tables back, the conflict check against
what other attachments installed, route_localnet, and the `nft -f -` transaction.

route_localnet is switched on only after the transaction holding the loopback guard
(render.py) is in force, so no bridge ever takes 127.0.0.0/8 unguarded; if the switch
fails, the attachment's rules just installed are deleted again (nothing half-built).

An ADD reads both tables to check its ports and to replace the attachment's own rules,
a listing that grows with the node's pods (an ADD took 5.2-5.4 ms at 150 masqueraded
pods, 0.9-1.1 ms at the first ten). With a `generation` (kernel/nftgen.py), the manager
keeps what it read and what it added, and an ADD uses that while the namespace's
nftables generation has not moved since (no commit by anyone, in any table). What an
ADD added is kept only when the generation moved by its own commit alone, and without
the rules' handles: an ADD that would have to delete one reads the tables again, as
every delete does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator

from podnet import naming
from podnet.errors import KernelError, PodnetError, TryAgainLater
from podnet.kernel import netns, sysctl
from podnet.kernel.nat.parse import (
    FAMILIES,
    InstalledRule,
    IPInterface,
    check_attach_id,
    check_conflicts,
    check_ifname,
    has_guard,
    parse_port_mappings,
    parse_table,
)
from podnet.kernel.nat.render import GUARD, TABLE, plan_rules, render_delete, render_rules
from podnet.kernel.nft import NftPort

UNREAD = 0  # the handle of a rule this manager added and did not read back (nft's start at 1)

DEFAULT_LOCK_PATH = "/run/podnet/nft.lock"
LOCK_TIMEOUT = 30.0

_THREAD_LOCK = threading.Lock()  # process-wide: flock alone also serialises, but cheaply


class NatManager:
    """Installs and removes one attachment's NAT in the calling thread's namespace.

    The kernel tables are the only state. Changes are serialised across threads (a
    lock) and processes (flock on `lock_path`) because the plugin's in-process
    fallback and the agent may edit the same table; conflict checks read the table
    inside the same critical section as the change, so two ADDs cannot both win a port.
    """

    def __init__(
        self,
        nft: NftPort,
        lock_path: str = DEFAULT_LOCK_PATH,
        proc_sys: str = sysctl.PROC_SYS,
        lock_timeout: float = LOCK_TIMEOUT,
        generation: Callable[[], int | None] | None = None,
    ) -> None:
        self.nft = nft
        self.lock_path = lock_path
        self.proc_sys = proc_sys
        self.lock_timeout = lock_timeout
        self._generation = generation
        # (the namespace, pinned open so that its inode cannot be reused; its generation;
        # its rules) as the last ADD left them, read under the lock only
        self._known: tuple[int, int, list[InstalledRule]] | None = None

    # -- locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        deadline = time.monotonic() + self.lock_timeout
        if not _THREAD_LOCK.acquire(timeout=self.lock_timeout):
            raise TryAgainLater("nft lock busy (thread)")
        try:
            os.makedirs(os.path.dirname(self.lock_path) or ".", mode=0o755, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                delay = 0.002
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise TryAgainLater(f"nft lock {self.lock_path} busy") from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
                yield
            finally:
                os.close(fd)  # releases the flock
        finally:
            _THREAD_LOCK.release()

    # -- reading

    def _tables(self) -> dict[str, dict | None]:
        return {fam: self.nft.list_table_json(fam, TABLE) for fam in FAMILIES}

    def installed(self, tables: dict[str, dict | None] | None = None) -> list[InstalledRule]:
        """Every podnet-tagged rule in both tables (absent tables contribute nothing)."""
        docs = self._tables() if tables is None else tables
        return [rule for fam in FAMILIES for rule in parse_table(docs[fam])]

    def rules(self, network: str | None = None) -> dict[str, list[str]]:
        """attach_id -> ["<family> <chain> <rule text>", ...], for CHECK and diagnostics."""
        nid = naming.net_id(network) if network is not None else None
        out: dict[str, list[str]] = {}
        for r in self.installed():
            if nid is None or r.net_id == nid:
                out.setdefault(r.attach_id, []).append(r.describe())
        return out

    def check(
        self,
        network: str,
        attach_id: str,
        container_ips: list[IPInterface],
        port_mappings: list[dict],
        ip_masq: bool | Collection[str] = False,
        masq_exclude: Iterable[str] = (),
    ) -> list[str]:
        """The expected rules of an attachment that are missing (empty list: all there),
        the loopback guard included wherever the attachment has IPv4 rules."""
        check_attach_id(attach_id)
        expected = plan_rules(container_ips, parse_port_mappings(port_mappings), ip_masq, masq_exclude)
        tables = self._tables()
        nid = naming.net_id(network)
        have = {r.describe() for r in self.installed(tables) if (r.net_id, r.attach_id) == (nid, attach_id)}
        missing = [r.describe() for r in expected if r.describe() not in have]
        if any(r.family == GUARD.family for r in expected) and not has_guard(tables[GUARD.family]):
            missing.append(GUARD.describe())
        return missing

    # -- changing

    def add(
        self,
        network: str,
        attach_id: str,
        container_ips: list[IPInterface],
        port_mappings: list[dict],
        ip_masq: bool | Collection[str] = False,
        host_if: str | None = None,
        masq_exclude: Iterable[str] = (),
    ) -> None:
        """Install (or replace) an attachment's NAT in one transaction.

        Raises InvalidConfig for bad mappings, PortInUse when another attachment
        (of any network: the table is shared) already maps an overlapping host port.
        """
        check_attach_id(attach_id)
        if host_if is not None:
            check_ifname(host_if)
        mappings = parse_port_mappings(port_mappings)
        rules = plan_rules(container_ips, mappings, ip_masq, masq_exclude)
        nid = naming.net_id(network)
        with self._locked():
            try:
                installed, seen_at = self._known_rules()
                mine = [r for r in installed if (r.net_id, r.attach_id) == (nid, attach_id)]
                if any(r.handle == UNREAD for r in mine):  # to be deleted: their handles first
                    installed, seen_at = self._read_rules()
                    mine = [r for r in installed if (r.net_id, r.attach_id) == (nid, attach_id)]
                others = [r for r in installed if (r.net_id, r.attach_id) != (nid, attach_id)]
                check_conflicts(rules, others)
                script = render_delete(mine) + render_rules(network, attach_id, rules)
                self.nft.apply(script)
                added = [InstalledRule(r.family, r.chain, UNREAD, nid, attach_id, r.body, r.key) for r in rules]
                self._remember_after(others + added, seen_at, commits=1 if script.strip() else 0)
            except BaseException:
                self._forget()
                raise
            localnet = any(r.family == "ip" and r.key is not None for r in rules) and any(
                m.needs_localnet() for m in mappings if m.applies_to("ip")
            )
            if localnet and host_if is not None:
                try:
                    self._enable_route_localnet(host_if)
                except PodnetError:
                    self._delete_locked(lambda r: (r.net_id, r.attach_id) == (nid, attach_id))
                    raise

    # -- what the last ADD left, while nothing changed since (module docstring)

    def _known_rules(self) -> tuple[list[InstalledRule], int | None]:
        """The rules of both tables, and the generation they are true at: as kept when
        the namespace's generation has not moved since, else read."""
        known = self._known
        if known is not None and self._generation is not None:
            fd, generation, rules = known
            if _same_namespace(fd) and self._generation() == generation:
                return rules, generation
        return self._read_rules()

    def _read_rules(self) -> tuple[list[InstalledRule], int | None]:
        """Both tables read, and the generation taken before (a commit after it moves
        the generation: the ADD then keeps nothing, _remember_after)."""
        before = self._generation() if self._generation is not None else None
        return self.installed(), before

    def _remember_after(self, rules: list[InstalledRule], seen_at: int | None, commits: int) -> None:
        """After this ADD's transaction: keep `rules` (a list of its own) only if the
        generation moved by its own commit alone since the rules were true (anyone
        else's, even in another table, and the next ADD reads again)."""
        now = self._generation() if self._generation is not None else None
        if seen_at is None or now is None or now != (seen_at + commits) & 0xFFFFFFFF:
            self._forget()
            return
        fd = self._known[0] if self._known is not None and _same_namespace(self._known[0]) else None
        if fd is None:
            self._forget()
            fd = netns.current_netns_fd()
        self._known = (fd, now, rules)

    def _forget(self) -> None:
        known, self._known = self._known, None
        if known is not None:
            os.close(known[0])

    def remove(self, network: str, attach_id: str) -> int:
        """Delete an attachment's rules in one transaction; 0 when none (idempotent)."""
        nid = naming.net_id(network)
        gone = self._delete_where(lambda r: r.net_id == nid and r.attach_id == attach_id)
        return len(gone)

    def gc(self, network: str, keep_attach_ids: set[str]) -> set[str]:
        """Delete this network's rules whose attach_id is not kept; other networks stay."""
        nid = naming.net_id(network)
        keep = set(keep_attach_ids)
        gone = self._delete_where(lambda r: r.net_id == nid and r.attach_id not in keep)
        return {r.attach_id for r in gone}

    def remove_unclaimed(self, claimed: set[tuple[str, str]]) -> set[str]:
        """Delete every podnet rule whose (net_id, attach_id) is not claimed, whatever
        its network: the agent's resync uses it to drop rules orphaned by a crash."""
        gone = self._delete_where(lambda r: (r.net_id, r.attach_id) not in claimed)
        return {f"{r.net_id}:{r.attach_id}" for r in gone}

    def _delete_where(self, pred: Callable[[InstalledRule], bool]) -> list[InstalledRule]:
        with self._locked():
            return self._delete_locked(pred)

    def _delete_locked(self, pred: Callable[[InstalledRule], bool]) -> list[InstalledRule]:
        for attempt in (1, 2):
            victims = [r for r in self.installed() if pred(r)]
            if not victims:
                return []
            try:
                self.nft.apply(render_delete(victims))
                return victims
            except KernelError:
                # Someone outside podnet's lock (an operator's `nft delete`) may have
                # removed a handle between our listing and the transaction: re-read once.
                if attempt == 2:
                    raise
        return []  # pragma: no cover - the loop always returns or raises

    def _enable_route_localnet(self, host_if: str) -> None:
        """Let 127.0.0.0/8-sourced packets, DNATed in output, leave via `host_if`.

        /proc/sys/net resolves against the calling thread's namespace. The setting is
        per interface and shared by every attachment on it, so remove() never resets it.
        """
        sysctl.ensure("net.ipv4.conf", 1, host_if, "route_localnet", root=self.proc_sys)


def _same_namespace(fd: int) -> bool:
    """Whether the calling thread is in the namespace `fd` holds open."""
    return netns.identity(fd) == netns.current_identity()

"""The nftables port: run `nft` scripts as one atomic transaction, read tables as JSON.

Why the `nft` binary and not netlink: one `nft -f -` is a single kernel transaction
(all or nothing), the text is what an operator reads in `nft list ruleset`, and the
tool is already on every host. The subprocess is forked from the calling thread, so it
acts on that thread's network namespace; entering a namespace is the caller's job
(kernel/netns.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Protocol

from podnet.errors import KernelError

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})
MISSING = "No such file or directory"


class NftPort(Protocol):
    """What podnet needs from nftables; the real `Nft` and `FakeNft` both provide it."""

    def apply(self, script: str) -> None: ...

    def list_table_json(self, family: str, table: str) -> dict | None: ...

    def set_elements(self, family: str, table: str, name: str) -> list | None: ...

    def list_counters_json(self, family: str, table: str) -> dict | None: ...


def counter_totals(doc: dict | None) -> dict[str, tuple[int, int]]:
    """(packets, bytes) per comment in an `nft -j` listing: the anonymous counters of
    every commented rule plus every commented named counter object, summed by comment
    (one policy rule may be several lines; a service port's DNAT rules share one named
    counter). Read at scrape time by the policy and services metrics."""
    totals: dict[str, tuple[int, int]] = {}

    def add(comment: str, counter: dict) -> None:
        packets, octets = totals.get(comment, (0, 0))
        totals[comment] = (packets + int(counter.get("packets", 0)), octets + int(counter.get("bytes", 0)))

    for item in (doc or {}).get("nftables", []):
        if "counter" in item and "comment" in item["counter"]:
            add(item["counter"]["comment"], item["counter"])
        rule = item.get("rule")
        if rule and "comment" in rule:
            for expr in rule.get("expr", []):
                if isinstance(expr.get("counter"), dict):  # `counter name X` is a string: the object counts
                    add(rule["comment"], expr["counter"])
    return totals


def check_table(family: str, table: str, *names: str) -> None:
    """nft joins its arguments into one command line and parses that as a script
    (`list set ip t "x; flush ruleset"` would run both): only plain names go there."""
    if family not in _FAMILIES or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in (table, *names)):
        raise KernelError(f"invalid nft object {family!r} {' '.join(map(repr, (table, *names)))}")


def _find_nft() -> str:
    """`nft` from PATH, else the Debian location: a runtime may exec us with a bare PATH."""
    found = shutil.which("nft")
    if found:
        return found
    for path in ("/usr/sbin/nft", "/sbin/nft"):
        if os.access(path, os.X_OK):
            return path
    return "nft"  # let the exec fail with a clear error


class Nft:
    """The real port: runs the `nft` binary in the calling thread's namespace."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0) -> None:
        self.binary = binary or _find_nft()
        self.timeout = timeout

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [self.binary, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise KernelError(f"nft binary not found ({self.binary})") from None
        except subprocess.TimeoutExpired:
            raise KernelError(f"nft {' '.join(args)} timed out after {self.timeout}s") from None

    def apply(self, script: str) -> None:
        """Run `script` as one transaction; KernelError (with nft's stderr) if rejected."""
        if not script.strip():
            return
        proc = self._run(["-f", "-"], stdin=script)
        if proc.returncode != 0:
            raise KernelError("nft transaction failed", details=proc.stderr.strip())

    def list_table_json(self, family: str, table: str) -> dict | None:
        """`nft -j list table`: the parsed document, or None when the table is absent."""
        return self._list_json("table", family, table)

    def list_counters_json(self, family: str, table: str) -> dict | None:
        """`nft -j list counters table`: the table's named counters only (cheap: no rule,
        set or map is listed); None when the table is absent."""
        return self._list_json("counters table", family, table)

    def _list_json(self, what: str, family: str, table: str) -> dict | None:
        check_table(family, table)
        proc = self._run(["-j", "list", *what.split(), family, table])
        if proc.returncode != 0:
            if MISSING in proc.stderr:
                return None
            raise KernelError(f"nft list {what} {family} {table} failed", proc.stderr.strip())
        try:
            return json.loads(proc.stdout)
        except ValueError as exc:
            raise KernelError(f"nft printed invalid JSON for {what} {family} {table}", str(exc)) from None

    def set_elements(self, family: str, table: str, name: str) -> list | None:
        """The elements of one named set (cheap: nothing else of the table is listed);
        None when the table or the set is absent."""
        check_table(family, table, name)
        proc = self._run(["-j", "list", "set", family, table, name])
        if proc.returncode != 0:
            return None
        try:
            items = json.loads(proc.stdout)["nftables"]
        except (ValueError, KeyError) as exc:
            raise KernelError(f"nft printed invalid JSON for set {name}", str(exc)) from None
        for item in items:
            if "set" in item:
                return list(item["set"].get("elem", []))
        return None


class FakeNft:
    """Records scripts instead of running them; returns canned listings.

    Unit tests set `tables[(family, table)]` to a document shaped like `nft -j` output
    (or leave it out for "table absent"), and `fail` to make the next apply raise.
    """

    def __init__(self, tables: dict[tuple[str, str], dict] | None = None) -> None:
        self.scripts: list[str] = []
        self.tables: dict[tuple[str, str], dict] = dict(tables or {})
        self.fail: str | None = None
        self.list_calls: list[tuple[str, str]] = []

    def apply(self, script: str) -> None:
        if self.fail is not None:
            msg, self.fail = self.fail, None
            raise KernelError("nft transaction failed", details=msg)
        if script.strip():
            self.scripts.append(script)

    def list_table_json(self, family: str, table: str) -> dict | None:
        check_table(family, table)
        self.list_calls.append((family, table))
        return self.tables.get((family, table))

    def list_counters_json(self, family: str, table: str) -> dict | None:
        check_table(family, table)
        doc = self.tables.get((family, table))
        return None if doc is None else {"nftables": [i for i in doc.get("nftables", []) if "counter" in i]}

    def set_elements(self, family: str, table: str, name: str) -> list | None:
        check_table(family, table, name)
        doc = self.tables.get((family, table))
        if doc is None:
            return None
        for item in doc.get("nftables", []):
            if "set" in item and item["set"].get("name") == name:
                return list(item["set"].get("elem", []))
        return None

"""Reading the policy verdicts every node logged, from each node's cursor.

Each agent keeps the verdicts its NFLOG group saw, numbered (`policy.flows` answers
those after a sequence number, a page at a time, and the number to ask from next).
`FlowCursor` holds one such number per node, so `podnet flows --follow` and the
dashboard's live flow table each see every verdict once, whatever the page size. An
agent that restarted numbers from 1 again under a new `boot` in its reply: the cursor
of that node starts over, instead of waiting for the new numbers to pass the old one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnet.errors import PodnetError

PAGE = 1000


class FlowCursor:
    """node -> the last verdict seen; `fetch` returns what was logged since, oldest first."""

    def __init__(self, sockets: Mapping[str, str], page: int = PAGE, timeout: float = 5.0) -> None:
        self.sockets = dict(sockets)
        self.cursors = dict.fromkeys(self.sockets, 0)
        self.boots: dict[str, str | None] = dict.fromkeys(self.sockets)
        self.page = page
        self.timeout = timeout

    def fetch(self) -> list[dict[str, Any]]:
        from podnet.rpc.client import call

        found: list[dict[str, Any]] = []
        for node, sock in self.sockets.items():
            while True:  # page through everything the node has since our cursor
                try:
                    reply = call(sock, "policy.flows", timeout=self.timeout, since=self.cursors[node], limit=self.page)
                except PodnetError:
                    break  # a node whose agent is down has nothing to say right now
                boot = reply.get("boot")  # type: ignore[union-attr]
                if self.boots[node] is not None and boot != self.boots[node] and self.cursors[node]:
                    self.boots[node], self.cursors[node] = boot, 0  # the agent restarted: its numbers did too
                    continue
                self.boots[node] = boot
                self.cursors[node] = reply["next"]  # type: ignore[index]
                found += reply["flows"]  # type: ignore[index]
                if len(reply["flows"]) < self.page:  # type: ignore[index]
                    break
        return sorted(found, key=lambda f: f["time"])

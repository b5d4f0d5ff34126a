"""The background thread of an agent service (agent/ops.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class ServiceThread:
    """The background half every agent service shares: one named daemon thread that
    runs `target` until `stopping` is set. Threads are born in their creator's network
    namespace; the agent starts services from its main thread, which never leaves the
    agent's own namespace, so every socket such a thread opens lives there too."""

    def __init__(self, name: str, target: Callable[[], None], join_timeout: float = 10.0) -> None:
        self.name = name
        self.target = target
        self.join_timeout = join_timeout
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(target=self.target, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(self.join_timeout)
            self._thread = None

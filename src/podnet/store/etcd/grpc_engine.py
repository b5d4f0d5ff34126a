"""gRPC's classic polling engine for this process, unless GRPC_EXPERIMENTS says otherwise.

Why: every agent reads each watch event of the cluster (an etcd watch message per
commit), and gRPC's EventEngine client (on by default in grpcio 1.85) made one such
message cost a process 0.23-0.26 ms of CPU, against 0.18-0.22 ms with it off (a watcher
of a loopback etcd, 800 puts at 150 a second, three runs each). In a 50-node lab every
pod ADD is two messages to each of 49 agents: 50-52 ms of the bystanders' CPU per ADD
with it, 34-48 ms without (docs/architecture.md, etcd; bench/README.md, convergence).

It is a process-wide setting that gRPC reads when it starts, so it is set here, before
anything imports grpc (only podnet.store.etcd does). A user's own GRPC_EXPERIMENTS is
left alone.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

VARIABLE = "GRPC_EXPERIMENTS"
CLASSIC_CLIENT = "-event_engine_client"


def prefer_classic_client(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set GRPC_EXPERIMENTS to turn the EventEngine client off, unless it is set;
    True when this call set it."""
    if VARIABLE in environ:
        return False
    environ[VARIABLE] = CLASSIC_CLIENT
    return True


prefer_classic_client()

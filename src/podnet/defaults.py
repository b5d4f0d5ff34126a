"""Default paths, in a module of its own so the thin plugin imports nothing else."""

DEFAULT_SOCKET = "/run/podnet/agent.sock"
DEFAULT_STORE = "/var/lib/podnet/store.db"

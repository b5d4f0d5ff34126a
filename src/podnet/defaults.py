"""The default store path, in a module of its own so the standard-library-only paths
(podnet-ipam, the CNI config) import nothing else. The agent's default socket is
rpc/wire.py's, beside the framing the thin plugin speaks."""

DEFAULT_STORE = "/var/lib/podnet/store.db"

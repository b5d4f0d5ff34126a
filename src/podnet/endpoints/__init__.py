"""CNI endpoints: the `podnet` plugin's ADD, DEL, CHECK, GC and STATUS.

Used by the agent (agent/daemon.py serves them warm, agent/resync.py repairs what a
crash left) and by the plugin's in-process fallback when no agent answers, which
imports this package and nothing under `podnet.agent`.

- service.py: CniService, one invocation in one pass, and the five operations
- ipam.py: the IPAM interface, built-in (the store) or delegated (CNI_PATH)
- result.py: what ADD derives from the IPAM's typed result (routes, the CNI result)
- stores.py: every store that holds this machine's endpoints, noted where the agent
  finds them (the fallback's too)

This package imports none of its modules: podnet-ipam imports `endpoints.ipam` alone.
"""

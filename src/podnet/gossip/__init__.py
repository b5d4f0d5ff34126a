"""The gossip layer of `--fabric gossip` (issue 14, the Weave way): peers over TCP 6783
that authenticate each other, learn the rest of the mesh by gossip, agree on the
topology (shortest-path next hops), and replicate the IPAM ring and last-writer-wins
documents (DNS entries, cluster objects) without a datastore.

topology.py and lww.py are pure; wire.py and auth.py are sans-io (bytes and dicts in,
bytes and dicts out); peers.py is the only module that touches sockets.
"""

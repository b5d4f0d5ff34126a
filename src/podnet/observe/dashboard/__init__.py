"""`podnet dashboard`: a read-only web page of the cluster, served by podnet itself.

data.py reads the cluster (the same functions as `podnet status`, `flows` and
`trace`), snapshot.py joins what it read into the page's model (pure), hub.py polls
once for every open page and streams what changed (server-sent events), server.py
serves it all (standard library only, GET only, loopback by default), and static/
holds the page: plain HTML, CSS and a small script drawing the topology as SVG, with
no library and nothing loaded from elsewhere (the page works offline).
"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8642

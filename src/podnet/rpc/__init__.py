"""Talking to a node agent over its UNIX socket: the framing (wire.py, C modules only,
shared with the thin plugin) and the client of its JSON ops (client.py). Below the
agent, so networks, containers, the lab and the CLI call it without importing it."""

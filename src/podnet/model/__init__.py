"""The records podnet keeps in its store: one frozen type per key family (keys.py).

Each record has `to_json`/`from_json` (today's JSON field names) and `encode` (the
stored text). `from_json` validates what it reads back, so nothing from a store
reaches a kernel command unchecked. `model.records.decode(key, text)` picks the type
by key. The submodules are imported one by one (this package imports none of them),
so `podnet-ipam` pays only for the record it uses.
"""

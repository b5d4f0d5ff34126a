"""User-defined networks (`podnet network ...`): Docker-like networks kept in the store,
rendered as CNI conflists, and isolated from each other by one nftables table.

Pure parts: model.py (records), subnets.py (planning, allocation, overlaps),
conflist.py (rendering). I/O: service.py (store, files, the bridge link).
"""

"""Name resolution on user-defined networks: `records` (pure: store records -> one
zone per network) and `server` (a small UDP+TCP DNS server answering from a lookup
callable). The agent runs them through agent/dns_service.py.
"""

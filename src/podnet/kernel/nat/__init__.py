"""CNI port mappings and masquerade in nftables.

Layout (tables `ip podnet` and `ip6 podnet` in the caller's namespace):

    prerouting  (nat, priority dstnat)  DNAT of packets arriving from outside/containers
    output      (nat, priority -100)    DNAT of connections made by the host itself
    postrouting (nat, priority srcnat)  masquerade so replies come back through the NAT
    input       (filter, ip only)       the loopback guard: 127.0.0.0/8 only from lo or
                                        DNATed (route_localnet must not open the host's
                                        loopback to containers, CVE-2020-8558)

Every NAT rule carries the comment `podnet:<net_id>:<attach_id>` (see podnet.naming), so
DEL and GC delete rules by handle without keeping any state outside the kernel: the
kernel's table *is* the record of what is installed.

Modules (import from them directly; this file imports nothing, so loading the pure
parts never pulls in the manager's locking and kernel access):

    parse    port mappings and the rule model, validated; `nft -j` listings read back (pure)
    render   the rules an attachment needs and the nft transaction text (pure)
    manager  NatManager: lock, read the tables, refuse conflicts, apply
"""

"""The sleeve: podnet gossip's userspace UDP data path (port 6784) through a TUN
device, optionally encrypted. See datapath.py for the design."""

"""Cluster state shared by the nodes of one cluster: node leases and their blocks."""

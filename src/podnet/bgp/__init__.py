"""BGP the Calico way: BIRD 2 on every node, configured from the store (issue 12)."""

"""Network policy: Kubernetes NetworkPolicy plus podnet's tiered ClusterPolicy (pure core)."""

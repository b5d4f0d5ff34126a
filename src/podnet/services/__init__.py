"""Services: Kubernetes Service and EndpointSlice objects, ClusterIP and NodePort
allocation, and the per-node nftables load balancer that implements them."""

"""`podnet host join|leave`: a plain machine (VM, bare metal) on the pod network,
without an agent. plan.py (pure: address and routes from the store's leases and
claims), reserve.py (the address and the `hosts/<name>` record in the store),
apply.py (the plan in the kernel, pyroute2), routes.py (what nodes route back),
kinds.py (`podnet get hosts`)."""

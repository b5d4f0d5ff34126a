"""Containers: `podnet container run|ls|inspect|exec|logs|stop|rm` with Docker's four
network modes, attached through podnet's own CNI path exactly as a runtime would.

- `spec`: pure parsing and validation (names, -p, --network), and the record
  (podnet.model.container) a request becomes;
- `records`: the `containers/<name>` records (ContainerRecord) in the store (CAS, so
  names stay unique);
- `files`: hostname, hosts and resolv.conf rendered into the container's directory;
- `network`: networks read from the store and net.d, network namespaces, CNI ADD/DEL
  with a result cache (libcni semantics);
- `process`: the argv that enters the namespaces, output tee, stopping by pid;
- `lifecycle`: run (with rollback), finish (exited + CNI DEL + netns), stop, rm;
- `connect`: connect/disconnect a running container to/from further networks.

Detached containers are children of the agent (agent/supervisor_service.py); the CLI
is the parent of foreground ones. Both finish a container with `lifecycle.finish`.
"""

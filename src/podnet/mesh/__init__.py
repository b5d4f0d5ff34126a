"""The service mesh: objects, identities, certificates and the HAProxy sidecar's control."""

"""How a kind of object is declared (kind.py) and how its manifests are read, field
by field (fields.py). The pure bottom of the object model: domains declare their
kinds with it, and the registry (podnet.objects) lists them."""

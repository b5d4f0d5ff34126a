"""The kind registry and what acts on objects of any kind: apply, delete, get, label
(store.py) and describe (describe.py). Kinds are declared by their domains
(policy/kinds.py, cluster/kinds.py) and listed once in registry.py."""

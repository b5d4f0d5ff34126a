"""Clusters joined into a clusterset: records (model.py), what a node should hold
(plan.py), and the kernel side (kernel.py); agent/clusterset_service.py runs them."""

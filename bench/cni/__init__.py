"""The parts of bench/cni_latency.py: its lab, its plugin calls, and its two benchmarks
(latency, profile)."""

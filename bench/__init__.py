"""Benchmarks that print what they measured (run with ``python -m bench.<name>``)."""

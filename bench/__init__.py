"""Benchmarks of the receiver and the workers; run with ``.venv/bin/python -m bench`` (see docs/BENCHMARKS.md)."""

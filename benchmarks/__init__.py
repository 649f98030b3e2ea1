"""Tailor benchmarks: `make bench` (see BENCHMARKS.md)."""

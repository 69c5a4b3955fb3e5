"""Benchmarks, run from the repository root as `python -m bench.NAME` (BENCHMARKS.md has their figures)."""

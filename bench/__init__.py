"""Benchmarks, run from the repository root as `python -m bench.NAME` (BENCHMARKS.md has their figures)."""

import tfenv  # noqa: F401  (every benchmark loads TensorFlow, which reads its settings when it loads)

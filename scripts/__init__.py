"""Scripts a user runs from the repository root: the benchmark (``python -m benchmarks.bench``), demo helpers."""

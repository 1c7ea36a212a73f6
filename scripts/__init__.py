"""Scripts a user runs from the repository root: the benchmark (``python -m scripts.bench``), demo helpers."""

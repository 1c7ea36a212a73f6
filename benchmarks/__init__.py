"""Benchmarks that measure the product at scale (``python -m benchmarks.<name>``).

They sit on top of every layer: they may import ``dapt`` and ``classify``; nothing imports them.
``corpus_scale`` measures stage 1's data path (read, clean, held-out split, tokenize, pack) on
generated corpora from ~10 MB to several GB; ``docs/benchmarks.md`` holds its table.
"""

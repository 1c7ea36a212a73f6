"""Benchmarks that measure the product at scale (``python -m benchmarks.<name>``).

They sit on top of every layer: they may import ``dapt`` and ``classify``; nothing imports them.
``corpus_scale`` measures stage 1's data path (read, clean, held-out split, tokenize, pack) on
generated corpora from ~10 MB to several GB; ``int8_sensitivity`` which MatMuls make dynamic int8
change a classifier's labels and what keeping them fp32 costs (``dapt-export --int8-calibrate``'s
code, issue 21 section 4). ``docs/benchmarks.md`` holds their tables.
"""

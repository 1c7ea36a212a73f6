"""Inference speed of the ONNX export against PyTorch, in one process, as ratios.

    python benchmarks/bench_onnx.py RUN_DIR [--export DIR] [--reviews 256] [--threads 1 2] [--repeats 3]

Scores the same seeded subset of IMDb test reviews with ``infer_reviews`` on the PyTorch classifier
and on the fp32 / graph-optimised int8 ONNX Runtime graphs of ``dapt-export RUN_DIR --onnx --int8``
(all through the same ``infer_reviews``, so tokenisation and batching are identical), and reports
the median reviews/s of each and its ratio to PyTorch at the same thread count. Timings on a shared
machine move with its load; the ratios, measured back to back, are what to read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from classify.release.export import INT8_FILE, OnnxClassifier, imdb_test_reviews
from classify.model import infer_reviews, load_classifier


def median_rate(run, count: int, repeats: int) -> float:
    run()  # warm-up: first-call allocations and ORT's lazy initialisation
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return count / statistics.median(times)


def bench(run_dir, export_dir, reviews: int, threads: list[int], repeats: int, batch_size: int, data_dir=None) -> list[dict]:
    texts, _ = imdb_test_reviews(reviews, data_dir)
    classifier, tokenizer = load_classifier(run_dir)
    rows, previous = [], torch.get_num_threads()
    for count in threads:
        torch.set_num_threads(count)
        variants = {"pytorch": lambda: infer_reviews(texts, classifier, tokenizer, batch_size=batch_size)}
        fp32 = OnnxClassifier(export_dir, threads=count)
        variants["onnx fp32"] = lambda: fp32.infer_reviews(texts, batch_size=batch_size)
        if (Path(export_dir) / INT8_FILE).is_file():
            int8 = OnnxClassifier(export_dir, int8=True, threads=count, allow_unverified=True)  # speed, not answers
            variants["onnx int8 (graph-optimised)"] = lambda: int8.infer_reviews(texts, batch_size=batch_size)
        base = None
        for name, run in variants.items():
            rate = median_rate(run, len(texts), repeats)
            base = base or rate
            rows.append({"threads": count, "variant": name, "reviews_per_s": rate, "vs_pytorch": rate / base})
    torch.set_num_threads(previous)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--export", help="dapt-export folder (default RUN_DIR/onnx)")
    parser.add_argument("--reviews", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    export_dir = args.export or str(Path(args.run_dir) / "onnx")
    rows = bench(args.run_dir, export_dir, args.reviews, args.threads, args.repeats, args.batch_size, args.data_dir)
    print(f"{'threads':>7}  {'variant':<28}  {'reviews/s':>9}  {'vs PyTorch':>10}")
    for row in rows:
        print(f"{row['threads']:>7}  {row['variant']:<28}  {row['reviews_per_s']:>9.1f}  {row['vs_pytorch']:>9.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

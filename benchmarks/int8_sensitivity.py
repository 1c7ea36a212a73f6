"""Which MatMuls make dynamic int8 change a classifier's labels, and what keeping them fp32 costs.

    nice -n 10 python -m benchmarks.int8_sensitivity RUN [--export DIR] [--calibration 600] [--check 1000]
        [--threads 1 2] [--timing-reviews 128] [--repeats 5] [--json OUT]

Issue 21, section 4. In one process:

1. **Calibration slice, never test**: the run's validation reviews (stage 2's stratified split of
   its training split, reproduced from ``RUN/config.yaml``: seed, ``validation_size``), topped up to
   ``--calibration`` with other reviews of that split the model never trained on
   (:func:`classify.release.export_int8.calibration_slice`).
2. **Per-node sensitivity and greedy exclusion**, the code ``dapt-export --int8-calibrate N`` runs
   (:func:`classify.release.export_int8.choose_fp32_matmuls`): each weight MatMul of the graph-optimised
   fp32 graph quantised alone, ranked by mean |dP| against PyTorch on the first 200 calibration
   reviews; then all quantised but the top k, k = 0, 1, ... until label agreement with PyTorch on
   the whole slice reaches 99.5 %.
3. Full int8 (every weight MatMul, as ``dapt-export --int8``) on the calibration slice, for comparison.
4. **Confirmation on the ``--check`` set** (IMDb test, the seeded stratified subset of
   ``dapt-export --check``): agreement, max |dP| and accuracy change of fp32, full int8 and the
   selective int8 graph.
5. **Speed**: PyTorch, fp32 ONNX, full and selective int8 on the same ``--timing-reviews`` texts
   through ``infer_reviews``, 1 and 2 threads, rounds interleaved (every variant once per round);
   the ratio to PyTorch (and to fp32 ONNX) is the median over rounds of PyTorch's (fp32 ONNX's)
   time / the variant's in that round.

Numbers on a shared machine move with its load (printed with the results); only ratios measured in
this one run are meant to be read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from classify.release.export import FP32_FILE, OnnxClassifier, encoder_shape, export_onnx, imdb_test_reviews
from classify.release.export_check import compare
from classify.release.export_int8 import calibration_slice, choose_fp32_matmuls, optimize, quantize, weight_matmuls
from classify.model import infer_reviews, load_classifier, predict_proba


FP32_VARIANT = "onnx fp32"


def served(export_dir: Path, graph: Path, threads: int) -> OnnxClassifier:
    """``export_dir``'s config and tokenizer answering with ``graph`` (a measurement: unverified)."""
    return OnnxClassifier(export_dir, graph=graph, threads=threads, allow_unverified=True)


def probabilities(model, texts, batch_size=32) -> np.ndarray:
    return np.asarray(model.predict_proba(texts, batch_size=batch_size, all_classes=True))


def timing(classifier, tokenizer, variants: dict, texts, threads: list[int], repeats: int, batch_size=32) -> list[dict]:
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        runs = {"pytorch": lambda: infer_reviews(texts, classifier, tokenizer, batch_size=batch_size)}
        for name, (export_dir, graph) in variants.items():
            model = served(export_dir, graph, count)
            runs[name] = lambda model=model: model.infer_reviews(texts, batch_size=batch_size)
        for run in runs.values():
            run()  # warm-up
        seconds = {name: [] for name in runs}
        for _ in range(repeats):  # interleaved: every variant once per round
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - started)
        for name, times in seconds.items():
            speedups = [base / own for base, own in zip(seconds["pytorch"], times)]
            row = {"threads": count, "variant": name, "median_s": statistics.median(times),
                   "reviews_per_s": len(texts) / statistics.median(times),
                   "vs_pytorch": statistics.median(speedups), "vs_pytorch_range": [min(speedups), max(speedups)]}
            if FP32_VARIANT in seconds:
                row["vs_onnx_fp32"] = statistics.median(f / own for f, own in zip(seconds[FP32_VARIANT], times))
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--export", type=Path, help="an fp32 dapt-export folder of RUN (default: export into a temp dir)")
    parser.add_argument("--calibration", type=int, default=600)
    parser.add_argument("--check", type=int, default=1000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--eval-threads", type=int, default=2)
    parser.add_argument("--timing-reviews", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = {"arguments": [str(arg) for arg in (sys.argv[1:] if argv is None else argv)], "load_before": os.getloadavg()}
    classifier, tokenizer = load_classifier(args.run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_dir = args.export
        if export_dir is None:
            export_dir = work / "export"
            export_onnx(args.run_dir, export_dir)
        optimized = work / "optimized.onnx"
        optimize(export_dir / FP32_FILE, optimized, *encoder_shape(classifier))
        texts, labels, described = calibration_slice(args.run_dir, args.calibration)
        report["calibration"] = described
        report["weight_matmuls"] = len(weight_matmuls(optimized))
        print(f"calibration: {described}; {report['weight_matmuls']} weight MatMuls", flush=True)
        reference = np.asarray(predict_proba(texts, classifier, tokenizer, batch_size=32, all_classes=True))
        full = quantize(optimized, work / "full.onnx")
        result = compare(reference, probabilities(served(export_dir, full, args.eval_threads), texts), labels)
        report["calibration_full_int8"] = result
        print(f"full int8 on the calibration slice: agreement {result['agreement']:.2%}", flush=True)
        def score(graph, some):
            return probabilities(served(export_dir, graph, args.eval_threads), some)

        chosen = choose_fp32_matmuls(optimized, work, score, texts, reference, labels,
                                     progress=lambda line: print(line, flush=True))
        report.update(chosen)
        excluded = [row["node"] for row in chosen["fp32_matmuls"]]
        selective = quantize(optimized, work / "selective.onnx", exclude=excluded)

        check_texts, check_labels = imdb_test_reviews(args.check, args.data_dir)
        # IMDb's test split repeats a few training reviews verbatim: say how many the two sets share
        report["calibration_texts_also_in_check_set"] = len(set(texts) & set(check_texts))
        check_reference = np.asarray(predict_proba(check_texts, classifier, tokenizer, batch_size=32, all_classes=True))
        graphs = {FP32_VARIANT: export_dir / FP32_FILE, "onnx int8 (all MatMuls)": full,
                  f"onnx int8 ({len(excluded)} MatMuls fp32)": selective}
        report["check"] = {"n": len(check_texts), "texts": "IMDb test reviews, seeded stratified subset (dapt-export --check)"}
        for name, graph in graphs.items():
            result = compare(check_reference, probabilities(served(export_dir, graph, args.eval_threads), check_texts),
                             check_labels)
            report["check"][name] = result
            print(f"check {name}: agreement {result['agreement']:.2%} ({result['disagreements']} differ), max |dP| "
                  f"{result['max_abs_prob_diff']:.3f}, accuracy {result['accuracy_torch']:.4f} -> "
                  f"{result['accuracy_onnx']:.4f}", flush=True)
        report["load_before_timing"] = os.getloadavg()
        timed = check_texts[: args.timing_reviews]
        report["timing"] = timing(classifier, tokenizer, {name: (export_dir, graph) for name, graph in graphs.items()},
                                  timed, args.threads, args.repeats)
        report["load_after"] = os.getloadavg()
    for row in report["timing"]:
        print(f"{row['threads']} thread(s)  {row['variant']:<28} {row['reviews_per_s']:7.1f} reviews/s  "
              f"{row['vs_pytorch']:.2f}x PyTorch (rounds {row['vs_pytorch_range'][0]:.2f}-{row['vs_pytorch_range'][1]:.2f})"
              + (f", {row['vs_onnx_fp32']:.2f}x fp32 ONNX" if "vs_onnx_fp32" in row else ""))
    print(f"load average before / before timing / after: {report['load_before']} / {report['load_before_timing']} / "
          f"{report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

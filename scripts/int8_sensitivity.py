"""Which MatMuls make dynamic int8 change a classifier's labels, and what keeping them fp32 costs.

    python -m scripts.int8_sensitivity RUN [--calibration 600] [--sensitivity 200] [--check 1000]
                                           [--threads 1 2] [--timing-reviews 128] [--repeats 5] [--json OUT]

Issue 21, section 4. In one process:

1. **Calibration slice, never test**: the run's validation reviews (stage 2's stratified split of
   its training split, reproduced from ``RUN/config.yaml``: seed, ``validation_size``), topped up to
   ``--calibration`` with other reviews of that split the model never trained on (neither
   validation nor the ``max_samples`` subset stage 2 trained on).
2. **Per-node sensitivity**: for each weight MatMul of the graph-optimised fp32 graph (the graph
   ``dapt-export --int8`` quantises), a graph with only that MatMul quantised; its labels that
   differ from PyTorch's and its mean |dP| on the first ``--sensitivity`` calibration reviews.
3. **Greedy exclusion**: every MatMul quantised but the most sensitive k, k = 0, 1, 2, ... until
   label agreement with PyTorch on the whole calibration slice reaches 99.5 %.
4. **Confirmation on the ``--check`` set** (IMDb test, the seeded stratified subset of
   ``dapt-export --check``): agreement, max |dP| and accuracy change of fp32, full int8 and the
   selective int8 graph.
5. **Speed**: PyTorch, fp32 ONNX, full and selective int8 on the same ``--timing-reviews`` texts
   through ``infer_reviews``, 1 and 2 threads, rounds interleaved (every variant once per round);
   the ratio to PyTorch is the median over rounds of PyTorch's time / the variant's in that round.

Numbers on a shared machine move with its load (printed with the results); only ratios measured in
this one run are meant to be read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from classify.data import LabelledSetConfig, load_labelled, stratified_split, stratified_subset
from classify.export import FP32_FILE, OnnxClassifier, export_onnx, imdb_test_reviews
from classify.export_check import INT8_MIN_AGREEMENT, compare
from classify.model import infer_reviews, load_classifier, predict_proba


def calibration_slice(run_dir: Path, count: int) -> tuple[list[str], list[int], str]:
    """The run's validation reviews, then unused training-split reviews, ``count`` in all (see above)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    data, seed = config["data"], config["train"]["seed"]
    fields = {k: v for k, v in data["train"].items() if k in LabelledSetConfig.__dataclass_fields__}
    labelled = load_labelled(LabelledSetConfig(**{**fields, "max_samples": 0}), seed=seed, declared=data.get("labels"))
    rest, held_out = stratified_split(labelled.labels, data["validation_size"], seed)  # as classify.train
    max_samples = data["train"].get("max_samples") or 0
    rest_labels = [labelled.labels[i] for i in rest]
    trained = set(stratified_subset(rest_labels, max_samples, seed)) if 0 < max_samples < len(rest) else set(range(len(rest)))
    unused = [rest[i] for i in range(len(rest)) if i not in trained]
    extra = max(count - len(held_out), 0)
    picked = [unused[i] for i in stratified_subset([labelled.labels[i] for i in unused], extra, seed + 1)] if extra else []
    indices = list(held_out)[:count] + picked
    described = (f"{len(held_out[:count])} validation reviews + {len(picked)} unused reviews of "
                 f"{data['train'].get('name') or data['train']['path']} split {data['train']['split']}")
    return [labelled.texts[i] for i in indices], [labelled.labels[i] for i in indices], described


def optimized_fp32(export_dir: Path, classifier, work: Path) -> Path:
    """The fp32 graph after the BERT fusions, as :func:`classify.export.quantize_int8` quantises it."""
    from onnxruntime.transformers.optimizer import optimize_model

    from classify.export import _encoder_shape

    heads, hidden = _encoder_shape(classifier)
    optimized = optimize_model(str(export_dir / FP32_FILE), model_type="bert", num_heads=heads, hidden_size=hidden)
    path = work / "optimized.onnx"
    optimized.save_model_to_file(str(path))
    return path


def weight_matmuls(path: Path) -> list[str]:
    """Names of the MatMuls with a constant weight input (the ones dynamic quantisation touches), in graph order."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {init.name for init in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    return [node.name for node in graph.node if node.op_type == "MatMul" and any(i in constants for i in node.input)]


def matmul_roles(path: Path) -> dict[str, str]:
    """A readable role per weight MatMul ("layer 2 FFN in"), from the weight's shape and what feeds
    it (the export's node names say nothing): [H, H] on an input three MatMuls share is a Q/K/V
    projection, another [H, H] the attention output, [H, 4H] the FFN's first and [4H, H] its second
    MatMul, which ends a layer."""
    import onnx

    graph = onnx.load(str(path)).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and any(i in shapes for i in n.input)]
    readers = {}
    for node in matmuls:
        readers[node.input[0]] = readers.get(node.input[0], 0) + 1
    roles, layer = {}, 0
    for node in matmuls:
        rows, cols = next(shapes[i] for i in node.input if i in shapes)
        if rows == cols:
            role = "attention Q/K/V" if readers[node.input[0]] >= 3 else "attention output"
        elif cols > rows:
            role = "FFN in"
        else:
            role = "FFN out"
        roles[node.name] = f"layer {layer} {role}"
        layer += role == "FFN out"
    return roles


def quantize(optimized: Path, out: Path, *, include=None, exclude=None) -> Path:
    """``quantize_dynamic`` as dapt-export --int8 runs it, restricted to / excluding some MatMuls."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(optimized, out, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                     nodes_to_quantize=list(include or []), nodes_to_exclude=list(exclude or []))
    return out


def served(export_dir: Path, graph: Path, threads: int) -> OnnxClassifier:
    """An OnnxClassifier of ``export_dir`` (its config and tokenizer) answering with ``graph``."""
    import onnxruntime

    model = OnnxClassifier(export_dir, threads=threads)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    model.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return model


def probabilities(model, texts, batch_size=32) -> np.ndarray:
    return np.asarray(model.predict_proba(texts, batch_size=batch_size, all_classes=True))


def sensitivity(export_dir, optimized, nodes, texts, reference, labels, work, threads) -> list[dict]:
    """One row per MatMul, most sensitive first: quantised alone, how far it moves the answers."""
    rows, roles = [], matmul_roles(optimized)
    for index, node in enumerate(nodes):
        graph = quantize(optimized, work / "one.onnx", include=[node])
        result = compare(reference, probabilities(served(export_dir, graph, threads), texts), labels)
        rows.append({"node": node, "role": roles.get(node, "?"), "flips": result["disagreements"], "mean_abs_prob_diff": result["mean_abs_prob_diff"],
                     "max_abs_prob_diff": result["max_abs_prob_diff"]})
        print(f"  [{index + 1}/{len(nodes)}] {node} ({roles.get(node, '?')}): {result['disagreements']} flips, mean |dP| "
              f"{result['mean_abs_prob_diff']:.2e}", flush=True)
    return sorted(rows, key=lambda row: (row["mean_abs_prob_diff"], row["flips"]), reverse=True)


def greedy(export_dir, optimized, ranked, texts, reference, labels, work, threads, max_excluded) -> tuple[list[str], list[dict]]:
    steps = []
    for count in range(0, min(max_excluded, len(ranked)) + 1):
        excluded = [row["node"] for row in ranked[:count]]
        graph = quantize(optimized, work / "greedy.onnx", exclude=excluded)
        result = compare(reference, probabilities(served(export_dir, graph, threads), texts), labels)
        steps.append({"excluded": count, "agreement": result["agreement"], "flips": result["disagreements"],
                      "mean_abs_prob_diff": result["mean_abs_prob_diff"]})
        print(f"  excluding {count}: agreement {result['agreement']:.2%} ({result['disagreements']} differ)", flush=True)
        if result["agreement"] >= INT8_MIN_AGREEMENT:
            return excluded, steps
    return excluded, steps


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
            rows.append({"threads": count, "variant": name, "median_s": statistics.median(times),
                         "reviews_per_s": len(texts) / statistics.median(times),
                         "vs_pytorch": statistics.median(speedups), "vs_pytorch_range": [min(speedups), max(speedups)]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--export", type=Path, help="an fp32 dapt-export folder of RUN (default: export into a temp dir)")
    parser.add_argument("--calibration", type=int, default=600)
    parser.add_argument("--sensitivity", type=int, default=200, help="calibration reviews scored per single-node graph")
    parser.add_argument("--check", type=int, default=1000)
    parser.add_argument("--max-excluded", type=int, default=12)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--eval-threads", type=int, default=2)
    parser.add_argument("--timing-reviews", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = {"load_before": os.getloadavg()}
    classifier, tokenizer = load_classifier(args.run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_dir = args.export or export_onnx(args.run_dir, work / "export") and work / "export"
        optimized = optimized_fp32(export_dir, classifier, work)
        nodes = weight_matmuls(optimized)
        texts, labels, described = calibration_slice(args.run_dir, args.calibration)
        report.update(calibration=described, weight_matmuls=len(nodes))
        print(f"calibration: {described}; {len(nodes)} weight MatMuls", flush=True)
        reference = np.asarray(predict_proba(texts, classifier, tokenizer, batch_size=32, all_classes=True))
        full = quantize(optimized, work / "full.onnx")
        result = compare(reference, probabilities(served(export_dir, full, args.eval_threads), texts), labels)
        report["calibration_full_int8"] = result
        print(f"full int8 on the calibration slice: agreement {result['agreement']:.2%}", flush=True)
        n = args.sensitivity
        report["sensitivity"] = ranked = sensitivity(export_dir, optimized, nodes, texts[:n], reference[:n], labels[:n], work,
                                                     args.eval_threads)
        excluded, report["greedy"] = greedy(export_dir, optimized, ranked, texts, reference, labels, work,
                                            args.eval_threads, args.max_excluded)
        report["excluded"] = excluded
        selective = quantize(optimized, work / "selective.onnx", exclude=excluded)

        check_texts, check_labels = imdb_test_reviews(args.check, args.data_dir)
        # IMDb's test split repeats a few training reviews verbatim: say how many the two sets share
        report["calibration_texts_also_in_check_set"] = len(set(texts) & set(check_texts))
        check_reference = np.asarray(predict_proba(check_texts, classifier, tokenizer, batch_size=32, all_classes=True))
        graphs = {"onnx fp32": export_dir / FP32_FILE, "onnx int8 (all MatMuls)": full,
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
              f"{row['vs_pytorch']:.2f}x PyTorch (rounds {row['vs_pytorch_range'][0]:.2f}-{row['vs_pytorch_range'][1]:.2f})")
    print(f"load average before / before timing / after: {report['load_before']} / {report['load_before_timing']} / "
          f"{report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

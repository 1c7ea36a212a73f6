"""The int8 graph of ``dapt-export --int8``: BERT fusions, then dynamic int8 weights on the MatMuls,
optionally keeping in fp32 the MatMuls whose quantisation moves the answers most (``--int8-calibrate N``).

* **Fusions and quantisation** (:func:`quantize_int8`): ``onnxruntime.transformers.optimizer``
  (attention, LayerNorm, bias-GELU) on the fp32 graph, then ``quantize_dynamic`` with per-channel
  int8 weights on the MatMuls that have a constant weight (embeddings stay fp32).
* **Calibrated choice** (:func:`choose_fp32_matmuls`, issue 21): on a calibration slice of the
  run's *training* split (:func:`calibration_slice`: its validation reviews, topped up with reviews
  stage 2 never trained on; never a test split), each weight MatMul is quantised alone and ranked by
  how far it moves the probabilities from PyTorch's (mean |dP| over the first
  :data:`SENSITIVITY_REVIEWS`); then all are quantised but the top k, k = 0, 1, ... until at least
  :data:`~classify.release.export_check.INT8_MIN_AGREEMENT` of the slice's labels agree with PyTorch (at most
  half of them kept fp32). ``--check`` then measures the result on its own texts, as for any int8 graph.

Measured on the demo classifier (docs/benchmarks.md, "int8 ONNX (issue 21, section 4)"): the FFN
MatMuls of the first layers are the sensitive ones; keeping 4 of 36 in fp32 (layers 0-2 FFN out,
layer 1 FFN in) took the 600-review calibration slice from 98.5 % to 99.5 % label agreement (9 -> 3
differ). On 1,000 IMDb test reviews (``--check``) agreement stayed 99.5 % (5 differ, as with every
MatMul quantised) while mean |dP| fell from 0.012 to 0.0068; 1.80x PyTorch's speed on one thread
(every MatMul int8: 2.11x).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

from classify.release.export_check import INT8_MIN_AGREEMENT, RUN_CONFIG, ExportError, compare

#: calibration reviews each single-MatMul graph is scored on (the ranking); the greedy choice uses all
SENSITIVITY_REVIEWS = 200


# --------------------------------------------------------------------------------------------
# The calibration slice
# --------------------------------------------------------------------------------------------


def calibration_slice(run_dir, count: int) -> tuple[list[str], list[int], str]:
    """``count`` labelled reviews of the run's training split that stage 2 did not train on: its
    validation slice (``RUN/config.yaml``'s seed and ``validation_size``, as :mod:`classify.train`
    splits), then a seeded stratified subset of the reviews outside the ``max_samples`` it trained
    on. (texts, class indices, description)."""
    import yaml

    from classify.config import ClassifyConfig
    from classify.data import LabelledSetConfig, load_labelled, stratified_split, stratified_subset
    from dapt.core.config import ConfigError, load_config
    from dapt.core.sources import DataError

    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ExportError(f"{path} not found: --int8-calibrate needs a stage-2 run folder (its training data)")
    try:
        config = load_config(ClassifyConfig, path)
        data, seed = config.data, config.train.seed
        train = LabelledSetConfig(**{**dataclasses.asdict(data.train), "max_samples": 0})
        labelled = load_labelled(train, seed=seed, declared=data.labels)
        rest, held_out = stratified_split(labelled.labels, data.validation_size, seed)
    except (ConfigError, DataError, FileNotFoundError, yaml.YAMLError) as error:
        raise ExportError(f"calibration data ({path}): {str(error).splitlines()[0]}") from None
    rest_labels = [labelled.labels[i] for i in rest]
    trained = data.train.max_samples
    trained = set(stratified_subset(rest_labels, trained, seed)) if 0 < trained < len(rest) else set(range(len(rest)))
    unused = [rest[i] for i in range(len(rest)) if i not in trained]
    validation = list(held_out)[:count]
    extra = min(count - len(validation), len(unused))
    picked = [unused[i] for i in stratified_subset([labelled.labels[i] for i in unused], extra, seed + 1)] if extra > 0 else []
    indices = validation + picked
    described = (f"{len(validation)} validation reviews + {len(picked)} unused reviews of "
                 f"{data.train.name or data.train.path} split {data.train.split}")
    return [labelled.texts[i] for i in indices], [labelled.labels[i] for i in indices], described


# --------------------------------------------------------------------------------------------
# The graph's MatMuls
# --------------------------------------------------------------------------------------------


def weight_matmuls(path: Path) -> list[str]:
    """The MatMuls with a constant weight (the ones dynamic quantisation touches), in graph order."""
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
    readers: dict[str, int] = {}
    for node in matmuls:
        readers[node.input[0]] = readers.get(node.input[0], 0) + 1
    roles, layer = {}, 0
    for node in matmuls:
        rows, cols = next(shapes[i] for i in node.input if i in shapes)
        if rows == cols:
            role = "attention Q/K/V" if readers[node.input[0]] >= 3 else "attention output"
        else:
            role = "FFN in" if cols > rows else "FFN out"
        roles[node.name] = f"layer {layer} {role}"
        layer += role == "FFN out"
    return roles


def optimize(fp32_path: Path, out_path: Path, num_heads: int, hidden_size: int) -> dict:
    """The BERT fusions on the fp32 graph, saved to ``out_path``; the fused operators' counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(fp32_path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    optimized.save_model_to_file(str(out_path))
    return {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}


def quantize(optimized: Path, out: Path, *, include=(), exclude=()) -> Path:
    """Dynamic int8 as ``dapt-export --int8`` does it, on only / all but some MatMuls."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weight scales and MatMuls only (embeddings stay fp32): measured on a trained
    # MiniLM over 400 IMDb test reviews, label agreement 97.0 % (defaults) -> 99.0 % (this).
    quantize_dynamic(optimized, out, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                     nodes_to_quantize=list(include), nodes_to_exclude=list(exclude))
    return out


# --------------------------------------------------------------------------------------------
# Which MatMuls stay fp32
# --------------------------------------------------------------------------------------------

Scorer = Callable[[Path, list[str]], list]  # (graph, texts) -> every class's probability per text


def choose_fp32_matmuls(optimized: Path, work: Path, score: Scorer, texts: list[str], reference, labels,
                        progress: Callable[[str], None] = lambda line: None) -> dict:
    """The sensitivity ranking and greedy choice described in the module docstring: ``{"fp32_matmuls":
    [{"node", "role"}], "sensitivity": [...], "greedy": [...]}``."""
    nodes, roles = weight_matmuls(optimized), matmul_roles(optimized)
    n = min(SENSITIVITY_REVIEWS, len(texts))
    ranked = []
    for index, node in enumerate(nodes):
        result = compare(reference[:n], score(quantize(optimized, work / "one.onnx", include=[node]), texts[:n]), labels[:n])
        ranked.append({"node": node, "role": roles.get(node, "?"), "flips": result["disagreements"],
                       "mean_abs_prob_diff": result["mean_abs_prob_diff"],
                       "max_abs_prob_diff": result["max_abs_prob_diff"]})
        progress(f"  {index + 1}/{len(nodes)} {node} ({roles.get(node, '?')}) alone: {result['disagreements']} of {n} "
                 f"labels differ, mean |dP| {result['mean_abs_prob_diff']:.2e}")
    ranked.sort(key=lambda row: (row["mean_abs_prob_diff"], row["flips"]), reverse=True)
    steps = []
    for count in range(len(nodes) // 2 + 1):
        excluded = [row["node"] for row in ranked[:count]]
        result = compare(reference, score(quantize(optimized, work / "greedy.onnx", exclude=excluded), texts), labels)
        steps.append({"fp32": count, "agreement": result["agreement"], "disagreements": result["disagreements"],
                      "mean_abs_prob_diff": result["mean_abs_prob_diff"]})
        progress(f"  {count} MatMuls fp32: labels agree {result['agreement']:.2%} on {len(texts)} calibration reviews")
        if result["agreement"] >= INT8_MIN_AGREEMENT:
            break
    return {"fp32_matmuls": [{"node": row["node"], "role": row["role"]} for row in ranked[:count]],
            "sensitivity": ranked, "greedy": steps}


def quantize_int8(fp32_path: Path, int8_path: Path, num_heads: int, hidden_size: int, *,
                  calibration: dict | None = None, score: Scorer | None = None, progress=lambda line: None) -> dict:
    """Write the int8 graph; what export.json records of it. ``calibration``: ``{"texts", "labels",
    "reference", "described"}`` for a calibrated choice of fp32 MatMuls (``score`` scores a graph)."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        info = {"fused_operators": optimize(fp32_path, optimized, num_heads, hidden_size)}
        excluded = []
        if calibration is not None:
            chosen = choose_fp32_matmuls(optimized, Path(tmp), score, calibration["texts"], calibration["reference"],
                                         calibration["labels"], progress)
            excluded = [row["node"] for row in chosen["fp32_matmuls"]]
            info["calibration"] = {"texts": calibration["described"], "n": len(calibration["texts"]),
                                   "sensitivity_reviews": min(SENSITIVITY_REVIEWS, len(calibration["texts"])), **chosen}
        quantize(optimized, int8_path, exclude=excluded)
    info["fp32_matmuls"] = excluded
    return info

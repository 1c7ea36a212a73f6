"""What ``dapt-export --check N`` measures, on which texts, and when a graph counts as equivalent.

* **The texts** (:func:`check_texts`): ``--check-data`` when given; else, for a two-class model,
  IMDb test from the data folder (as before the export knew K classes); else the first evaluation
  set of the run's ``config.yaml`` (``data.eval``). A seeded, class-stratified subset of N, labels
  read as stage 2 reads them (class indices, or the model's label names).
* **The comparison** (:func:`compare`): every class's probability of every text, PyTorch against a
  graph: the largest and the mean per-text max |dP| over the classes, the predicted labels' agreement
  and both accuracies.
* **The rules** (:func:`verdict`): fp32 is the same computation (probabilities within
  :data:`FP32_MAX_PROB_DIFF`); int8 is served only when at least :data:`INT8_MIN_AGREEMENT` of the
  labels agree.
* **The record** (:func:`require_checked`): ``check.json`` holds the SHA-256 of every graph it
  scored and of the fp32 graph the others were quantised from (``reference``); a graph is served
  under it only when its bytes and the reference's match and ``equivalent`` is the boolean true
  (beside numbers that meet the bar). Anything else is a one-line refusal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

# int8 is called equivalent to PyTorch only when at least this share of labels agree (the issue's bar).
INT8_MIN_AGREEMENT = 0.995
# fp32 is the same computation in another runtime: probabilities may differ by float rounding only.
FP32_MAX_PROB_DIFF = 1e-4
RUN_CONFIG = "config.yaml"
RECHECK = "re-run dapt-export RUN --onnx --int8 --check N (or --int8-calibrate M --check N)"
SHA256 = re.compile(r"[0-9a-f]{64}")


class ExportError(RuntimeError):
    """The export or its check failed; the message says why."""


def imdb_test_reviews(count: int, data_dir=None, seed: int = 0):
    """A seeded, class-stratified subset of ``count`` IMDb test reviews (texts, labels)."""
    from classify.data import LabelledSetConfig, load_labelled

    data_dir = Path(data_dir or os.environ.get("DAPT_DATA_DIR", "../shared/data"))
    if not (data_dir / "imdb").is_dir():
        raise ExportError(f"{data_dir / 'imdb'} not found: set DAPT_DATA_DIR or pass --data-dir")
    labelled = load_labelled(LabelledSetConfig(path=str(data_dir / "imdb"), split="test", max_samples=count), seed=seed)
    return labelled.texts, labelled.labels


def run_eval_set(run_dir: Path):
    """(name, LabelledSetConfig) of the first evaluation set in ``RUN/config.yaml`` (``data.eval``)."""
    import yaml

    from classify.data import LabelledSetConfig

    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ExportError(f"{path} not found: --check on a classifier folder needs --check-data FILE")
    try:
        sets = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("data") or {}).get("eval") or {}
    except yaml.YAMLError as error:
        raise ExportError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    known = {f.name for f in dataclasses.fields(LabelledSetConfig)}
    for name, values in sets.items():
        if isinstance(values, dict) and values.get("path"):
            return name, LabelledSetConfig(**{k: v for k, v in values.items() if k in known})
    raise ExportError(f"{path}: data.eval names no evaluation set; pass --check-data FILE")


def read_labelled(config, names: list[str], count: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """``count`` texts of a labelled set (a seeded, class-stratified subset) and their class indices
    among the model's ``names`` (labels as indices or names: :func:`classify.data.load_labelled`)."""
    from classify.data import load_labelled
    from classify.labels import LabelSpace
    from dapt.core.sources import DataError

    try:
        labelled = load_labelled(dataclasses.replace(config, max_samples=count), seed,
                                 space=LabelSpace(tuple(names), "the model's id2label"))
    except (DataError, FileNotFoundError) as error:
        raise ExportError(f"check data: {error}") from None
    return labelled.texts, labelled.labels


def check_texts(source, names: list[str], count: int, *, data_dir=None, check_data=None, seed: int = 0):
    """(texts, labels, description) that ``--check`` scores (see the module docstring)."""
    if check_data is not None:
        texts, labels = read_labelled(check_data, names, count, seed)
        return texts, labels, f"{check_data.name or check_data.path} split {check_data.split}"
    if len(names) == 2:
        texts, labels = imdb_test_reviews(count, data_dir, seed)
        return texts, labels, "IMDb test reviews"
    run_dir = Path(source)
    if run_dir.name == "model" and not (run_dir / RUN_CONFIG).is_file() and (run_dir.parent / RUN_CONFIG).is_file():
        run_dir = run_dir.parent  # the run's model/ folder
    name, config = run_eval_set(run_dir)
    texts, labels = read_labelled(config, names, count, seed)
    return texts, labels, f"{name} ({config.name or config.path} split {config.split}, the run's first evaluation set)"


def _rows(probabilities) -> np.ndarray:
    """Probabilities as ``[N, K]``: rows of K as given, or P(class 1) floats of a two-class model."""
    values = np.asarray(probabilities, dtype=np.float64)
    return np.stack([1.0 - values, values], axis=1) if values.ndim == 1 else values


def compare(reference, candidate, labels) -> dict:
    """Agreement of two sets of class probabilities (``[N, K]`` rows, or P(class 1) per text for two
    classes) and their accuracies on ``labels``; |dP| is each text's largest difference over the classes."""
    ref, cand, labels = _rows(reference), _rows(candidate), np.asarray(labels)
    ref_pred, cand_pred = ref.argmax(axis=1), cand.argmax(axis=1)  # the first maximum, as infer_reviews
    diff = np.abs(ref - cand).max(axis=1)
    n, agree = len(labels), int((ref_pred == cand_pred).sum())
    ref_acc, cand_acc = float((ref_pred == labels).mean()), float((cand_pred == labels).mean())
    return {
        "n": n,
        "agreement": agree / n,
        "disagreements": n - agree,
        "max_abs_prob_diff": float(diff.max()),
        "mean_abs_prob_diff": float(diff.mean()),
        "accuracy_torch": ref_acc,
        "accuracy_onnx": cand_acc,
        "accuracy_change": cand_acc - ref_acc,
    }


def verdict(variant: str, result: dict) -> tuple[bool, str]:
    """Whether ``variant`` may be called equivalent to PyTorch, and the one-line reason."""
    if variant == "fp32":
        ok = result["max_abs_prob_diff"] <= FP32_MAX_PROB_DIFF
        return ok, f"max |dP| {result['max_abs_prob_diff']:.2e} {'<=' if ok else '>'} {FP32_MAX_PROB_DIFF:g}"
    ok = result["agreement"] >= INT8_MIN_AGREEMENT
    return ok, f"label agreement {result['agreement']:.2%} {'>=' if ok else '<'} {INT8_MIN_AGREEMENT:.1%}"


def format_check(report: dict) -> str:
    lines = [f"agreement with PyTorch on {report['n']} {report.get('texts', 'IMDb test reviews')}:"]
    for variant, r in report["variants"].items():
        word = "equivalent" if r["equivalent"] else "NOT equivalent"
        lines.append(
            f"  {variant}: labels agree {r['agreement']:.2%} ({r['disagreements']} differ), "
            f"max |dP| {r['max_abs_prob_diff']:.2e}, accuracy {r['accuracy_torch']:.4f} -> {r['accuracy_onnx']:.4f} "
            f"({r['accuracy_change']:+.4f}): {word} ({r['reason']})"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# check.json as the key to a graph
# --------------------------------------------------------------------------------------------


def sha256_of(data: bytes | Path) -> str:
    """The SHA-256 (hex) of a graph's bytes, or of the file at a path."""
    if isinstance(data, (bytes, bytearray)):
        return hashlib.sha256(data).hexdigest()
    with open(data, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def graph_record(path: Path) -> dict:
    """What check.json says about a graph it scored: its file name and SHA-256."""
    return {"file": path.name, "sha256": sha256_of(path)}


def _read_check(check: Path) -> dict:
    try:
        document = json.loads(check.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ExportError(f"{check} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
                          f"{RECHECK}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ExportError(f"{check} cannot be read ({error}); {RECHECK}") from None
    variants = document.get("variants") if isinstance(document, dict) else None
    if not isinstance(variants, dict):
        what = type(document).__name__ if not isinstance(document, dict) else (
            "no 'variants'" if "variants" not in document else f"'variants' a {type(variants).__name__}")
        raise ExportError(f"{check}: expected an object with 'variants', got {what}; {RECHECK}")
    return document


def _recorded_sha(check: Path, record, where: str) -> str:
    value = record.get("sha256") if isinstance(record, dict) else None
    if value is None:
        raise ExportError(f"{check}: {where} records no sha256 of the graph it measured (not written by this "
                          f"dapt-export --check, or by one before graphs were hashed); {RECHECK}")
    if not isinstance(value, str) or not SHA256.fullmatch(value):
        raise ExportError(f"{check}: {where}.sha256 is not a SHA-256 (64 hex digits): {str(value)[:80]!r}; {RECHECK}")
    return value


def require_checked(check: Path, variant: str, graph: Path, reference: Path, *, graph_bytes: bytes | None = None) -> None:
    """Refuse (one line) to serve ``graph`` as ``variant`` unless ``check`` records it, by SHA-256, as
    equivalent to PyTorch, measured beside the fp32 graph ``reference`` (the same bytes as now).
    ``graph_bytes``: the graph as read for loading (so what is verified is what is served)."""
    check, graph, reference = Path(check), Path(graph), Path(reference)
    if not check.is_file():
        raise ExportError(f"{check.parent}: the {variant} graph was never checked against PyTorch "
                          f"(dapt-export --int8 --check N); pass allow_unverified=True to use it anyway")
    document = _read_check(check)
    result = document["variants"].get(variant)
    if result is None:
        raise ExportError(f"{check.parent}: the {variant} graph was never checked against PyTorch "
                          f"(dapt-export --int8 --check N); pass allow_unverified=True to use it anyway")
    if not isinstance(result, dict):
        raise ExportError(f"{check}: variants.{variant} is a {type(result).__name__}, not an object; {RECHECK}")
    equivalent = result.get("equivalent")
    if not isinstance(equivalent, bool):
        raise ExportError(f"{check}: variants.{variant}.equivalent is {equivalent!r}: expected true or false; {RECHECK}")
    recorded = _recorded_sha(check, result, f"variants.{variant}")
    recorded_reference = _recorded_sha(check, document.get("reference"), "reference")
    actual = sha256_of(graph_bytes if graph_bytes is not None else graph)
    if actual != recorded:
        raise ExportError(f"{graph} is not the graph {check} measured (sha256 {actual[:12]}…, checked "
                          f"{recorded[:12]}…): a graph from another export? {RECHECK}")
    actual_reference = sha256_of(reference)
    if actual_reference != recorded_reference:
        raise ExportError(f"{reference} is not the fp32 graph the {variant} graph in {check} was measured beside "
                          f"(sha256 {actual_reference[:12]}…, checked {recorded_reference[:12]}…); {RECHECK}")
    if not equivalent:
        raise ExportError(f"{check.parent}: the {variant} graph is not equivalent to PyTorch ({result.get('reason', '?')} "
                          f"on {result.get('n', '?')} texts); serve the fp32 graph, or pass allow_unverified=True")
    numbers = {key: result.get(key) for key in ("agreement", "max_abs_prob_diff")}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers.values()) or not verdict(variant, numbers)[0]:
        agreement = numbers["agreement"]
        shown = f"{agreement:.2%}" if isinstance(agreement, (int, float)) else repr(agreement)
        raise ExportError(f"{check} says the {variant} graph is equivalent, but its label agreement {shown} is below "
                          f"the {INT8_MIN_AGREEMENT:.1%} bar (edited by hand?); {RECHECK}")

"""A CPU serving export: the trained classifier as an ONNX Runtime graph (fp32, optionally int8).

    dapt-export RUN --onnx [--int8 | --int8-calibrate N] [--out DIR] [--check N]

``RUN`` is a stage-2 run directory, a classifier folder or a published repository folder. The
export folder holds ``model.onnx`` (fp32; its one output, ``logits``, is ``[batch, K]`` for the
model's K classes), with ``--int8`` also ``model_int8.onnx`` (the BERT graph fusions of
``onnxruntime.transformers.optimizer``, then ``quantize_dynamic``: int8 weights, activations
quantised per batch; with ``--int8-calibrate N`` the MatMuls whose quantisation moves the answers
most stay fp32, chosen on N reviews of the run's training split: :mod:`classify.release.export_int8`),
plus ``config.json`` and the tokenizer files, so :class:`OnnxClassifier` needs nothing else.
``export.json`` records what was exported (the labels and the output shape included; for int8,
which MatMuls stayed fp32 and the calibration that chose them) and, with ``--check N``, the
measured agreement with PyTorch on N labelled texts (``check.json``): every class's probability
compared (max |dP| over texts and classes) and the predicted labels, with the SHA-256 of each graph
scored and of the fp32 graph int8 came from; the int8 graph is served only under a check of those
very bytes (:func:`~classify.release.export_check.require_checked`), calibrated or not.

The ``--check`` texts: ``--check-data PATH`` (a labelled file, a folder of ``{split}.*`` files or
a Hub dataset; ``--check-split``, ``--check-text-column``, ``--check-label-column``) when given;
else, for a two-class model, IMDb test from ``--data-dir`` (as always); else the first evaluation
set of the run's ``config.yaml`` (``data.eval``), read as stage 2 read it. Always a seeded,
class-stratified subset of N. Labels may be class indices or the model's label names.

Preprocessing is not re-implemented here: :class:`OnnxClassifier` is a drop-in for the PyTorch
classifier in :func:`classify.model.infer_reviews` / :func:`classify.model.predict_proba`, so the
cleaning, truncation, batching and everything else those functions do stay one code path.

``onnx``, ``onnxscript`` and ``onnxruntime`` come with the optional extra ``pip install .[onnx]``;
nothing in the core imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from classify.release.export_check import (  # noqa: F401 - imdb_test_reviews, format_check: part of this module's interface
    FP32_MAX_PROB_DIFF,
    INT8_MIN_AGREEMENT,
    ExportError,
    check_texts,
    compare,
    format_check,
    graph_record,
    imdb_test_reviews,
    require_checked,
    verdict,
)
from classify.data import LabelledSetConfig
from classify.model import infer_reviews, load_classifier, load_tokenizer, predict_proba
from classify.release.export_int8 import calibration_slice, quantize_int8
from classify.release.publish import TOKENIZER_PATTERNS  # the files a model folder's tokenizer consists of

logger = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
EXPORT_INFO = "export.json"
CHECK_FILE = "check.json"
INPUT_NAMES = ("input_ids", "attention_mask")


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx.export's graph builder)
    except ImportError as error:
        raise ExportError(f"{error.name} is not installed: pip install 'dapt[onnx]' (onnx, onnxscript, onnxruntime)") from None


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


class _Logits(torch.nn.Module):
    """The classifier with a plain logits tensor as its output (whatever its forward returns)."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids, attention_mask):
        out = self.classifier(input_ids=input_ids, attention_mask=attention_mask)
        return out.logits if hasattr(out, "logits") else out


@contextlib.contextmanager
def without_torchvision_notes():
    """Drop the exporter's "torchvision is not installed. Skipping torchvision::nms" lines (one per
    torchvision op it knows of, printed on every export): a text classifier uses none of them."""
    exporter_log = logging.getLogger("torch.onnx._internal.exporter._registration")

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")

    exporter_log.addFilter(keep)
    try:
        yield
    finally:
        exporter_log.removeFilter(keep)


def export_fp32(classifier, path: Path) -> Path:
    """``torch.onnx.export`` (the dynamo exporter) with dynamic batch and sequence axes. Whatever the
    forward does (a calibration temperature included) is in the graph."""
    model = _Logits(classifier.eval().to("cpu")).eval()
    ids = torch.full((2, 16), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # a padded row, so the trace keeps the attention-mask path general
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims = {0: batch, 1: sequence}
    with torch.no_grad(), without_torchvision_notes():
        program = torch.onnx.export(
            model,
            (ids, mask),
            input_names=list(INPUT_NAMES),
            output_names=["logits"],
            dynamic_shapes=(dims, dims),
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))
    return path


def encoder_shape(classifier) -> tuple[int, int]:
    config = classifier.encoder.config
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 0
    return int(heads), int(hidden)


def export_onnx(source, out_dir, *, int8: bool = False, calibrate: int = 0, progress=lambda line: None) -> dict:
    """Write the export folder for ``source`` (run dir / classifier folder); returns export.json's dict.
    ``calibrate``: keep in fp32 the MatMuls int8 hurts most, chosen on that many reviews of the run's
    training split (:mod:`classify.release.export_int8`; implies ``int8``)."""
    _require_onnx()
    import onnxruntime


    model_dir = _model_dir(source)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{source}: no config.json (nor model/config.json): not a stage-2 run or classifier folder")
    classifier, tokenizer = load_classifier(model_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise ExportError("--out must not be the model folder itself")
    calibration = None
    if calibrate:  # read (and refuse) the calibration data before anything is written
        run_dir = next((d for d in (Path(source), model_dir.parent) if (d / "config.yaml").is_file()), Path(source))
        texts, labels, described = calibration_slice(run_dir, calibrate)
        calibration = {"texts": texts, "labels": labels, "described": described,
                       "reference": predict_proba(texts, classifier, tokenizer, batch_size=32, all_classes=True)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (FP32_FILE, INT8_FILE, CHECK_FILE):  # never leave a previous export's files beside new ones
        (out_dir / stale).unlink(missing_ok=True)
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and (path.name == "config.json" or any(fnmatch.fnmatch(path.name, p) for p in TOKENIZER_PATTERNS)):
            (out_dir / path.name).write_bytes(path.read_bytes())

    started = time.perf_counter()
    export_fp32(classifier, out_dir / FP32_FILE)
    labels = [classifier.config.id2label[index] for index in range(len(classifier.config.id2label))]
    classes = graph_classes(out_dir / FP32_FILE)
    if classes != len(labels):
        raise ExportError(f"{out_dir / FP32_FILE}: the exported logits have {classes} columns, the model {len(labels)} labels")
    info = {
        "source": str(source),
        "files": {"fp32": FP32_FILE},
        "inputs": list(INPUT_NAMES),
        "outputs": {"logits": ["batch", len(labels)]},
        "labels": labels,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    if int8 or calibrate:
        heads, hidden = encoder_shape(classifier)

        def score(graph, texts):
            served = OnnxClassifier(out_dir, graph=graph, allow_unverified=True)
            return served.predict_proba(texts, batch_size=32, all_classes=True)

        int8_info = quantize_int8(out_dir / FP32_FILE, out_dir / INT8_FILE, heads, hidden, calibration=calibration,
                                  score=score, progress=progress)
        info["int8_fused_operators"] = int8_info.pop("fused_operators")
        info["int8"] = int8_info  # which MatMuls stayed fp32, and why
        info["files"]["int8"] = INT8_FILE
    (out_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def graph_classes(path: Path) -> int | None:
    """The static last dimension of an exported graph's ``logits`` output (the class count)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.output[0].type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None


def _model_dir(source) -> Path:
    path = Path(source)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return path


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


class OnnxClassifier:
    """An exported classifier behind the same interface as the PyTorch one.

    ``OnnxClassifier(folder, int8=False)``; then ``predict(reviews)`` (= ``infer_reviews``),
    ``infer_reviews`` and ``predict_proba``. The int8 graph loads only where ``check.json`` measured
    these very bytes (its SHA-256, beside this folder's fp32 graph's) equivalent, with a boolean
    ``true`` (``allow_unverified=True`` overrides, e.g. to benchmark it). The methods have
    the semantics of :mod:`classify.model`'s functions, which do the work: this object is passed
    to them in place of the ``nn.Module``. For that it offers what they read from a classifier: the stored inference settings from ``config.json``
    (as ``config`` attributes, and as the ``config_dict`` mapping older versions read), the
    encoder's ``encoder.config`` (position-table size), a CPU ``device``/``parameters()`` to place
    inputs on, and ``__call__(input_ids, attention_mask)`` -> an output with float32 ``logits``.
    A calibration temperature needs nothing here: the exported forward already divides by it.
    """

    def __init__(self, folder, *, int8: bool = False, threads: int | None = None, allow_unverified: bool = False,
                 graph=None):
        _require_onnx()
        import onnxruntime


        folder = Path(folder)
        if graph is not None and not allow_unverified:  # another graph file: a measurement, never verified
            raise ValueError("OnnxClassifier(graph=...) answers with an unchecked graph: pass allow_unverified=True")
        graph = Path(graph) if graph is not None else folder / (INT8_FILE if int8 else FP32_FILE)
        if not graph.is_file():
            hint = " (export with --int8)" if int8 else ""
            raise ExportError(f"{graph} not found: not an ONNX export folder{hint}")
        model = str(graph)
        if int8 and not allow_unverified:  # int8 answers only after --check measured these very bytes
            model = graph.read_bytes()
            require_checked(folder / CHECK_FILE, "int8", graph, folder / FP32_FILE, graph_bytes=model)
        self.folder, self.int8 = folder, int8
        stored = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        stored["id2label"] = {int(k): v for k, v in stored.get("id2label", {0: "Negative", 1: "Positive"}).items()}
        self.config_dict = stored
        self.config = SimpleNamespace(**stored)
        self.encoder = SimpleNamespace(config=SimpleNamespace(**stored["encoder_config"]))
        self.tokenizer = load_tokenizer(folder)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    # what classify.model's inference functions read from a classifier
    device = torch.device("cpu")

    def parameters(self):
        yield torch.empty(0)

    def eval(self) -> "OnnxClassifier":
        return self

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        feed = {"input_ids": input_ids.cpu().numpy()}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feed["attention_mask"] = attention_mask.cpu().numpy()
        if token_type_ids is not None and "token_type_ids" in self._inputs:
            feed["token_type_ids"] = token_type_ids.cpu().numpy()
        return SequenceClassifierOutput(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]).float())

    # the one entry point, and its probability form
    def infer_reviews(self, reviews, batch_size: int = 32, **settings):

        return infer_reviews(reviews, self, self.tokenizer, batch_size=batch_size, **settings)

    predict = infer_reviews

    def predict_proba(self, reviews, batch_size: int = 32, **settings):

        return predict_proba(reviews, self, self.tokenizer, batch_size=batch_size, **settings)


# --------------------------------------------------------------------------------------------
# Measured agreement with PyTorch (what is measured, on which texts: classify.release.export_check)
# --------------------------------------------------------------------------------------------


def check_export(source, out_dir, count: int, data_dir=None, batch_size: int = 32, *, check_data=None) -> dict:
    """Score ``count`` labelled texts (:func:`~classify.release.export_check.check_texts`; ``check_data``: a
    ``LabelledSetConfig``) with PyTorch and each exported graph, every class's probability; write check.json."""

    out_dir = Path(out_dir)
    info = json.loads((out_dir / EXPORT_INFO).read_text(encoding="utf-8"))
    classifier, tokenizer = load_classifier(source)
    names = [classifier.config.id2label[index] for index in range(len(classifier.config.id2label))]
    texts, labels, described = check_texts(source, names, count, data_dir=data_dir, check_data=check_data)
    started = time.perf_counter()
    reference = predict_proba(texts, classifier, tokenizer, batch_size=batch_size, all_classes=True)
    report = {"n": len(texts), "texts": described, "data": f"{described}, seeded stratified subset", "labels": names,
              "seconds": {"torch": round(time.perf_counter() - started, 1)},
              "reference": graph_record(out_dir / FP32_FILE), "variants": {}}  # the fp32 graph int8 came from
    for variant, file in info["files"].items():
        record = graph_record(out_dir / file)  # the bytes scored below: serving requires the same
        onnx_classifier = OnnxClassifier(out_dir, int8=variant == "int8", allow_unverified=True)
        started = time.perf_counter()
        probs = onnx_classifier.predict_proba(texts, batch_size=batch_size, all_classes=True)
        report["seconds"][variant] = round(time.perf_counter() - started, 1)
        result = compare(reference, probs, labels)
        result["equivalent"], result["reason"] = verdict(variant, result)
        report["variants"][variant] = {**result, **record}
    (out_dir / CHECK_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dapt-export", description="Export a trained classifier for CPU serving.")
    parser.add_argument("run_dir", help="stage-2 output directory or classifier folder")
    parser.add_argument("--onnx", action="store_true", required=True, help="export to ONNX Runtime (the only format)")
    parser.add_argument("--int8", action="store_true", help="also write a graph-optimised dynamic-int8 graph")
    parser.add_argument("--int8-calibrate", type=int, default=0, metavar="N",
                        help="int8, but keep in fp32 the MatMuls whose quantisation moves the answers most, chosen on N "
                             "reviews of the run's training split it never trained on (validation first; never test) "
                             "until 99.5%% of their labels agree with PyTorch; needs RUN/config.yaml")
    parser.add_argument("--out", help="export folder (default RUN_DIR/onnx)")
    parser.add_argument("--check", type=int, default=0, metavar="N",
                        help="measure agreement with PyTorch on N labelled texts (default: IMDb test for a two-class "
                             "model, else the run's first evaluation set in RUN/config.yaml); writes check.json")
    parser.add_argument("--check-data", metavar="PATH",
                        help="the --check texts: a labelled file, a folder of {split}.* files, or a Hub dataset")
    parser.add_argument("--check-split", default="test", help="split of --check-data (default test)")
    parser.add_argument("--check-text-column", default="text", help="text column of --check-data (default text)")
    parser.add_argument("--check-label-column", default="label",
                        help="label column of --check-data: class indices or the model's label names (default label)")
    parser.add_argument("--data-dir", help="folder holding imdb/test.parquet (default $DAPT_DATA_DIR or ../shared/data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.check < 0 or args.int8_calibrate < 0:
        raise SystemExit(f"dapt-export: error: {'--check' if args.check < 0 else '--int8-calibrate'} must be >= 0")
    if args.check_data and not args.check:
        raise SystemExit("dapt-export: error: --check-data needs --check N")
    check_data = None
    if args.check_data:

        check_data = LabelledSetConfig(path=args.check_data, split=args.check_split, text_column=args.check_text_column,
                                       label_column=args.check_label_column)
    out = Path(args.out) if args.out else Path(args.run_dir) / "onnx"
    try:
        if args.int8_calibrate:
            print(f"choosing the MatMuls int8 keeps fp32 on {args.int8_calibrate} calibration reviews", flush=True)
        info = export_onnx(args.run_dir, out, int8=args.int8, calibrate=args.int8_calibrate,
                           progress=lambda line: print(line, flush=True))
        print(f"exported to {out}: " + ", ".join(info["files"].values()))
        if args.int8_calibrate:
            kept = info["int8"]["fp32_matmuls"]
            print(f"int8 keeps {len(kept)} MatMuls fp32: {', '.join(kept) or 'none'} ({info['int8']['calibration']['texts']})")
        if args.check:
            print(format_check(check_export(args.run_dir, out, args.check, args.data_dir, check_data=check_data)))
            print(f"written: {out / CHECK_FILE}")
    except (ExportError, OSError, ValueError) as error:
        raise SystemExit(f"dapt-export: error: {error}") from None
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

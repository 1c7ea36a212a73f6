"""Evaluation of a sentiment classifier: predictions gathered across processes, metrics, plots.

    python -m classify.evaluate --model runs/classify [--config configs/classify.yaml] [key=value ...]
    dapt-evaluate --model USER/REPO --config configs/demo/classify.yaml --output-dir runs/eval/plain

``--model`` is a stage-2 output directory, its ``model/`` folder, or a Hub repository. The
evaluation sets, batch size and runtime come from the (stage-2) config; tokenization follows the
classifier's own stored settings (max length, truncation), exactly as at inference. Writes
``results.json``, ``plots/`` and ``predictions/NAME.npz`` (per review: P(positive), prediction,
label, loss, raw logits) to ``--output-dir`` (default ``runs/eval/<model name>``), so a
classifier on a plain encoder and one on a DAPT encoder can be compared on the same data.

Per evaluation set, besides accuracy / F1 / precision / recall / ROC AUC / loss: ``calibration``
(ECE, Brier score and NLL before and after the classifier's temperature, see
:mod:`classify.calibration`) and ``by_length`` (accuracy per review length: <= 128, 129-512,
> 512 tokens, special tokens included, before any truncation), plus a reliability diagram.

The prediction rule is the inference one (softmax of the logits divided by the temperature; in
``windows`` mode a review's logits are the mean of its windows'), with the temperature applied
once: the forward is asked for raw logits (``raw_logits=True``) and :func:`from_logits` divides
them by the classifier's temperature. Under several processes every
process predicts its share of the batches; the rows are gathered with ``gather_for_metrics``
(which drops the rows accelerate repeats to even out the last batches) and put back in dataset
order by row index before windows are averaged, so the metrics are those of one process.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

if __name__ == "__main__" and not __package__:  # run as a file (`accelerate launch classify/evaluate.py`): as the module
    import runpy  # (the project installed, `pip install -e .`, or on PYTHONPATH)

    runpy.run_module("classify.evaluate", run_name="__main__", alter_sys=True)
    raise SystemExit

import numpy as np
import torch
from accelerate.utils import set_seed
from scipy.special import log_softmax

from classify.calibration import (calibration_report, fit_report, get_temperature, probabilities, reliability_bins,
                                  set_temperature)
from classify.config import ClassifyConfig
from classify.data import Collator, LabelledSet, LabelledSetConfig, LengthBucketBatchSampler, ReviewDataset, load_labelled
from classify.labels import LabelSpace
from classify.leakage import check_pretraining_overlap, encoder_summary
from classify.metrics import BINARY_KEYS, LENGTH_BUCKETS, accuracy_by_length, compute_metrics, headline_keys, ranking_score  # noqa: F401
from classify.model import default_span, encode_windows, load_classifier
from classify.plots import confusion_matrix_png, reliability_diagram_png, roc_curve_png
from dapt.core.config import ConfigError, parse_cli
from dapt.core.runtime import end_run, logger, make_accelerator, release_process_group, write_json

PREDICTIONS_DIR = "predictions"  # RUN/predictions/NAME.npz: per-review predictions in dataset order
METRIC_KEYS = BINARY_KEYS  # a binary task's headline metrics (classify.metrics.headline_keys for any K)


@dataclass
class Predictions:
    """Per review, in dataset order: the probabilities (two classes: P(class 1) ``[N]``; K > 2: all of
    them ``[N, K]``), predicted class, true label, cross-entropy loss (all under the classifier's
    temperature), and the raw logits with that temperature."""

    prob: np.ndarray
    pred: np.ndarray
    label: np.ndarray
    loss: np.ndarray
    logits: Optional[np.ndarray] = None  # [N, classes], before the temperature
    temperature: float = 1.0
    row: Optional[np.ndarray] = None  # each example's row in its full split: which examples these are


def make_eval_loader(dataset: ReviewDataset, tokenizer, batch_size: int, group_by_length: bool = True, workers: int = 0):
    """Unshuffled batches (longest first when grouping); the same batches for any process count."""
    sampler = LengthBucketBatchSampler(dataset.lengths, batch_size, shuffle=False, group_by_length=group_by_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=Collator(pad), num_workers=workers,
        generator=torch.Generator(),  # iterating never draws from the global RNG (exact resume)
    )


def from_logits(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> Predictions:
    """Predictions of raw ``logits`` [N, classes] scaled by ``temperature``."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    log_p = log_softmax(logits / temperature, axis=-1)
    return Predictions(
        prob=np.exp(log_p[:, 1] if logits.shape[1] == 2 else log_p), pred=logits.argmax(axis=-1), label=labels,
        loss=-log_p[np.arange(len(labels)), labels], logits=logits, temperature=float(temperature),
    )


@torch.no_grad()
def predict(model, loader, accelerator) -> Predictions:
    """Run a prepared loader through ``model`` on every process; every review once, in order.

    A dataset of windows (``review_of``) gives per review the mean of its windows' logits."""
    was_training = model.training
    model.eval()
    parts = []
    for batch in loader:
        with accelerator.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], raw_logits=True).logits
        rows = (batch["index"], logits.float(), batch["labels"])
        parts.append(accelerator.gather_for_metrics(rows))  # kept on the device: no sync per batch
    model.train(was_training)
    index, logits, label = (torch.cat(column).cpu().numpy() for column in zip(*parts))
    expected = len(loader.dataset)
    order = np.argsort(index, kind="stable")
    if len(index) != expected or not np.array_equal(index[order], np.arange(expected)):
        raise RuntimeError(f"gathered {len(index)} predictions for {expected} rows ({len(np.unique(index))} distinct)")
    raw, label = logits[order].astype(np.float64), label[order]
    review_of = getattr(loader.dataset, "review_of", None)
    if review_of is not None:  # one row per window (one per review outside windows mode): average them
        reviews = loader.dataset.num_reviews
        summed = np.zeros((reviews, raw.shape[1]))
        np.add.at(summed, review_of, raw)
        raw = summed / np.bincount(review_of, minlength=reviews)[:, None]
        label = label[np.searchsorted(review_of, np.arange(reviews))]  # each review's first window
    return from_logits(raw, label, get_temperature(accelerator.unwrap_model(model)))


def evaluate_set(model, tokenizer, labelled: LabelledSet, settings: dict, accelerator, batch_size: int,
                 group_by_length: bool = True, workers: int = 0) -> tuple[dict, Predictions]:
    """Metrics and predictions of ``model`` on one labelled set, tokenized with ``settings``
    (max_length, truncation, head_tokens, window_stride, id2label): the headline metrics
    (:mod:`classify.metrics`), ``calibration`` and ``by_length``."""
    dataset = ReviewDataset(labelled.texts, labelled.labels, tokenizer, settings["max_length"],
                            settings["truncation"], settings["head_tokens"],
                            settings.get("window_stride", default_span(settings["max_length"])))
    loader = accelerator.prepare(make_eval_loader(dataset, tokenizer, batch_size, group_by_length, workers))
    predictions = predict(model, loader, accelerator)
    predictions.row = np.asarray(labelled.rows, dtype=np.int64)
    metrics = compute_metrics(predictions.label, predictions.pred, ranking_score(predictions), predictions.loss,
                              class_names(settings))
    metrics["calibration"] = calibration_report(predictions.logits, predictions.label, predictions.temperature)
    metrics["by_length"] = accuracy_by_length(dataset.review_tokens, predictions)  # tokenized once, with the inputs
    return metrics, predictions


def result_block(config: LabelledSetConfig, labelled: LabelledSet, metrics: dict) -> dict:
    """One entry of results.json ``evaluation``; a subset says what it is a subset of."""
    block = {"dataset": config.name or config.path, "split": config.split, **metrics}
    if len(labelled) < labelled.total:
        block["subset_of"] = labelled.total
    return block


def class_names(settings: dict) -> tuple[str, ...]:
    """The class names in class-index order, from a classifier's settings (its config's id2label)."""
    id2label = settings.get("id2label") or {0: "Negative", 1: "Positive"}
    return LabelSpace.from_id2label(id2label, "the classifier's id2label").names


def plot_set(name: str, predictions: Predictions, plots_dir: Path, title: str, names: tuple[str, ...]) -> list[Path]:

    made = [confusion_matrix_png(predictions.label, predictions.pred, plots_dir / f"confusion_{name}.png",
                                 f"{title}: confusion matrix", names)]
    roc = roc_curve_png(predictions.label, ranking_score(predictions), plots_dir / f"roc_{name}.png", f"{title}: ROC curve", names)
    before = reliability_bins(probabilities(predictions.logits), predictions.label)
    after = reliability_bins(probabilities(predictions.logits, predictions.temperature), predictions.label)
    made.append(reliability_diagram_png(before, after, predictions.temperature, plots_dir / f"reliability_{name}.png",
                                        f"{title}: reliability"))
    return made + ([roc] if roc else [])


def save_predictions(predictions: Predictions, path: Path) -> Path:
    """Per-review arrays (``prob``, ``pred``, ``label``, ``loss``, raw ``logits``, ``temperature``,
    ``row``: each example's row in its full split) in dataset order, for paired comparisons between
    runs (the ablation's bootstrap)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if predictions.logits is None else {"logits": predictions.logits, "temperature": predictions.temperature}
    extra.update({} if predictions.row is None else {"row": predictions.row})
    np.savez_compressed(path, prob=predictions.prob, pred=predictions.pred, label=predictions.label, loss=predictions.loss, **extra)
    return path


def load_predictions(run_dir: Path, names) -> Optional[dict[str, Predictions]]:
    """``RUN/predictions/NAME.npz`` (:func:`save_predictions`) for every set, or None when one is missing."""
    found = {}
    for name in names:
        path = Path(run_dir) / PREDICTIONS_DIR / f"{name}.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            found[name] = Predictions(data["prob"], data["pred"], data["label"], data["loss"],
                                      data["logits"] if "logits" in data else None,
                                      float(data["temperature"]) if "temperature" in data else 1.0,
                                      data["row"] if "row" in data else None)
    return found


def load_eval_sets(eval_sets: dict, accelerator, seed: int, space: LabelSpace) -> dict[str, LabelledSet]:
    """Every configured evaluation set, read, its labels checked against the task's classes
    ``space`` (a missing file or Hub dataset, or a label outside ``space``, raises DataError)."""
    with accelerator.main_process_first():
        return {name: load_labelled(set_config, seed=seed, space=space) for name, set_config in eval_sets.items()
                if set_config is not None}


def evaluate_all(model, tokenizer, eval_sets: dict, labelled_sets: dict[str, LabelledSet], settings: dict, accelerator, *,
                 batch_size: int, output_dir: Optional[Path], group_by_length: bool = True,
                 workers: int = 0) -> tuple[dict, list[Path]]:
    """The sets read by :func:`load_eval_sets` -> (``evaluation`` block of results.json, plot
    paths). With ``output_dir``: ``plots/`` and ``predictions/NAME.npz`` go there."""
    evaluation, plots = {}, []
    for name, labelled in labelled_sets.items():
        set_config = eval_sets[name]
        started = time.time()
        metrics, predictions = evaluate_set(model, tokenizer, labelled, settings, accelerator, batch_size, group_by_length, workers)
        evaluation[name] = result_block(set_config, labelled, metrics)
        logger.info(f"{name} ({labelled.where}): {format_metrics(metrics)} [{time.time() - started:.0f} s]")
        if output_dir is not None and accelerator.is_main_process:
            save_predictions(predictions, Path(output_dir) / PREDICTIONS_DIR / f"{name}.npz")
            plots += plot_set(name, predictions, Path(output_dir) / "plots", name.replace("_", " "), class_names(settings))
    return evaluation, plots


def format_metrics(block: dict) -> str:
    """One line of an evaluation block's headline metrics, calibration and count."""
    keys = BINARY_KEYS if "f1" in block else headline_keys(3)
    shown = ", ".join(f"{key.replace('_', ' ')} {block[key]:.4f}" for key in keys[:-1] if block.get(key) is not None)
    ece = block.get("calibration")
    calibration = f", ECE {ece['before']['ece']:.4f} -> {ece['after']['ece']:.4f} (T {ece['temperature']:.3f})" if ece else ""
    return f"{shown}, n {block['n']}{calibration}"


# --------------------------------------------------------------------------------------------
# Evaluate-only entry point


def run_evaluation(config, model_name_or_path: str, output_dir: str | Path, revision: Optional[str] = None,
                   truncation: Optional[str] = None, window_stride: Optional[int] = None) -> dict:
    """Evaluate a saved classifier on ``config.data.eval``; writes results.json + plots/.
    ``truncation`` / ``window_stride`` read the reviews another way than the model's stored one
    (e.g. ``windows`` for a model trained with ``head+tail``)."""
    output_dir = Path(output_dir)
    accelerator = make_accelerator(config.impl, output_dir)
    set_seed(config.train.seed)
    classifier, tokenizer = load_classifier(model_name_or_path, revision=revision)
    settings = {**classifier.settings, **{k: v for k, v in (("truncation", truncation), ("window_stride", window_stride)) if v is not None}}
    stride_fits = settings["window_stride"] < settings["max_length"] - 2
    if truncation == "windows" and window_stride is None and not stride_fits:  # a stride stored for another mode
        settings["window_stride"] = default_span(settings["max_length"])
        logger.info(f"the model's window_stride {classifier.settings['window_stride']} does not fit its "
                    f"{settings['max_length']}-token windows: reading them with stride {settings['window_stride']}")
    if settings["truncation"] == "windows":  # a stride that does not fit: the error now, before any output
        encode_windows(tokenizer, [""], settings["max_length"], settings["window_stride"])
    model = classifier.to(accelerator.device)  # inference only: no DDP wrapper needed
    logger.info(f"evaluating {model_name_or_path} ({settings['truncation']}, max_length {settings['max_length']}) "
                f"on {accelerator.num_processes} process(es)")
    space = LabelSpace.from_id2label(classifier.config.id2label, f"the id2label of {model_name_or_path}")
    if not any(config.data.eval.values()):
        raise ValueError("no evaluation sets: name one with --data FILE or data.eval.NAME.path=FILE")
    base_model = classifier.config.base_model
    given = Path(str(model_name_or_path)).expanduser()
    dapt, found = encoder_summary(base_model, given if given.is_dir() else None)
    leakage = check_pretraining_overlap(config.data.eval, dapt, config.data.allow_pretraining_overlap,
                                        base_model or str(model_name_or_path), found)
    labelled_sets = load_eval_sets(config.data.eval, accelerator, seed=config.train.seed, space=space)
    evaluation, plots = evaluate_all(
        model, tokenizer, config.data.eval, labelled_sets, settings, accelerator, batch_size=config.train.eval_batch_size,
        output_dir=output_dir, group_by_length=config.data.group_by_length, workers=config.impl.dataloader_workers,
    )
    results = {
        "run_name": f"eval-{Path(str(model_name_or_path).rstrip('/')).name}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": str(model_name_or_path),
        "base_model": base_model,
        "dapt": dapt,
        "leakage": leakage,
        "task": space.describe(),
        "settings": {**{k: settings.get(k) for k in ("max_length", "truncation", "head_tokens", "window_stride")},
                     "temperature": get_temperature(classifier), "mixed_precision": accelerator.mixed_precision},
        "num_processes": accelerator.num_processes,
        "evaluation": evaluation,
        "plots": [p.relative_to(output_dir).as_posix() for p in plots],
    }
    write_json(accelerator, output_dir / "results.json", results)
    end_run(accelerator)
    return results


def fit_temperature_on(model, loader, accelerator, *, with_predictions: bool = False):
    """Fit the temperature on the (validation) ``loader`` with the evaluation's own prediction rule
    (windows averaged per review), store it in ``model``'s config, and return the ``calibration``
    block of results.json: the temperature and the validation metrics before and after (and, with
    ``with_predictions``, the validation predictions under the fitted temperature)."""
    validation = predict(model, loader, accelerator)
    report = {"fitted_on": "validation", "n": int(len(validation.label)), **fit_report(validation.logits, validation.label)}
    temperature = report["temperature"]
    set_temperature(model, temperature)
    return (report, from_logits(validation.logits, validation.label, temperature)) if with_predictions else report


USAGE = """\
usage: dapt-evaluate --model DIR_OR_REPO [--data FILE [--text-column C] [--label-column L] [--split S]]
                     [--revision REV] [--output-dir DIR] [--truncation head|head+tail|windows]
                     [--window-stride N] [--config YAML] [key=value ...]

Evaluate a trained classifier and write results.json, plots/ and predictions/ to --output-dir
(default runs/eval/NAME). What it is scored on, one of:
  --data FILE                  one labelled file (.parquet, .jsonl, .csv; or a folder of SPLIT.* files
                               with --split), its columns --text-column (default text) and
                               --label-column (default label); replaces every configured set
  data.eval.NAME.path=FILE     add a set named NAME (also data.eval.NAME.text_column=..., .label_column,
                               .split, .max_samples); on its own it replaces the default sets
  --config YAML                the evaluation sets of a stage-2 config (data.eval.*)
Without any of them: IMDb test and SST-2 validation from the Hub. Labels are the model's class
indices 0..K-1 or its class names (config.json id2label); an unknown label is an error naming it.
Tokenization follows the model's stored settings unless --truncation / --window-stride say otherwise.
On a CPU it runs in fp32 unless impl.mixed_precision=... is given; results.json records the precision.
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", required=True, help="stage-2 output dir, its model/ folder, or a Hub repo id")
    parser.add_argument("--data", default=None, help="a labelled file to score (replaces the configured sets)")
    parser.add_argument("--text-column", default="text", help="--data: the column holding the texts")
    parser.add_argument("--label-column", default="label", help="--data: the column holding the labels")
    parser.add_argument("--split", default="test", help="--data given a folder: the split (its SPLIT.* files)")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--output-dir", default=None, help="where results.json and plots/ go (default runs/eval/NAME)")
    parser.add_argument("--truncation", choices=("head", "head+tail", "windows"), help="read texts this way instead of the model's way")
    parser.add_argument("--window-stride", type=int, default=None, help="windows: tokens shared by consecutive windows")
    if argv is None:
        argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        raise SystemExit(0)
    args, rest = parser.parse_known_args(argv)
    config = parse_cli(ClassifyConfig, rest, "Evaluate a classifier", default_config=None)
    if not torch.cuda.is_available() and not any(item.startswith("impl.mixed_precision=") for item in rest):
        config.impl.mixed_precision = "no"  # inference on a CPU: fp32 unless asked (a config's bf16 is for its GPU training)
    if args.data is not None:
        config.data.eval = {data_set_name(args.data): LabelledSetConfig(
            path=args.data, split=args.split, text_column=args.text_column, label_column=args.label_column)}
    output_dir = args.output_dir or str(Path("runs/eval") / Path(args.model.rstrip("/")).name)
    try:
        results = run_evaluation(config, args.model, output_dir, revision=args.revision, truncation=args.truncation,
                                 window_stride=args.window_stride)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        release_process_group(barrier=False)  # exit without the gloo hang
        raise SystemExit(f"error: {error}") from None
    for name, block in results["evaluation"].items():
        print(f"{name}: {format_metrics(block)}")
    print(f"results: {Path(output_dir) / 'results.json'}")


def data_set_name(path: str) -> str:
    """results.json's key for a set given as a file: its name without the extension, as an identifier."""
    stem = Path(path.rstrip("/")).name.split(".")[0] or "data"
    return "".join(c if c.isalnum() else "_" for c in stem)


if __name__ == "__main__":
    main()

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

The prediction rule is the inference one: the classifier's forward returns raw logits divided by
its temperature; in ``windows`` mode a review's logits are the mean of its windows' (scaled)
logits. Raw logits are recovered as ``logits * temperature``. Under several processes every
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
from scipy.special import log_softmax
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from classify.calibration import calibration_report, fit_temperature, get_temperature, reliability_bins, set_temperature
from classify.data import Collator, LabelledSet, LabelledSetConfig, LengthBucketBatchSampler, ReviewDataset, load_labelled
from classify.model import encode_windows
from dapt.core.runtime import logger

PREDICTIONS_DIR = "predictions"  # RUN/predictions/NAME.npz: per-review predictions in dataset order
METRIC_KEYS = ("accuracy", "f1", "precision", "recall", "roc_auc", "loss", "n")
#: results.json ``by_length`` buckets: name -> (fewest, most) tokens of the whole review
LENGTH_BUCKETS = {"<=128": (0, 128), "129-512": (129, 512), ">512": (513, None)}


@dataclass
class Predictions:
    """Per review, in dataset order: P(positive), predicted class, true label, cross-entropy loss
    (all under the classifier's temperature), and the raw logits with that temperature."""

    prob: np.ndarray
    pred: np.ndarray
    label: np.ndarray
    loss: np.ndarray
    logits: Optional[np.ndarray] = None  # [N, classes], before the temperature
    temperature: float = 1.0


def compute_metrics(labels, preds, probs, losses) -> dict:
    """Accuracy, F1 / precision / recall of the positive class, ROC AUC of ``probs`` (P(positive)
    or any score in the same order; ``None`` when one class is absent), mean per-row loss, and the
    row count."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1": float(f1_score(labels, preds, zero_division=0)),
        "precision": float(precision_score(labels, preds, zero_division=0)),
        "recall": float(recall_score(labels, preds, zero_division=0)),
        "roc_auc": float(roc_auc_score(labels, np.asarray(probs))) if both_classes else None,
        "loss": float(np.mean(np.asarray(losses, dtype=np.float64))),
        "n": int(len(labels)),
    }


def ranking_score(predictions) -> np.ndarray:
    """What ROC AUC ranks: the raw logit margin, in the same order as P(positive) under any
    temperature but without the ties a saturated softmax (P = 1.0 in floating point) creates.
    Validation (model selection) and evaluation both use it."""
    return predictions.logits[:, 1] - predictions.logits[:, 0]


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
        prob=np.exp(log_p[:, 1]), pred=logits.argmax(axis=-1), label=labels,
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
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        rows = (batch["index"], logits.float(), batch["labels"])
        parts.append(accelerator.gather_for_metrics(rows))  # kept on the device: no sync per batch
    model.train(was_training)
    index, logits, label = (torch.cat(column).cpu().numpy() for column in zip(*parts))
    expected = len(loader.dataset)
    order = np.argsort(index, kind="stable")
    if len(index) != expected or not np.array_equal(index[order], np.arange(expected)):
        raise RuntimeError(f"gathered {len(index)} predictions for {expected} rows ({len(np.unique(index))} distinct)")
    temperature = get_temperature(accelerator.unwrap_model(model))
    raw, label = logits[order].astype(np.float64) * temperature, label[order]
    review_of = getattr(loader.dataset, "review_of", None)
    if review_of is not None:  # one row per window (one per review outside windows mode): average them
        reviews = loader.dataset.num_reviews
        summed = np.zeros((reviews, raw.shape[1]))
        np.add.at(summed, review_of, raw)
        raw = summed / np.bincount(review_of, minlength=reviews)[:, None]
        label = label[np.searchsorted(review_of, np.arange(reviews))]  # each review's first window
    return from_logits(raw, label, temperature)


def accuracy_by_length(tokens: np.ndarray, predictions: Predictions) -> dict:
    """``LENGTH_BUCKETS`` name -> {n, accuracy} (accuracy None for an empty bucket)."""
    correct = predictions.pred == predictions.label
    out = {}
    for name, (low, high) in LENGTH_BUCKETS.items():
        inside = (tokens >= low) & (tokens <= (high if high is not None else np.iinfo(np.int64).max))
        n = int(inside.sum())
        out[name] = {"n": n, "accuracy": float(correct[inside].mean()) if n else None}
    return out


def evaluate_set(model, tokenizer, labelled: LabelledSet, settings: dict, accelerator, batch_size: int,
                 group_by_length: bool = True, workers: int = 0) -> tuple[dict, Predictions]:
    """Metrics and predictions of ``model`` on one labelled set, tokenized with ``settings``
    (max_length, truncation, head_tokens, window_stride): the headline metrics, ``calibration``
    and ``by_length``."""
    dataset = ReviewDataset(labelled.texts, labelled.labels, tokenizer, settings["max_length"],
                            settings["truncation"], settings["head_tokens"], settings.get("window_stride", 128))
    loader = accelerator.prepare(make_eval_loader(dataset, tokenizer, batch_size, group_by_length, workers))
    predictions = predict(model, loader, accelerator)
    metrics = compute_metrics(predictions.label, predictions.pred, ranking_score(predictions), predictions.loss)
    metrics["calibration"] = calibration_report(predictions.logits, predictions.label, predictions.temperature)
    metrics["by_length"] = accuracy_by_length(dataset.review_tokens, predictions)  # tokenized once, with the inputs
    return metrics, predictions


def result_block(config: LabelledSetConfig, labelled: LabelledSet, metrics: dict) -> dict:
    """One entry of results.json ``evaluation``; a subset says what it is a subset of."""
    block = {"dataset": config.name or config.path, "split": config.split, **metrics}
    if len(labelled) < labelled.total:
        block["subset_of"] = labelled.total
    return block


def plot_set(name: str, predictions: Predictions, plots_dir: Path, title: str) -> list[Path]:
    from classify.calibration import probabilities
    from classify.plots import confusion_matrix_png, reliability_diagram_png, roc_curve_png

    made = [confusion_matrix_png(predictions.label, predictions.pred, plots_dir / f"confusion_{name}.png", f"{title}: confusion matrix")]
    roc = roc_curve_png(predictions.label, predictions.prob, plots_dir / f"roc_{name}.png", f"{title}: ROC curve")
    before = reliability_bins(probabilities(predictions.logits), predictions.label)
    after = reliability_bins(probabilities(predictions.logits, predictions.temperature), predictions.label)
    made.append(reliability_diagram_png(before, after, predictions.temperature, plots_dir / f"reliability_{name}.png",
                                        f"{title}: reliability"))
    return made + ([roc] if roc else [])


def save_predictions(predictions: Predictions, path: Path) -> Path:
    """Per-review arrays (``prob``, ``pred``, ``label``, ``loss``, raw ``logits``, ``temperature``)
    in dataset order, for paired comparisons between runs (the ablation's bootstrap)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if predictions.logits is None else {"logits": predictions.logits, "temperature": predictions.temperature}
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
                                      float(data["temperature"]) if "temperature" in data else 1.0)
    return found


def load_eval_sets(eval_sets: dict, accelerator, seed: int) -> dict[str, LabelledSet]:
    """Every configured evaluation set, read (a missing file or Hub dataset raises DataError)."""
    with accelerator.main_process_first():
        return {name: load_labelled(set_config, seed=seed) for name, set_config in eval_sets.items() if set_config is not None}


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
        calibration = metrics["calibration"]
        logger.info(
            f"{name} ({labelled.where}, n={metrics['n']}): accuracy {metrics['accuracy']:.4f}, F1 {metrics['f1']:.4f}, "
            f"ROC AUC {metrics['roc_auc'] if metrics['roc_auc'] is None else round(metrics['roc_auc'], 4)}, "
            f"loss {metrics['loss']:.4f}, ECE {calibration['before']['ece']:.4f} -> {calibration['after']['ece']:.4f} "
            f"(T {calibration['temperature']:.3f}) [{time.time() - started:.0f} s]"
        )
        if output_dir is not None and accelerator.is_main_process:
            save_predictions(predictions, Path(output_dir) / PREDICTIONS_DIR / f"{name}.npz")
            plots += plot_set(name, predictions, Path(output_dir) / "plots", name.replace("_", " "))
    return evaluation, plots


# --------------------------------------------------------------------------------------------
# Evaluate-only entry point


def run_evaluation(config, model_name_or_path: str, output_dir: str | Path, revision: Optional[str] = None,
                   truncation: Optional[str] = None, window_stride: Optional[int] = None) -> dict:
    """Evaluate a saved classifier on ``config.data.eval``; writes results.json + plots/.
    ``truncation`` / ``window_stride`` read the reviews another way than the model's stored one
    (e.g. ``windows`` for a model trained with ``head+tail``)."""
    from accelerate.utils import set_seed

    from classify.leakage import check_pretraining_overlap, encoder_summary
    from classify.model import load_classifier
    from dapt.core.runtime import end_run, make_accelerator, write_json

    output_dir = Path(output_dir)
    accelerator = make_accelerator(config.impl, output_dir)
    set_seed(config.train.seed)
    classifier, tokenizer = load_classifier(model_name_or_path, revision=revision)
    settings = {**classifier.settings, **{k: v for k, v in (("truncation", truncation), ("window_stride", window_stride)) if v is not None}}
    if settings["truncation"] == "windows":  # a stride that does not fit: the error now, before any output
        encode_windows(tokenizer, [""], settings["max_length"], settings.get("window_stride", 128))
    model = classifier.to(accelerator.device)  # inference only: no DDP wrapper needed
    logger.info(f"evaluating {model_name_or_path} ({settings['truncation']}, max_length {settings['max_length']}) "
                f"on {accelerator.num_processes} process(es)")
    base_model = classifier.config.base_model
    given = Path(str(model_name_or_path)).expanduser()
    dapt, found = encoder_summary(base_model, given if given.is_dir() else None)
    leakage = check_pretraining_overlap(config.data.eval, dapt, config.data.allow_pretraining_overlap,
                                        base_model or str(model_name_or_path), found)
    labelled_sets = load_eval_sets(config.data.eval, accelerator, seed=config.train.seed)
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
        "settings": {**{k: settings.get(k) for k in ("max_length", "truncation", "head_tokens", "window_stride")},
                     "temperature": get_temperature(classifier)},
        "num_processes": accelerator.num_processes,
        "evaluation": evaluation,
        "plots": [p.relative_to(output_dir).as_posix() for p in plots],
    }
    write_json(accelerator, output_dir / "results.json", results)
    end_run(accelerator)
    return results


def fit_temperature_on(model, loader, accelerator) -> dict:
    """Fit the temperature on the (validation) ``loader`` with the evaluation's own prediction rule
    (windows averaged per review), store it in ``model``'s config, and return the ``calibration``
    block of results.json: the temperature and the validation metrics before and after."""
    validation = predict(model, loader, accelerator)
    temperature = fit_temperature(validation.logits, validation.label)
    set_temperature(model, temperature)
    report = calibration_report(validation.logits, validation.label, temperature)
    return {"fitted_on": "validation", "n": int(len(validation.label)), **report}


def main(argv=None) -> None:
    from dapt.core.config import ConfigError, parse_cli

    from classify.config import ClassifyConfig

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", required=True, help="stage-2 output dir, its model/ folder, or a Hub repo id")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--output-dir", default=None, help="where results.json and plots/ go (default runs/eval/NAME)")
    parser.add_argument("--truncation", choices=("head", "head+tail", "windows"), help="read reviews this way instead of the model's way")
    parser.add_argument("--window-stride", type=int, default=None, help="windows: tokens shared by consecutive windows")
    if argv is None:
        argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print("usage: dapt-evaluate --model DIR_OR_REPO [--revision REV] [--output-dir DIR] [--truncation head|head+tail|windows]\n"
              "                     [--window-stride N] [--config YAML] [key=value ...]\n\n"
              "Evaluate a trained classifier on the evaluation sets of a stage-2 config (data.eval.*).")
        raise SystemExit(0)
    args, rest = parser.parse_known_args(argv)
    config = parse_cli(ClassifyConfig, rest, "Evaluate a sentiment classifier", default_config=None)
    output_dir = args.output_dir or str(Path("runs/eval") / Path(args.model.rstrip("/")).name)
    try:
        results = run_evaluation(config, args.model, output_dir, revision=args.revision, truncation=args.truncation,
                                 window_stride=args.window_stride)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        from dapt.core.runtime import release_process_group

        release_process_group(barrier=False)  # exit without the gloo hang
        raise SystemExit(f"error: {error}") from None
    for name, block in results["evaluation"].items():
        ece = block["calibration"]
        print(f"{name}: " + ", ".join(f"{k} {block[k]:.4f}" for k in METRIC_KEYS[:-1] if block.get(k) is not None)
              + f", n {block['n']}, ECE {ece['before']['ece']:.4f} -> {ece['after']['ece']:.4f} (T {ece['temperature']:.3f})")
    print(f"results: {Path(output_dir) / 'results.json'}")


if __name__ == "__main__":
    main()


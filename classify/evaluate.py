"""Evaluation of a sentiment classifier: predictions gathered across processes, metrics, plots.

    python -m classify.evaluate --model runs/classify [--config configs/classify.yaml] [key=value ...]
    dapt-evaluate --model USER/REPO --config configs/demo/classify.yaml --output-dir runs/eval/plain

``--model`` is a stage-2 output directory, its ``model/`` folder, or a Hub repository. The
evaluation sets, batch size and runtime come from the (stage-2) config; tokenization follows the
classifier's own stored settings (max length, truncation), exactly as at inference. Writes
``results.json``, ``plots/`` and ``predictions/NAME.npz`` (per-row P(positive), prediction, label,
loss) to ``--output-dir`` (default ``runs/eval/<model name>``), so a
classifier on a plain encoder and one on a DAPT encoder can be compared on the same data.

Under several processes every process predicts its share of the batches; the predictions are
gathered with ``gather_for_metrics`` (which drops the rows accelerate repeats to even out the last
batches) and put back in dataset order by row index, so the metrics are those of one process.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a file: `accelerate launch classify/evaluate.py`
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # classify/ itself: its model.py / data.py must not shadow other imports
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from classify.data import Collator, LabelledSet, LabelledSetConfig, LengthBucketBatchSampler, ReviewDataset, load_labelled
from dapt.runtime import logger

PREDICTIONS_DIR = "predictions"  # RUN/predictions/NAME.npz: per-row predictions in dataset order
METRIC_KEYS = ("accuracy", "f1", "precision", "recall", "roc_auc", "loss", "n")


@dataclass
class Predictions:
    """Per row, in dataset order: P(positive), predicted class, true label, cross-entropy loss."""

    prob: np.ndarray
    pred: np.ndarray
    label: np.ndarray
    loss: np.ndarray


def compute_metrics(labels, preds, probs, losses) -> dict:
    """Accuracy, F1 / precision / recall of the positive class, ROC AUC of P(positive) (``None``
    when one class is absent), mean per-row loss, and the row count."""
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


def make_eval_loader(dataset: ReviewDataset, tokenizer, batch_size: int, group_by_length: bool = True, workers: int = 0):
    """Unshuffled batches (longest first when grouping); the same batches for any process count."""
    sampler = LengthBucketBatchSampler(dataset.lengths, batch_size, shuffle=False, group_by_length=group_by_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=Collator(pad), num_workers=workers,
        generator=torch.Generator(),  # iterating never draws from the global RNG (exact resume)
    )


@torch.no_grad()
def predict(model, loader, accelerator) -> Predictions:
    """Run a prepared loader through ``model`` on every process; all rows, once each, in order."""
    was_training = model.training
    model.eval()
    parts = []
    for batch in loader:
        with accelerator.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits.float()
        losses = F.cross_entropy(logits, batch["labels"], reduction="none")
        probs = torch.softmax(logits, dim=-1)[:, 1]
        rows = (batch["index"], probs, logits.argmax(dim=-1), batch["labels"], losses)
        parts.append(accelerator.gather_for_metrics(rows))  # kept on the device: no sync per batch
    model.train(was_training)
    index, prob, pred, label, loss = (torch.cat(column).cpu().numpy() for column in zip(*parts))
    expected = len(loader.dataset)
    order = np.argsort(index, kind="stable")
    if len(index) != expected or not np.array_equal(index[order], np.arange(expected)):
        raise RuntimeError(f"gathered {len(index)} predictions for {expected} rows ({len(np.unique(index))} distinct)")
    return Predictions(prob[order], pred[order], label[order], loss[order])


def evaluate_set(model, tokenizer, labelled: LabelledSet, settings: dict, accelerator, batch_size: int,
                 group_by_length: bool = True, workers: int = 0) -> tuple[dict, Predictions]:
    """Metrics and predictions of ``model`` on one labelled set, tokenized with ``settings``
    (max_length, truncation, head_tokens)."""
    dataset = ReviewDataset(labelled.texts, labelled.labels, tokenizer, settings["max_length"],
                            settings["truncation"], settings["head_tokens"])
    loader = accelerator.prepare(make_eval_loader(dataset, tokenizer, batch_size, group_by_length, workers))
    predictions = predict(model, loader, accelerator)
    return compute_metrics(predictions.label, predictions.pred, predictions.prob, predictions.loss), predictions


def result_block(config: LabelledSetConfig, labelled: LabelledSet, metrics: dict) -> dict:
    """One entry of results.json ``evaluation``; a subset says what it is a subset of."""
    block = {"dataset": config.name or config.path, "split": config.split, **metrics}
    if len(labelled) < labelled.total:
        block["subset_of"] = labelled.total
    return block


def plot_set(name: str, predictions: Predictions, plots_dir: Path, title: str) -> list[Path]:
    from classify.plots import confusion_matrix_png, roc_curve_png

    made = [confusion_matrix_png(predictions.label, predictions.pred, plots_dir / f"confusion_{name}.png", f"{title}: confusion matrix")]
    roc = roc_curve_png(predictions.label, predictions.prob, plots_dir / f"roc_{name}.png", f"{title}: ROC curve")
    return made + ([roc] if roc else [])


def save_predictions(predictions: Predictions, path: Path) -> Path:
    """Per-row arrays (``prob``, ``pred``, ``label``, ``loss``) in dataset order, for paired
    comparisons between runs (the ablation's bootstrap)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, prob=predictions.prob, pred=predictions.pred, label=predictions.label, loss=predictions.loss)
    return path


def load_predictions(run_dir: Path, names) -> Optional[dict[str, Predictions]]:
    """``RUN/predictions/NAME.npz`` (:func:`save_predictions`) for every set, or None when one is missing."""
    found = {}
    for name in names:
        path = Path(run_dir) / PREDICTIONS_DIR / f"{name}.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            found[name] = Predictions(data["prob"], data["pred"], data["label"], data["loss"])
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
        logger.info(
            f"{name} ({labelled.where}, n={metrics['n']}): accuracy {metrics['accuracy']:.4f}, F1 {metrics['f1']:.4f}, "
            f"ROC AUC {metrics['roc_auc'] if metrics['roc_auc'] is None else round(metrics['roc_auc'], 4)}, "
            f"loss {metrics['loss']:.4f} [{time.time() - started:.0f} s]"
        )
        if output_dir is not None and accelerator.is_main_process:
            save_predictions(predictions, Path(output_dir) / PREDICTIONS_DIR / f"{name}.npz")
            plots += plot_set(name, predictions, Path(output_dir) / "plots", name.replace("_", " "))
    return evaluation, plots


# --------------------------------------------------------------------------------------------
# Evaluate-only entry point


def run_evaluation(config, model_name_or_path: str, output_dir: str | Path, revision: Optional[str] = None) -> dict:
    """Evaluate a saved classifier on ``config.data.eval``; writes results.json + plots/."""
    import json

    from accelerate.utils import set_seed

    from classify.model import load_classifier
    from dapt.runtime import make_accelerator, write_json

    output_dir = Path(output_dir)
    accelerator = make_accelerator(config.impl, output_dir)
    set_seed(config.train.seed)
    classifier, tokenizer = load_classifier(model_name_or_path, revision=revision)
    settings = classifier.settings
    model = classifier.to(accelerator.device)  # inference only: no DDP wrapper needed
    logger.info(f"evaluating {model_name_or_path} ({settings['truncation']}, max_length {settings['max_length']}) "
                f"on {accelerator.num_processes} process(es)")
    labelled_sets = load_eval_sets(config.data.eval, accelerator, seed=config.train.seed)
    evaluation, plots = evaluate_all(
        model, tokenizer, config.data.eval, labelled_sets, settings, accelerator, batch_size=config.train.eval_batch_size,
        output_dir=output_dir, group_by_length=config.data.group_by_length, workers=config.impl.dataloader_workers,
    )
    base_model = classifier.config.base_model
    dapt = None
    if base_model and (Path(base_model) / "dapt_summary.json").is_file():
        dapt = json.loads((Path(base_model) / "dapt_summary.json").read_text())
    results = {
        "run_name": f"eval-{Path(str(model_name_or_path).rstrip('/')).name}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": str(model_name_or_path),
        "base_model": base_model,
        "dapt": dapt,
        "settings": {k: settings[k] for k in ("max_length", "truncation", "head_tokens")},
        "num_processes": accelerator.num_processes,
        "evaluation": evaluation,
        "plots": [p.relative_to(output_dir).as_posix() for p in plots],
    }
    write_json(accelerator, output_dir / "results.json", results)
    accelerator.wait_for_everyone()
    return results


def main(argv=None) -> None:
    from dapt.config import ConfigError, parse_cli

    from classify.config import ClassifyConfig

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", required=True, help="stage-2 output dir, its model/ folder, or a Hub repo id")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--output-dir", default=None, help="where results.json and plots/ go (default runs/eval/NAME)")
    if argv is None:
        argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print("usage: dapt-evaluate --model DIR_OR_REPO [--revision REV] [--output-dir DIR] [--config YAML] [key=value ...]\n\n"
              "Evaluate a trained classifier on the evaluation sets of a stage-2 config (data.eval.*).")
        raise SystemExit(0)
    args, rest = parser.parse_known_args(argv)
    config = parse_cli(ClassifyConfig, rest, "Evaluate a sentiment classifier", default_config=None)
    output_dir = args.output_dir or str(Path("runs/eval") / Path(args.model.rstrip("/")).name)
    try:
        results = run_evaluation(config, args.model, output_dir, revision=args.revision)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    for name, block in results["evaluation"].items():
        print(f"{name}: " + ", ".join(f"{k} {block[k]:.4f}" for k in METRIC_KEYS[:-1] if block.get(k) is not None) + f", n {block['n']}")
    print(f"results: {Path(output_dir) / 'results.json'}")


if __name__ == "__main__":
    main()

"""PNG figures for a stage-2 run: confusion matrix, ROC curve and reliability diagram per evaluation
set, training curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay, confusion_matrix  # noqa: E402

LABELS = ("Negative", "Positive")  # a binary task's class names when none are given


def save_figure(figure, path: Path) -> Path:
    """Lay out, write as PNG (110 dpi) and close ``figure``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def confusion_matrix_png(labels: Sequence[int], predictions: Sequence[int], path: str | Path, title: str,
                         names: Sequence[str] = LABELS) -> Path:
    """The K x K matrix of counts (rows: true class, columns: predicted), axes labelled with ``names``."""
    k = len(names)
    matrix = confusion_matrix(labels, predictions, labels=list(range(k)))
    side = max(4.2, 1.2 + 0.55 * k)
    figure, axes = plt.subplots(figsize=(side, side * 0.9))
    ConfusionMatrixDisplay(matrix, display_labels=list(names)).plot(
        ax=axes, cmap="Blues", colorbar=False, values_format="d", xticks_rotation=45 if k > 3 else "horizontal")
    axes.set_title(title)
    return save_figure(figure, Path(path))


def roc_curve_png(labels: Sequence[int], scores, path: str | Path, title: str, names: Sequence[str] = LABELS) -> Path | None:
    """ROC of ``scores`` (:func:`classify.metrics.ranking_score`): one curve for two classes; for
    K > 2 one one-vs-rest curve per class (``scores[:, c]``). ``None`` when no curve exists (only
    one class present)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if len(set(labels.tolist())) < 2:
        return None
    figure, axes = plt.subplots(figsize=(4.2, 4.0) if len(names) == 2 else (5.2, 4.8))
    if len(names) == 2:
        RocCurveDisplay.from_predictions(labels, scores, ax=axes, name="classifier", plot_chance_level=True)
    else:
        for index, name in enumerate(names):
            if 0 < (labels == index).sum() < len(labels):
                RocCurveDisplay.from_predictions(labels == index, scores[:, index], ax=axes, name=f"{name} vs rest",
                                                 plot_chance_level=index == len(names) - 1)
        axes.legend(fontsize=7, loc="lower right")
    axes.set_title(title)
    return save_figure(figure, Path(path))


def reliability_diagram_png(before: dict, after: dict, temperature: float, path: str | Path, title: str) -> Path:
    """Accuracy against confidence per equal-width bin (:func:`classify.calibration.reliability_bins`),
    before and after temperature scaling; the diagonal is perfect calibration. Empty bins are not drawn."""
    figure, axes = plt.subplots(figsize=(4.6, 4.2))
    edges = before["edges"]
    width = edges[1] - edges[0]
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for table, label, color, shift in ((before, "raw (T = 1)", "tab:red", -0.25), (after, f"scaled (T = {temperature:.2f})", "tab:blue", 0.25)):
        used = table["count"] > 0
        centres = (edges[:-1] + width / 2)[used]
        axes.bar(centres + shift * width, table["accuracy"][used], width=width / 2, color=color, alpha=0.6, label=label)
        axes.plot(table["confidence"][used], table["accuracy"][used], "o", color=color, markersize=3)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (probability of the predicted class)")
    axes.set_ylabel("accuracy in the bin")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8)
    return save_figure(figure, Path(path))


def training_curves_png(history: list[dict], metrics_path: str | Path | None, path: str | Path, title: str = "") -> Path | None:
    """Training loss per logged step; loss and accuracy per epoch, training vs validation. With one
    epoch the per-epoch panels are side-by-side bars (a line through one point shows nothing)."""
    if not history:
        return None
    steps, losses, epoch_ends = [], [], []
    if metrics_path is not None and Path(metrics_path).is_file():
        for line in Path(metrics_path).read_text().splitlines():
            record = json.loads(line)
            if "loss" in record and "event" not in record:
                steps.append(record["step"])
                losses.append(record["loss"])
            elif record.get("event") == "epoch":
                epoch_ends.append(record["step"])
    epochs = [h["epoch"] for h in history]
    figure, (by_step, loss, accuracy) = plt.subplots(1, 3, figsize=(12, 3.8))
    by_step.plot(steps, losses, color="tab:blue", linewidth=1)
    for end in epoch_ends[:-1]:
        by_step.axvline(end, color="grey", linestyle=":", linewidth=1)
    by_step.set_xlabel("optimizer step" + (" (dotted: epoch ends)" if len(epoch_ends) > 1 else ""))
    by_step.set_ylabel("training loss (logged mean)")
    by_step.set_title("per step")
    for axes, key, label in ((loss, "loss", "cross-entropy loss"), (accuracy, "acc", "accuracy")):
        train, validation = [h[f"train_{key}"] for h in history], [h[f"val_{key}"] for h in history]
        if len(history) == 1:
            bars = axes.bar(["train", "validation"], [train[0], validation[0]], color=["tab:blue", "tab:orange"])
            axes.bar_label(bars, fmt="%.3f")
            axes.set_ylim(0, 1.15 * max(train[0], validation[0], 1e-9))  # room for the labels
            axes.set_title(f"epoch {epochs[0]} (one epoch: one value each)")
        else:
            axes.plot(epochs, train, "o-", label="train")
            axes.plot(epochs, validation, "s-", label="validation")
            axes.set_xlabel("epoch")
            axes.set_xticks(epochs)
            axes.legend()
            axes.set_title("per epoch")
        axes.set_ylabel(label)
    figure.suptitle(f"Training curves{': ' + title if title else ''}")
    return save_figure(figure, Path(path))

"""PNG figures for a stage-2 run: confusion matrix and ROC curve per evaluation set, training curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay, confusion_matrix  # noqa: E402

LABELS = ("Negative", "Positive")


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def confusion_matrix_png(labels: Sequence[int], predictions: Sequence[int], path: str | Path, title: str) -> Path:
    matrix = confusion_matrix(labels, predictions, labels=[0, 1])
    figure, axes = plt.subplots(figsize=(4.2, 3.8))
    ConfusionMatrixDisplay(matrix, display_labels=LABELS).plot(ax=axes, cmap="Blues", colorbar=False, values_format="d")
    axes.set_title(title)
    return _save(figure, Path(path))


def roc_curve_png(labels: Sequence[int], scores: Sequence[float], path: str | Path, title: str) -> Path | None:
    """ROC of P(positive); ``None`` when only one class is present (no curve exists)."""
    if len(set(np.asarray(labels).tolist())) < 2:
        return None
    figure, axes = plt.subplots(figsize=(4.2, 4.0))
    RocCurveDisplay.from_predictions(labels, scores, ax=axes, name="classifier", plot_chance_level=True)
    axes.set_title(title)
    return _save(figure, Path(path))


def training_curves_png(history: list[dict], metrics_path: str | Path | None, path: str | Path) -> Path | None:
    """Loss (per logged step and per epoch, train and validation) and accuracy per epoch."""
    if not history:
        return None
    steps, losses = [], []
    if metrics_path is not None and Path(metrics_path).is_file():
        for line in Path(metrics_path).read_text().splitlines():
            record = json.loads(line)
            if "loss" in record and "event" not in record:
                steps.append(record["step"])
                losses.append(record["loss"])
    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    if steps:
        twin = left.twiny()
        twin.plot(steps, losses, color="0.75", linewidth=0.8, label="train loss (logged steps)")
        twin.set_xlabel("optimizer step", color="0.5")
        twin.tick_params(axis="x", colors="0.5")
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    left.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy loss")
    left.legend()
    left.set_zorder(twin.get_zorder() + 1 if steps else 0)
    left.patch.set_visible(False)
    right.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    right.plot(epochs, [h["val_acc"] for h in history], "s-", label="validation")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.legend()
    for axes in (left, right):
        axes.set_xticks(epochs)
    return _save(figure, Path(path))

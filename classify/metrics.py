"""The metrics of one evaluation set, for two classes and for K > 2.

Two classes (results.json keys as in every earlier version): ``accuracy``; ``f1``, ``precision``
and ``recall`` of class 1 (the positive class); ``roc_auc`` ranking by the logit margin
``z_1 - z_0``; ``loss`` (mean cross-entropy); ``n``.

K > 2 classes: ``accuracy``; ``macro_f1`` (the unweighted mean of the K per-class F1 scores - the
paper's headline metric), ``micro_f1`` (pooled over classes; for single-label data it equals
accuracy), ``macro_precision``, ``macro_recall``; ``roc_auc``, the macro average of the K
one-vs-rest ROC AUCs, class ``c`` ranked by its log-odds under the served (temperature-scaled)
softmax, ``log p_c - log(1 - p_c)`` (the same order as ``p_c``, without the ties of a saturated
probability), null when a class has no example in the set; ``per_class`` (precision, recall, F1,
support and one-vs-rest ROC AUC of each class, by name); ``confusion_matrix`` (rows: true class,
columns: predicted); ``loss``; ``n``. Everything is computed on whole arrays, with no Python loop
over rows or classes but the one that writes the per-class table.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.special import logsumexp
from scipy.stats import rankdata
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, precision_score,
                             recall_score, roc_auc_score)

BINARY_KEYS = ("accuracy", "f1", "precision", "recall", "roc_auc", "loss", "n")
MULTICLASS_KEYS = ("accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall", "roc_auc", "loss", "n")
#: results.json ``by_length`` buckets: name -> (fewest, most) tokens of the whole review
LENGTH_BUCKETS = {"<=128": (0, 128), "129-512": (129, 512), ">512": (513, None)}


def headline_keys(num_labels: int) -> tuple[str, ...]:
    """The metric keys of an evaluation block for a task of ``num_labels`` classes."""
    return BINARY_KEYS if num_labels == 2 else MULTICLASS_KEYS


def log_odds(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``log p_c - log(1 - p_c)`` of ``softmax(logits / temperature)``, per row and class, computed
    from the logits (``z_c - logsumexp(z_{j != c})``) so that it never saturates."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    k = z.shape[1]
    others = np.where(np.eye(k, dtype=bool)[None, :, :], -np.inf, z[:, None, :])  # [N, c, j]: z_j for j != c
    return z - logsumexp(others, axis=-1)


def ranking_score(predictions) -> np.ndarray:
    """What ROC AUC ranks. Two classes: the raw logit margin ``z_1 - z_0`` (the order of P(positive)
    under any temperature, without the ties of a saturated softmax); K > 2: the per-class log-odds
    under the classifier's temperature (:func:`log_odds`). Validation and evaluation both use it."""
    logits = predictions.logits
    if logits.shape[1] == 2:
        return logits[:, 1] - logits[:, 0]
    return log_odds(logits, predictions.temperature)


def one_vs_rest_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per class, the ROC AUC of ``scores[:, c]`` separating class ``c`` from the rest (the
    Mann-Whitney statistic with average ranks for ties: scikit-learn's value); NaN for a class
    with no example, or with nothing else, in ``labels``."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    is_class = labels[:, None] == np.arange(scores.shape[1])[None, :]
    positives = is_class.sum(axis=0).astype(np.float64)
    negatives = len(labels) - positives
    ranks = rankdata(scores, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * is_class).sum(axis=0) - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def compute_metrics(labels, preds, scores, losses, names: Optional[Sequence[str]] = None) -> dict:
    """The headline metrics of one set (module docstring). ``scores``: :func:`ranking_score`
    (``[N]`` for two classes, ``[N, K]`` otherwise); ``names``: the class names (two classes when
    omitted)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    loss, n = float(np.mean(np.asarray(losses, dtype=np.float64))), int(len(labels))
    if names is None or len(names) == 2:
        both_classes = len(np.unique(labels)) == 2
        return {
            "accuracy": float(accuracy_score(labels, preds)),
            "f1": float(f1_score(labels, preds, zero_division=0)),
            "precision": float(precision_score(labels, preds, zero_division=0)),
            "recall": float(recall_score(labels, preds, zero_division=0)),
            "roc_auc": float(roc_auc_score(labels, np.asarray(scores))) if both_classes else None,
            "loss": loss,
            "n": n,
        }
    classes = np.arange(len(names))
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    auc = one_vs_rest_auc(labels, scores)
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1.mean()),
        "micro_f1": float(f1_score(labels, preds, labels=classes, average="micro", zero_division=0)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "roc_auc": None if np.isnan(auc).any() else float(auc.mean()),
        "loss": loss,
        "n": n,
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s),
                   "roc_auc": None if np.isnan(a) else float(a)}
            for name, p, r, f, s, a in zip(names, precision, recall, f1, support, auc)
        },
        "confusion_matrix": {"labels": list(names), "matrix": confusion_matrix(labels, preds, labels=classes).tolist()},
    }


def macro_f1(labels, preds, num_labels: int) -> float:
    """The unweighted mean of the per-class F1 scores (0 for a class never predicted nor present)."""
    return float(f1_score(labels, preds, labels=np.arange(num_labels), average="macro", zero_division=0))


def accuracy_by_length(tokens: np.ndarray, predictions) -> dict:
    """``LENGTH_BUCKETS`` name -> {n, accuracy} (accuracy None for an empty bucket)."""
    correct = predictions.pred == predictions.label
    out = {}
    for name, (low, high) in LENGTH_BUCKETS.items():
        inside = (tokens >= low) & (tokens <= (high if high is not None else np.iinfo(np.int64).max))
        n = int(inside.sum())
        out[name] = {"n": n, "accuracy": float(correct[inside].mean()) if n else None}
    return out

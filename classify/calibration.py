"""Temperature scaling (Guo et al. 2017) and the calibration metrics reported per evaluation set.

One scalar ``T > 0`` divides the classifier's raw logits; ``softmax(z / T)`` is the calibrated
probability. ``T`` is fitted after training, on the validation split, by minimising the mean
negative log-likelihood (a bounded scalar search over ``log T``). Dividing every logit by the
same positive number changes no ``argmax`` and keeps the order of P(positive), so accuracy, F1,
precision, recall and ROC AUC are exactly those of the raw logits; only the confidences move.

Definitions (``p`` = softmax probabilities, ``y`` = true labels, ``N`` rows):

* **ECE** (expected calibration error): the confidence of a row is the probability of its
  *predicted* class, ``max_c p_c``. Rows are put in 15 equal-width bins of ``[0, 1]``: bin ``b``
  holds confidences in ``((b-1)/15, b/15]`` (a confidence of exactly 0 goes into the first bin).
  ``ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|`` over the non-empty bins. (With two
  classes the confidence is at least 0.5, so only the upper half of the bins is ever used.)
* **Brier score**: two classes, ``mean_i (P(positive)_i - y_i)^2`` (``sklearn.metrics.brier_score_loss``;
  the two-class form, half the multi-class sum over both classes, as in every earlier version);
  K > 2 classes, the multi-class form ``mean_i sum_c (p_ic - [y_i = c])^2`` (between 0 and 2).
* **NLL**: the mean cross-entropy ``-log p_{y_i}``, computed from the logits (log-softmax).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import brier_score_loss

logger = logging.getLogger(__name__)

ECE_BINS = 15
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))  # T in [0.05, 20]: far beyond any useful scaling


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` per row, in float64."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    log_p = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)
    labels = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: row count, mean confidence, accuracy (NaN when empty)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    # bin b (0-based) holds (b/bins, (b+1)/bins]; ceil puts a confidence on an edge in the lower bin
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count, "confidence": mean_confidence, "accuracy": accuracy}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width bins of the predicted class's probability (module docstring)."""
    table = reliability_bins(probs, labels, bins)
    used = table["count"] > 0
    gaps = np.abs(table["accuracy"][used] - table["confidence"][used])
    return float(np.sum(table["count"][used] / table["count"].sum() * gaps))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """The Brier score of class probabilities ``probs`` [N, K] (module docstring: its two forms)."""
    if probs.shape[1] == 2:
        return float(brier_score_loss(labels, probs[:, 1], pos_label=1))
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def calibration_metrics(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict:
    """ECE, Brier score and NLL of ``softmax(logits / temperature)``."""
    probs = probabilities(logits, temperature)
    labels = np.asarray(labels, dtype=np.int64)
    return {
        "ece": expected_calibration_error(probs, labels),
        "brier": brier_score(probs, labels),
        "nll": nll(logits, labels, temperature),
    }


def calibration_report(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """The ``calibration`` block of one evaluation set: the temperature, and the metrics of the raw
    logits (``before``) and of the scaled ones (``after``)."""
    return {
        "temperature": float(temperature),
        "ece_bins": ECE_BINS,
        "before": calibration_metrics(logits, labels, 1.0),
        "after": calibration_metrics(logits, labels, temperature),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The NLL-optimal temperature of raw ``logits`` for ``labels`` (bounded search over log T)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on an empty validation set")
    found = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=LOG_T_BOUNDS,
                            method="bounded", options={"xatol": 1e-7})
    return float(math.exp(found.x))


def search_bound(temperature: float, tolerance: float = 1e-3) -> str | None:
    """``"lower"`` / ``"upper"`` when a fitted temperature sits on its search bound (the NLL kept
    falling beyond it: e.g. a validation set the model cannot separate drives T up to 20, all
    confidences towards 1/K), else None."""
    log_t = math.log(temperature)
    if log_t - LOG_T_BOUNDS[0] < tolerance:
        return "lower"
    if LOG_T_BOUNDS[1] - log_t < tolerance:
        return "upper"
    return None


def fit_report(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Fit the temperature on validation ``logits`` and report it: the temperature, the metrics
    before and after (:func:`calibration_report`), and ``at_bound`` (:func:`search_bound`), which
    is also logged as a warning: a bound means the fit did not find an optimum."""
    temperature = fit_temperature(logits, labels)
    bound = search_bound(temperature)
    if bound is not None:
        logger.warning(f"the temperature fit stopped at its {bound} search bound (T = {temperature:.3g}): the validation "
                       f"set gives no NLL optimum inside [{math.exp(LOG_T_BOUNDS[0]):.2g}, {math.exp(LOG_T_BOUNDS[1]):.2g}]"
                       + (" - the model barely separates its classes there; its confidences are near 1/K" if bound == "upper"
                          else " - the model is under-confident by more than that range"))
    return {**calibration_report(logits, labels, temperature), "at_bound": bound}


# --------------------------------------------------------------------------------------------
# The classifier's stored temperature (config.temperature; forward returns raw logits / T)


def _bare(model):
    """The classifier inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def get_temperature(model) -> float:
    """The temperature the classifier's forward divides by (1.0 when its config has none)."""
    return float(getattr(_bare(model).config, "temperature", 1.0) or 1.0)


def set_temperature(model, temperature: float) -> None:
    """Store ``temperature`` in the classifier's config: forward and ``save_pretrained`` use it."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    _bare(model).config.temperature = float(temperature)

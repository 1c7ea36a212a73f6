"""The statistics of the DAPT ablation (``experiments/ablation``): pure functions of numbers (the
mean and standard deviation over seeds, the paired Student-t interval over seeds, the paired
bootstrap over test examples), then :func:`analyse`, which applies them to every arm, dataset and
metric. What each interval covers: the docstring of ``experiments/ablation/driver.py`` and docs/ablation.md.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from classify.metrics import ranking_score
from experiments.ablation.config import AblationConfig

# --------------------------------------------------------------------------------------------
# Statistics (pure functions of numbers; unit-tested on known inputs)


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t critical value: P(|T_df| <= q) = confidence."""
    from scipy.stats import t  # scipy comes with scikit-learn

    return float(t.ppf(0.5 + confidence / 2, df))


def summarize(values: Sequence[Optional[float]]) -> dict:
    """Mean and sample standard deviation (ddof 1; null for one value) of the non-null values."""
    kept = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if kept.size == 0:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    return {
        "mean": float(kept.mean()), "std": float(kept.std(ddof=1)) if kept.size > 1 else None,
        "n": int(kept.size), "values": list(values),
    }


def paired_t_interval(differences: Sequence[float], confidence: float = 0.95) -> dict:
    """mean(d) +- t_{n-1} sd(d) / sqrt(n) for paired differences d (one per seed); no interval for
    fewer than two pairs."""
    d = np.asarray(differences, dtype=np.float64)
    n = int(d.size)
    result = {"mean": float(d.mean()) if n else None, "std": None, "n": n, "df": n - 1 if n > 1 else None,
              "t": None, "low": None, "high": None, "confidence": confidence}
    if n < 2:
        return result
    sd = float(d.std(ddof=1))
    q = t_quantile(confidence, n - 1)
    half = q * sd / math.sqrt(n)
    result.update(std=sd, t=q, low=result["mean"] - half, high=result["mean"] + half)
    return result


def resampled_metric(metric: str, label: np.ndarray, pred: np.ndarray, score: Optional[np.ndarray], index: np.ndarray,
                     num_labels: int = 2) -> np.ndarray:
    """``metric`` on every resample: ``index`` is (resamples, n) row indices; returns (resamples,).

    Same definitions as :func:`classify.metrics.compute_metrics` (scikit-learn): F1, precision and
    recall of the positive class (two classes) with 0 for an empty denominator; ``macro_f1`` the
    mean of the ``num_labels`` per-class F1 scores; ROC AUC as the Mann-Whitney statistic with
    average ranks for ties (exactly sklearn's value) of ``score`` (:func:`ranking_of`: the logit
    margin ``[n]`` for two classes, the macro average of the one-vs-rest AUCs of the per-class
    log-odds ``[n, K]`` otherwise), NaN when a class is absent from a resample."""
    y = label[index]
    if metric == "accuracy":
        return (pred[index] == y).mean(axis=1)
    if metric == "macro_f1":
        resamples = np.arange(index.shape[0])[:, None] * num_labels  # each resample's own block of K counters
        count = lambda keys: np.bincount(keys.ravel(), minlength=index.shape[0] * num_labels).reshape(-1, num_labels)  # noqa: E731
        p = pred[index]
        true_positive = count((resamples + y)[p == y])
        denominator = count(resamples + y) + count(resamples + p)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), 0.0).mean(axis=1)
    if metric == "roc_auc":
        from scipy.stats import rankdata

        scores = score[index]  # (resamples, n) or (resamples, n, K)
        is_class = y[..., None] == np.arange(num_labels) if scores.ndim == 3 else y[..., None].astype(bool)
        scores = scores if scores.ndim == 3 else scores[..., None]
        ranks = rankdata(scores, axis=1)
        positives = is_class.sum(axis=1).astype(np.float64)
        negatives = y.shape[1] - positives
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = ((ranks * is_class).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)
        auc = np.where((positives > 0) & (negatives > 0), auc, np.nan)
        return auc.mean(axis=1)  # NaN when any class is absent
    y = y.astype(bool)
    p = pred[index].astype(bool)
    tp = (p & y).sum(axis=1).astype(np.float64)
    fp = (p & ~y).sum(axis=1)
    fn = (~p & y).sum(axis=1)
    denominator = {"precision": tp + fp, "recall": tp + fn, "f1": 2 * tp + fp + fn}[metric]
    numerator = 2 * tp if metric == "f1" else tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 0.0)


def ranking_of(predictions) -> np.ndarray:
    """What ROC AUC ranks (:func:`classify.metrics.ranking_score`, as results.json does): the logit
    margin, or the per-class log-odds; predictions without logits (older runs) rank by ``prob``."""
    if getattr(predictions, "logits", None) is not None:
        return ranking_score(predictions)
    return predictions.prob


def num_labels_of(predictions) -> int:
    logits = getattr(predictions, "logits", None)
    return 2 if logits is None else logits.shape[1]


def same_examples(predictions: Sequence) -> bool:
    """Whether every one of ``predictions`` scored the very same examples: their ``row`` identities
    (each example's row in its full split) are equal. Equal labels are not enough (IMDb test is
    sorted by label, so two seeded subsets share their label vector), and predictions without
    identities (older runs) are never assumed to match."""
    rows = [getattr(p, "row", None) for p in predictions]
    return all(r is not None for r in rows) and all(np.array_equal(rows[0], r) for r in rows[1:])


def bootstrap_indices(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(samples, n), dtype=np.int64 if n > 2**31 - 1 else np.int32)


def paired_bootstrap(pairs: Sequence[tuple], metric: str, indices: Sequence[np.ndarray], confidence: float = 0.95,
                     chunk: int = 200) -> dict:
    """Difference in ``metric`` (arm - baseline), averaged over seeds, with a percentile interval.

    ``pairs``: per seed, ``(baseline, arm)`` predictions (objects with ``label``, ``pred``,
    ``prob``) on the same examples; ``indices``: per seed, the (resamples, n) resampled rows, used
    for both arms. ``observed`` is the difference on the full test sets."""
    diffs, observed = None, []
    for (base, arm), index in zip(pairs, indices):
        rows = [getattr(base, "row", None), getattr(arm, "row", None)]
        if not np.array_equal(base.label, arm.label) or (all(r is not None for r in rows) and not np.array_equal(*rows)):
            raise ValueError("paired bootstrap: the two arms were evaluated on different examples")
        k = num_labels_of(base)

        def value(p, rows):
            return resampled_metric(metric, p.label, p.pred, ranking_of(p), rows, k)

        full = np.arange(len(base.label))[None, :]
        observed.append(float(value(arm, full)[0] - value(base, full)[0]))
        seed_diffs = np.concatenate([value(arm, index[i:i + chunk]) - value(base, index[i:i + chunk])
                                     for i in range(0, len(index), chunk)])
        diffs = seed_diffs if diffs is None else diffs + seed_diffs
    diffs = diffs / len(pairs)
    kept = diffs[np.isfinite(diffs)]
    alpha = 1 - confidence
    low, high = (np.quantile(kept, [alpha / 2, 1 - alpha / 2]) if kept.size else (np.nan, np.nan))
    return {
        "mean": float(np.mean(observed)), "low": float(low), "high": float(high), "confidence": confidence,
        "samples": int(kept.size), "std": float(kept.std(ddof=1)) if kept.size > 1 else None,
        "p_not_positive": float(np.mean(kept <= 0)) if kept.size else None,  # share of resamples with no gain
        "seeds": len(pairs),
    }


def applies(metric: str, predictions) -> bool:
    """Positive-class F1, precision and recall exist for two classes only."""
    return metric not in ("f1", "precision", "recall") or num_labels_of(predictions) == 2


def excludes_zero(interval: Optional[dict]) -> Optional[bool]:
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return None
    return bool(interval["low"] > 0 or interval["high"] < 0)


# --------------------------------------------------------------------------------------------
# Analysis


def analyse(config: AblationConfig, results: dict, predictions: dict) -> dict:
    """Summary, comparisons with the baseline arm, and convergence, from the runs' results.json
    (``results[arm][seed]``) and per-example predictions (``predictions[arm][seed][dataset]``)."""
    arms = [arm.name for arm in config.arms]
    baseline = config.baseline_arm
    seeds = list(config.seeds)
    datasets = [name for name in results[arms[0]][seeds[0]]["evaluation"]]

    summary = {arm: {ds: {m: summarize([results[arm][s]["evaluation"][ds].get(m) for s in seeds])
                          for m in config.metrics + ["loss"]} for ds in datasets} for arm in arms}
    for arm in arms:
        for ds in datasets:
            summary[arm][ds]["n"] = [results[arm][s]["evaluation"][ds]["n"] for s in seeds]

    # the bootstrap resamples: one (resamples, n) matrix per dataset and seed, shared by all arms,
    # and by all seeds when the seeds were evaluated on the very same examples
    rng = np.random.default_rng(config.bootstrap.seed)
    indices = {}
    for ds in datasets:
        labels = [predictions[baseline][s][ds].label for s in seeds]
        if config.bootstrap.samples == 0:
            continue
        if same_examples([predictions[baseline][s][ds] for s in seeds]):
            shared = bootstrap_indices(len(labels[0]), config.bootstrap.samples, rng)
            indices[ds] = [shared] * len(seeds)
        else:
            indices[ds] = [bootstrap_indices(len(label), config.bootstrap.samples, rng) for label in labels]

    comparisons = {}
    for arm in arms:
        if arm == baseline:
            continue
        comparisons[arm] = {}
        for ds in datasets:
            block = {}
            for metric in config.metrics:
                pairs = [(results[baseline][s]["evaluation"][ds].get(metric), results[arm][s]["evaluation"][ds].get(metric)) for s in seeds]
                diffs = [a - b for b, a in pairs if a is not None and b is not None]
                entry = {"difference": float(np.mean(diffs)) if diffs else None, "per_seed": diffs,
                         "paired_t": paired_t_interval(diffs, config.confidence) if diffs else None, "bootstrap": None}
                if ds in indices and applies(metric, predictions[baseline][seeds[0]][ds]):
                    entry["bootstrap"] = paired_bootstrap(
                        [(predictions[baseline][s][ds], predictions[arm][s][ds]) for s in seeds], metric, indices[ds], config.confidence,
                    )
                entry["paired_t_excludes_zero"] = excludes_zero(entry["paired_t"])
                entry["bootstrap_excludes_zero"] = excludes_zero(entry["bootstrap"])
                block[metric] = entry
            comparisons[arm][ds] = block

    convergence = {}
    for arm in arms:
        histories = {s: {e["epoch"]: e for e in results[arm][s]["training"]["epochs"]} for s in seeds}
        epochs = sorted({e for h in histories.values() for e in h})
        curve = {"epochs": epochs, "val_acc_mean": [], "val_acc_std": [], "val_loss_mean": [], "train_loss_mean": [], "n": [],
                 "val_acc": {str(s): [histories[s].get(e, {}).get("val_acc") for e in epochs] for s in seeds},
                 "best_epoch": {str(s): results[arm][s]["training"]["best_epoch"] for s in seeds}}
        for epoch in epochs:
            rows = [histories[s][epoch] for s in seeds if epoch in histories[s]]
            acc = summarize([r["val_acc"] for r in rows])
            curve["val_acc_mean"].append(acc["mean"])
            curve["val_acc_std"].append(acc["std"])
            curve["val_loss_mean"].append(summarize([r["val_loss"] for r in rows])["mean"])
            curve["train_loss_mean"].append(summarize([r["train_loss"] for r in rows])["mean"])
            curve["n"].append(len(rows))
        if arm != baseline:  # the validation-accuracy gain per epoch, paired by seed
            base = {s: {e["epoch"]: e["val_acc"] for e in results[baseline][s]["training"]["epochs"]} for s in seeds}
            curve["val_acc_difference"] = [
                paired_t_interval([histories[s][e]["val_acc"] - base[s][e] for s in seeds if e in histories[s] and e in base[s]],
                                  config.confidence) for e in epochs
            ]
        convergence[arm] = curve
    return {"datasets": datasets, "summary": summary, "comparisons": comparisons, "convergence": convergence}

"""The ablation's statistics beyond two classes, and the two places where they disagreed with
results.json (issue 20, section 6): ROC AUC ranked by saturating probabilities instead of the logit
margin, and "the same test examples in every seed" judged by the labels alone."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from classify.evaluate import from_logits
from classify.metrics import compute_metrics, ranking_score
from experiments.ablation.stats import bootstrap_indices, paired_bootstrap, resampled_metric, same_examples


def _predictions(labels, logits, rows=None):
    predictions = from_logits(logits, labels)
    predictions.row = None if rows is None else np.asarray(rows)
    return predictions


def test_the_bootstrap_auc_is_the_auc_results_json_reports_even_when_probabilities_saturate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    margins = 60 * (labels - 0.5) + rng.normal(0, 30, 200)  # |margin| > 40 for many: P(positive) 1.0 exactly
    base = _predictions(labels, np.stack([np.zeros(200), margins], 1))
    arm = _predictions(labels, np.stack([np.zeros(200), margins + rng.normal(0, 20, 200)], 1))
    assert (base.prob == 1.0).mean() > 0.2  # ties in floating point
    reported = [compute_metrics(p.label, p.pred, ranking_score(p), p.loss)["roc_auc"] for p in (base, arm)]
    result = paired_bootstrap([(base, arm)], "roc_auc", [bootstrap_indices(200, 50, rng)])
    assert result["mean"] == pytest.approx(reported[1] - reported[0], abs=1e-12)


def test_same_examples_means_the_same_rows_not_the_same_labels():
    labels = np.array([0] * 10 + [1] * 10)  # IMDb test is sorted by label: two subsets share the label vector
    logits = np.zeros((20, 2))
    first, second = _predictions(labels, logits, rows=range(20)), _predictions(labels, logits, rows=range(100, 120))
    assert not same_examples([first, second])
    assert same_examples([first, _predictions(labels, logits, rows=range(20))])
    assert not same_examples([_predictions(labels, logits), _predictions(labels, logits)])  # no identities: never assumed


def test_macro_f1_on_every_resample_equals_scikit_learn_for_k_classes():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 4, 300))
    index = bootstrap_indices(300, 9, rng)
    values = resampled_metric("macro_f1", labels, pred, None, index, num_labels=4)
    assert values == pytest.approx([f1_score(labels[i], pred[i], labels=range(4), average="macro", zero_division=0)
                                    for i in index])


def test_k_class_auc_on_every_resample_is_the_macro_one_vs_rest_auc():
    from classify.metrics import one_vs_rest_auc

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3)) + np.eye(3)[labels]
    p = _predictions(labels, logits)
    index = bootstrap_indices(150, 6, rng)
    values = resampled_metric("roc_auc", labels, p.pred, ranking_score(p), index, num_labels=3)
    assert values == pytest.approx([np.mean(one_vs_rest_auc(labels[i], ranking_score(p)[i])) for i in index])

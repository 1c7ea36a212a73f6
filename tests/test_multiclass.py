"""Stage 2 with K > 2 classes: the metrics' definitions (classify/metrics.py, classify/calibration.py)
checked against scikit-learn and an independent high-precision computation, and a 4-class run on
AG News with a tiny encoder: results.json, plots, predictions, the saved model's labels."""

from __future__ import annotations

import json

import mpmath
import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from classify.calibration import brier_score, calibration_metrics
from classify.evaluate import from_logits
from classify.metrics import compute_metrics, log_odds, one_vs_rest_auc, ranking_score
from dapt.core.config import ConfigError

AG_NEWS = ["World", "Sports", "Business", "Sci/Tech"]


def _logits(n=300, k=4, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    return labels, logits * scale


def test_macro_metrics_match_scikit_learn():
    labels, logits = _logits()
    predictions = from_logits(logits, labels)
    metrics = compute_metrics(labels, predictions.pred, ranking_score(predictions), predictions.loss, AG_NEWS)
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predictions.pred, average="macro"))
    assert metrics["micro_f1"] == pytest.approx(metrics["accuracy"])
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, predictions.prob, multi_class="ovr", average="macro"))
    per_class = roc_auc_score(np.eye(4)[labels], predictions.prob, average=None)
    assert [metrics["per_class"][n]["roc_auc"] for n in AG_NEWS] == pytest.approx(per_class)
    assert sum(metrics["per_class"][n]["support"] for n in AG_NEWS) == metrics["n"] == 300
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert matrix.sum() == 300 and np.trace(matrix) / 300 == pytest.approx(metrics["accuracy"])
    assert metrics["confusion_matrix"]["labels"] == AG_NEWS
    assert predictions.prob.shape == (300, 4) and np.allclose(predictions.prob.sum(axis=1), 1)


def test_auc_ranks_by_log_odds_that_do_not_saturate():
    """Margins of hundreds: the float64 softmax ties at 1.0, the log-odds keep the order, and the
    AUC equals the one from probabilities computed with 600 digits."""
    labels, logits = _logits(n=40, k=3, scale=80.0, seed=1)
    probs = from_logits(logits, labels).prob
    assert (probs == 1.0).sum() > 5  # saturated in float64
    mpmath.mp.dps = 600  # the largest margins here are a few hundred: exp(-500) needs ~220 digits

    def exact(row):
        weights = [mpmath.e ** mpmath.mpf(float(z)) for z in row]
        return [w / sum(weights) for w in weights]

    exact_probs = [exact(row) for row in logits]
    for c in range(3):
        positives = [p[c] for p, y in zip(exact_probs, labels) if y == c]
        negatives = [p[c] for p, y in zip(exact_probs, labels) if y != c]
        pairs = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in positives for b in negatives)
        assert one_vs_rest_auc(labels, log_odds(logits))[c] == pytest.approx(pairs / (len(positives) * len(negatives)))
    assert np.allclose(log_odds(logits[:5] / 80), np.log(from_logits(logits[:5] / 80, labels[:5]).prob)
                       - np.log1p(-from_logits(logits[:5] / 80, labels[:5]).prob))


def test_binary_ranking_and_metrics_keep_their_keys():
    labels, logits = _logits(k=2)
    predictions = from_logits(logits, labels)
    assert np.array_equal(ranking_score(predictions), logits[:, 1] - logits[:, 0])
    metrics = compute_metrics(labels, predictions.pred, ranking_score(predictions), predictions.loss, ["Negative", "Positive"])
    assert list(metrics) == ["accuracy", "f1", "precision", "recall", "roc_auc", "loss", "n"]


def test_multiclass_brier_is_the_sum_over_classes_and_binary_keeps_its_half():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert brier_score(probs, np.array([0, 1])) == pytest.approx(((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.9**2 + 0.8**2)) / 2)
    binary = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert brier_score(binary, np.array([0, 1])) == pytest.approx((0.2**2 + 0.4**2) / 2)
    labels, logits = _logits()
    assert set(calibration_metrics(logits, labels, 1.3)) == {"ece", "brier", "nll"}


# --- a 4-class run ---------------------------------------------------------------------------


def _ag_news_config(encoder_dir, data_dir, output_dir, *overrides):
    from classify.config import ClassifyConfig
    from dapt.core.config import load_config

    base = [
        f"output_dir={output_dir}", f"model.encoder={encoder_dir}", "model.max_length=48",
        f"data.train.path={data_dir}/ag_news", "data.train.max_samples=160", "data.validation_size=40",
        "data.eval={}", f"data.eval.ag_news_test.path={data_dir}/ag_news", "data.eval.ag_news_test.split=test",
        "data.eval.ag_news_test.max_samples=80", "train.epochs=2", "train.batch_size=16", "train.eval_batch_size=32",
        "train.encoder_lr=2e-3", "train.head_lr=1e-2", "train.best_metric=val_macro_f1", "train.log_every=5",
        'impl.mixed_precision="no"', "impl.dataloader_workers=0", "checkpoint.every_epoch=false",
    ]
    return load_config(ClassifyConfig, None, base + list(overrides))


@pytest.fixture(scope="module")
def four_class_run(tiny_headless_encoder_dir, shared_data, tmp_path_factory):
    from classify.train import train_classifier

    out = tmp_path_factory.mktemp("ag_news_run")
    return out, train_classifier(_ag_news_config(tiny_headless_encoder_dir, shared_data, out))


def test_a_four_class_run_reports_macro_metrics_per_class_and_a_confusion_matrix(four_class_run):
    out, results = four_class_run
    assert results["task"]["labels"] == AG_NEWS and results["task"]["num_labels"] == 4
    assert "label_names metadata" in results["task"]["labels_from"]
    assert set(results["training"]["epochs"][0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1",
                                                     "val_roc_auc"}
    assert results["training"]["best_metric"] == "val_macro_f1"
    block = results["evaluation"]["ag_news_test"]
    assert {"accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall", "roc_auc", "loss", "n", "per_class",
            "confusion_matrix", "calibration", "by_length"} <= set(block) and "f1" not in block
    assert list(block["per_class"]) == AG_NEWS and sum(c["support"] for c in block["per_class"].values()) == block["n"] == 80
    assert np.array(block["confusion_matrix"]["matrix"]).shape == (4, 4)
    assert block["macro_f1"] == pytest.approx(np.mean([c["f1"] for c in block["per_class"].values()]))
    assert 0 <= block["calibration"]["after"]["brier"] <= 2
    assert sorted(results["plots"]) == ["plots/confusion_ag_news_test.png", "plots/reliability_ag_news_test.png",
                                        "plots/roc_ag_news_test.png", "plots/training_curves.png"]
    with np.load(out / "predictions" / "ag_news_test.npz") as saved:
        assert saved["prob"].shape == (80, 4) and saved["logits"].shape == (80, 4)
        assert np.mean(saved["pred"] == saved["label"]) == pytest.approx(block["accuracy"])
    examples = json.loads((out / "examples.json").read_text())["examples"]
    assert {e["label"] for e in examples} <= set(AG_NEWS) and len(examples) >= 4


def test_the_saved_model_names_its_four_classes(four_class_run):
    from classify.model import infer_reviews, load_classifier, predict_proba

    out, _ = four_class_run
    classifier, tokenizer = load_classifier(out)
    assert classifier.config.id2label == dict(enumerate(AG_NEWS)) and classifier.classifier.out_features == 4
    index, label, confidence = infer_reviews("Stocks rally as the central bank holds rates", classifier, tokenizer)
    assert label == AG_NEWS[index] and 0.25 <= confidence <= 1
    probs = predict_proba(["one text", "another"], classifier, tokenizer)
    assert len(probs) == 2 and all(len(p) == 4 and sum(p) == pytest.approx(1) for p in probs)


def test_val_f1_is_refused_for_four_classes_before_anything_is_written(tiny_headless_encoder_dir, shared_data, tmp_path):
    from classify.train import train_classifier

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"train.best_metric.*val_macro_f1.*4 classes"):
        train_classifier(_ag_news_config(tiny_headless_encoder_dir, shared_data, out, "train.best_metric=val_f1"))
    assert not out.exists() or not any(out.iterdir())


def test_dapt_evaluate_scores_any_labelled_file_with_data(four_class_run, shared_data, tmp_path, capsys):
    import pandas as pd

    from classify.evaluate import main as evaluate_main

    out, _ = four_class_run
    frame = pd.read_parquet(shared_data / "ag_news" / "test.parquet").sample(60, random_state=0)
    frame = frame.assign(topic=[AG_NEWS[i] for i in frame["label"]]).rename(columns={"text": "headline"})
    frame[["headline", "topic"]].to_csv(tmp_path / "my-news.csv", index=False)  # names, not indices; other columns
    evaluate_main(["--model", str(out), "--data", str(tmp_path / "my-news.csv"), "--text-column", "headline",
                   "--label-column", "topic", "--output-dir", str(tmp_path / "eval")])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results["evaluation"]) == ["my_news"] and results["evaluation"]["my_news"]["n"] == 60
    assert results["task"]["labels"] == AG_NEWS and "my_news: accuracy" in capsys.readouterr().out
    assert results["settings"]["mixed_precision"] == "no"  # a CPU evaluation runs in fp32 unless asked otherwise
    frame.assign(topic=["Weather"] + [AG_NEWS[i] for i in frame["label"][1:]])[["headline", "topic"]].to_csv(
        tmp_path / "bad.csv", index=False)
    with pytest.raises(SystemExit, match=r"error: .*bad.csv: column 'topic' row 0 is 'Weather': not one of the task's classes"):
        evaluate_main(["--model", str(out), "--data", str(tmp_path / "bad.csv"), "--text-column", "headline",
                       "--label-column", "topic", "--output-dir", str(tmp_path / "eval2")])
    assert not (tmp_path / "eval2" / "results.json").exists()


def test_dapt_evaluate_help_says_how_to_name_a_file(capsys):
    from classify.evaluate import main as evaluate_main

    with pytest.raises(SystemExit):
        evaluate_main(["--help"])
    text = capsys.readouterr().out
    assert "--data FILE" in text and "data.eval.NAME.path=FILE" in text


def test_training_curves_have_a_title_and_bars_for_a_single_epoch(tmp_path, monkeypatch):
    """Issue 20: the figure had no title, and one epoch drew single points."""
    from classify import plots

    seen = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: seen.append(figure) or path)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"step": i, "loss": 1 / i}) for i in range(1, 9)))
    one = [{"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6, "val_acc": 0.75}]
    plots.training_curves_png(one, metrics, tmp_path / "one.png", "my-run")
    plots.training_curves_png(one + [{**one[0], "epoch": 2}], metrics, tmp_path / "two.png", "my-run")
    single, several = seen
    assert single._suptitle.get_text() == "Training curves: my-run"
    assert [len(axes.patches) for axes in single.axes] == [0, 2, 2]  # train and validation bars
    assert [len(axes.patches) for axes in several.axes] == [0, 0, 0] and len(several.axes[1].lines) == 2


def test_the_stage_2_command_prints_a_four_class_runs_metrics(tiny_headless_encoder_dir, shared_data, tmp_path, capsys):
    """dapt-classify's closing lines read the K-class keys (it printed the binary F1 and failed)."""
    from classify.train import main

    main([f"output_dir={tmp_path / 'run'}", f"model.encoder={tiny_headless_encoder_dir}", "model.max_length=48",
          f"data.train.path={shared_data}/ag_news", "data.train.max_samples=80", "data.validation_size=40", "data.eval={}",
          f"data.eval.test.path={shared_data}/ag_news", "data.eval.test.split=test", "data.eval.test.max_samples=40",
          "train.epochs=1", "train.batch_size=16", 'impl.mixed_precision="no"', "impl.dataloader_workers=0",
          "checkpoint.every_epoch=false"])
    printed = capsys.readouterr().out
    assert "test: accuracy" in printed and "macro f1" in printed and "results:" in printed

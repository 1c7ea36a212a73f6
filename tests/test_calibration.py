"""Temperature scaling and the calibration metrics (classify/calibration.py), their place in
evaluation (classify/evaluate.py), and the windows truncation's evaluation rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss

from classify.calibration import (
    ECE_BINS,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    get_temperature,
    nll,
    probabilities,
    reliability_bins,
    set_temperature,
)
from classify.data import LabelledSet, ReviewDataset
from classify.evaluate import accuracy_by_length, evaluate_set, fit_temperature_on, from_logits, make_eval_loader, predict
from classify.encoder import from_encoder
from classify.model import encode_windows, load_classifier
from dapt.core.runtime import ImplConfig, make_accelerator

WORDS = "the movie was good great bad terrible boring film acting story loved hated plot end".split()


def synthetic_logits(n: int = 4000, scale: float = 4.0, seed: int = 0):
    """Labels drawn from calibrated probabilities; the logits handed out are ``scale`` times too
    large: an over-confident classifier whose NLL-optimal temperature is ``scale``."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(np.int64)
    logits = np.stack([np.zeros(n), scale * margin], axis=1)
    return logits, labels


def test_ece_is_the_binned_gap_between_accuracy_and_confidence():
    # confidences 0.55 (bin 9 of 15), 0.95 (bin 15) and exactly 0.6 (edge of bins 9|10 -> bin 9)
    probs = np.array([[0.45, 0.55], [0.55, 0.45], [0.05, 0.95], [0.95, 0.05], [0.4, 0.6]])
    labels = np.array([1, 1, 1, 1, 1])  # correct: yes, no, yes, no, yes
    table = reliability_bins(probs, labels)
    assert len(table["count"]) == ECE_BINS and table["count"].sum() == 5
    assert table["count"][8] == 3 and table["count"][14] == 2  # (8/15, 9/15] holds 0.55, 0.55 and 0.6
    gap_low = abs(2 / 3 - (0.55 + 0.55 + 0.6) / 3)
    gap_high = abs(1 / 2 - 0.95)
    assert expected_calibration_error(probs, labels) == pytest.approx(3 / 5 * gap_low + 2 / 5 * gap_high, abs=1e-12)
    assert expected_calibration_error(np.array([[0.0, 1.0]] * 4), np.ones(4, dtype=int)) == pytest.approx(0.0)


def test_brier_and_nll_agree_with_sklearn():
    logits, labels = synthetic_logits(500, scale=2.0)
    metrics = calibration_metrics(logits, labels, temperature=1.7)
    probs = probabilities(logits, 1.7)
    assert metrics["brier"] == pytest.approx(brier_score_loss(labels, probs[:, 1]), rel=1e-12)
    assert metrics["nll"] == pytest.approx(log_loss(labels, probs), rel=1e-9)


def test_fitted_temperature_matches_a_fine_grid_search_of_validation_nll():
    logits, labels = synthetic_logits(3000, scale=3.0, seed=1)
    fitted = fit_temperature(logits, labels)
    # independently: two-class NLL = mean log(1 + exp(-sign * margin / T)), on a coarse grid of T
    # and then a fine one around its best point (steps of 0.001 % in T)
    signed_margin = np.where(labels == 1, 1.0, -1.0) * (logits[:, 1] - logits[:, 0])

    def grid_nll(grid):
        return np.logaddexp(0.0, -signed_margin[None, :] / grid[:, None]).mean(axis=1)

    coarse = np.exp(np.linspace(math.log(0.2), math.log(20), 1001))
    at = int(np.argmin(grid_nll(coarse)))
    fine = np.linspace(coarse[max(at - 2, 0)], coarse[min(at + 2, 1000)], 2001)
    losses = grid_nll(fine)
    best = fine[int(np.argmin(losses))]
    assert fitted == pytest.approx(best, rel=2e-5)
    assert nll(logits, labels, fitted) <= losses.min() + 1e-12
    assert fitted == pytest.approx(3.0, rel=0.1)  # the over-confidence built into the data


def test_overconfident_logits_get_t_above_1_and_ece_drops_accuracy_and_auc_unchanged():
    logits, labels = synthetic_logits(4000, scale=5.0, seed=2)
    t = fit_temperature(logits, labels)
    assert t > 1
    before, after = calibration_metrics(logits, labels), calibration_metrics(logits, labels, t)
    assert after["ece"] < before["ece"] / 2 and after["nll"] < before["nll"] and after["brier"] < before["brier"]
    raw, scaled = from_logits(logits, labels), from_logits(logits, labels, t)
    from classify.evaluate import compute_metrics

    m_raw = compute_metrics(raw.label, raw.pred, raw.prob, raw.loss)
    m_scaled = compute_metrics(scaled.label, scaled.pred, scaled.prob, scaled.loss)
    for key in ("accuracy", "f1", "precision", "recall", "roc_auc", "n"):
        assert m_scaled[key] == m_raw[key], key
    assert m_scaled["loss"] == pytest.approx(after["nll"]) and m_raw["loss"] == pytest.approx(before["nll"])


# --------------------------------------------------------------------------------------------
# On a classifier


def _texts(n: int, seed: int, lengths=(3, 40)) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(*lengths)))) for _ in range(n)]


@pytest.fixture
def accelerator(tmp_path_factory):  # per test: the autouse fixture resets accelerate's state before each
    return make_accelerator(ImplConfig(mixed_precision="no", cpu=True, dataloader_workers=0), tmp_path_factory.mktemp("acc"))


@pytest.fixture(scope="module")
def overconfident(tiny_headless_encoder_dir):
    """A tiny classifier whose head is scaled up 200x (confidences near 1), and labels that agree
    with its predictions on 80 % of the reviews: over-confident by construction."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    classifier = from_encoder(tiny_headless_encoder_dir, max_length=32, dropout=0.0).eval()
    with torch.no_grad():
        classifier.classifier.weight.mul_(200.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_headless_encoder_dir)
    texts = _texts(160, seed=3)
    dataset = ReviewDataset(texts, [0] * len(texts), tokenizer, 32)
    with torch.no_grad():
        from classify.model import pad_batch

        ids, mask = pad_batch(dataset.ids, tokenizer.pad_token_id)
        pred = classifier(input_ids=ids, attention_mask=mask).logits.argmax(-1).numpy()
    flip = np.random.default_rng(4).random(len(texts)) < 0.2
    labels = np.where(flip, 1 - pred, pred).tolist()
    return classifier, tokenizer, texts, labels


def test_fit_on_an_overconfident_classifier_stores_t_and_leaves_rankings_alone(overconfident, accelerator):
    classifier, tokenizer, texts, labels = overconfident
    half = len(texts) // 2
    validation = ReviewDataset(texts[:half], labels[:half], tokenizer, 32)
    loader = accelerator.prepare(make_eval_loader(validation, tokenizer, batch_size=16))
    settings = classifier.settings
    test_set = LabelledSet(texts[half:], labels[half:], "synthetic", len(texts) - half)
    assert get_temperature(classifier) == 1.0
    raw_metrics, raw = evaluate_set(classifier, tokenizer, test_set, settings, accelerator, batch_size=16)
    try:
        block = fit_temperature_on(classifier, loader, accelerator)
        t = block["temperature"]
        assert t > 1 and classifier.config.temperature == t == get_temperature(classifier)
        assert block["n"] == half and block["after"]["ece"] < block["before"]["ece"]
        # the forward now divides by T; evaluation asks for the raw logits (no divide-then-multiply)
        metrics, scaled = evaluate_set(classifier, tokenizer, test_set, settings, accelerator, batch_size=16)
        assert np.array_equal(scaled.logits, raw.logits)
        for key in ("accuracy", "f1", "precision", "recall", "roc_auc", "n", "by_length"):
            assert metrics[key] == raw_metrics[key], key
        assert np.array_equal(scaled.pred, raw.pred)
        calibration = metrics["calibration"]
        assert calibration["temperature"] == t and raw_metrics["calibration"]["temperature"] == 1.0
        assert calibration["before"]["ece"] == pytest.approx(raw_metrics["calibration"]["before"]["ece"], abs=1e-6)
        assert calibration["after"]["ece"] < calibration["before"]["ece"]
        assert calibration["after"]["nll"] < calibration["before"]["nll"]
        assert metrics["loss"] == pytest.approx(calibration["after"]["nll"])  # the model's loss is the scaled one
    finally:
        set_temperature(classifier, 1.0)


def test_temperature_is_saved_and_an_old_folder_without_one_loads_with_1(overconfident, tmp_path):
    classifier, tokenizer, texts, _ = overconfident
    set_temperature(classifier, 2.5)
    try:
        classifier.save_pretrained(tmp_path / "new", tokenizer)
    finally:
        set_temperature(classifier, 1.0)
    assert json.loads((tmp_path / "new" / "config.json").read_text())["temperature"] == 2.5
    loaded, _ = load_classifier(tmp_path / "new")
    assert loaded.config.temperature == 2.5

    classifier.save_pretrained(tmp_path / "old", tokenizer)
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("temperature", "window_stride"):  # a run folder from before calibration
        config.pop(key)
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old, _ = load_classifier(tmp_path / "old")
    assert old.config.temperature == 1.0 and old.settings["window_stride"] == 8  # min(128, 32 // 4): fits its windows
    ids = torch.tensor([encode_windows(tokenizer, texts[:1], 32, 8)[0][0]])
    with torch.no_grad():
        assert torch.equal(old(input_ids=ids).logits, classifier(input_ids=ids).logits)
        assert torch.allclose(loaded(input_ids=ids).logits * 2.5, classifier(input_ids=ids).logits, atol=1e-5)
        assert torch.equal(loaded(input_ids=ids, raw_logits=True).logits, classifier(input_ids=ids).logits)
    with pytest.raises(ValueError, match="positive"):
        set_temperature(old, 0.0)


# --------------------------------------------------------------------------------------------
# Long reviews: windows


def test_windows_evaluation_is_the_mean_of_each_reviews_windows(overconfident, accelerator):
    classifier, tokenizer, _, _ = overconfident
    texts = _texts(12, seed=5, lengths=(2, 90))  # some fit one 32-token window, some need several
    labels = [i % 2 for i in range(len(texts))]
    windows = encode_windows(tokenizer, texts, 32, 8)
    assert max(len(w) for w in windows) >= 3 and min(len(w) for w in windows) == 1
    dataset = ReviewDataset(texts, labels, tokenizer, 32, "windows", window_stride=8)
    assert len(dataset) == sum(len(w) for w in windows) and dataset.num_reviews == len(texts)
    assert dataset.review_of.tolist() == [i for i, w in enumerate(windows) for _ in w]
    set_temperature(classifier, 3.0)
    try:
        loader = accelerator.prepare(make_eval_loader(dataset, tokenizer, batch_size=5))
        predictions = predict(classifier, loader, accelerator)
        with torch.no_grad():  # the inference rule, review by review: mean of the windows' scaled logits
            expected = torch.stack([
                torch.cat([classifier(input_ids=torch.tensor([w])).logits for w in review]).mean(0) for review in windows
            ])
    finally:
        set_temperature(classifier, 1.0)
    assert predictions.label.tolist() == labels and predictions.temperature == 3.0
    np.testing.assert_allclose(predictions.logits / 3.0, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(predictions.prob, torch.softmax(expected, -1)[:, 1].numpy(), rtol=1e-5, atol=1e-6)


def test_windows_overlap_by_the_stride_and_cover_the_review(tiny_tokenizer):
    text = " ".join(WORDS * 5)  # 75 words, one token each
    content = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = encode_windows(tiny_tokenizer, [text], max_length=32, stride=8)[0]
    inner = [w[1:-1] for w in windows]  # [CLS] ... [SEP]
    assert all(len(w) <= 32 for w in windows) and all(len(i) == 30 for i in inner[:-1])
    for first, second in zip(inner, inner[1:]):
        assert first[-8:] == second[:8]  # consecutive windows share `stride` tokens
    assert list(inner[0]) + [t for i in inner[1:] for t in i[8:]] == content  # nothing lost, nothing twice
    with pytest.raises(ValueError, match="stride"):
        encode_windows(tiny_tokenizer, [text], max_length=32, stride=30)


def test_accuracy_by_length_buckets_edges():
    tokens = np.array([5, 128, 129, 512, 513, 900])
    predictions = from_logits(np.array([[0, 1], [1, 0], [0, 1], [0, 1], [1, 0], [1, 0]], dtype=float), np.array([1, 1, 1, 0, 0, 1]))
    buckets = accuracy_by_length(tokens, predictions)
    assert buckets == {"<=128": {"n": 2, "accuracy": 0.5}, "129-512": {"n": 2, "accuracy": 0.5}, ">512": {"n": 2, "accuracy": 0.5}}
    assert accuracy_by_length(np.array([5]), from_logits(np.array([[0.0, 1.0]]), np.array([1])))[">512"] == {"n": 0, "accuracy": None}


def test_windows_mode_trains_on_head_tail_and_validates_on_windows(tiny_headless_encoder_dir, shared_data, tmp_path, accelerator):
    from transformers import AutoTokenizer

    from classify import train as train_module
    from tests.test_classify_train import tiny_config

    config = tiny_config(tiny_headless_encoder_dir, shared_data, tmp_path, "model.truncation=windows", "model.max_length=64",
                         "model.window_stride=16", "model.head_tokens=16")
    config.validate()
    tokenizer = AutoTokenizer.from_pretrained(tiny_headless_encoder_dir)
    train_loader, val_loader, _, _, _, sizes = train_module.get_dataloaders(config, tokenizer, accelerator)
    assert len(train_loader.dataset) == train_loader.dataset.num_reviews == 64  # head+tail: one row per review
    assert val_loader.dataset.num_reviews == 16 and len(val_loader.dataset) > 16  # IMDb reviews exceed 64 tokens
    from dapt.core.config import ConfigError, load_config
    from classify.config import ClassifyConfig

    with pytest.raises(ConfigError, match="model.window_stride"):
        load_config(ClassifyConfig, None, ["model.truncation=windows", "model.max_length=64", "model.head_tokens=16",
                                            "model.window_stride=62"]).validate()


# --------------------------------------------------------------------------------------------
# The model card


def test_card_renders_calibration_and_accuracy_by_length(tmp_path):
    from model_card.render import _fmt, render_card, validate_card
    from tests.test_model import fake_results

    logits, labels = synthetic_logits(400, scale=3.0, seed=6)
    t = fit_temperature(logits[:200], labels[:200])
    from classify.calibration import calibration_report

    old = fake_results(truncation="windows")
    old["hyperparameters"]["window_stride"] = 24
    plain_card = render_card(old, "me/old")  # a results.json from before calibration still renders
    assert "not a calibrated probability" in plain_card and "### Calibration" not in plain_card

    results = json.loads(json.dumps(old))
    results["training"]["calibration"] = {"fitted_on": "validation", "n": 200, **calibration_report(logits[:200], labels[:200], t)}
    tokens = np.random.default_rng(7).integers(5, 900, 200)
    for name, block in results["evaluation"].items():
        block["calibration"] = calibration_report(logits[200:], labels[200:], t)
        block["by_length"] = accuracy_by_length(tokens, from_logits(logits[200:], labels[200:], t))
    card = render_card(results, "me/new")
    validate_card(card, results, "me/new")
    imdb = results["evaluation"]["imdb_test"]
    before, after = imdb["calibration"]["before"], imdb["calibration"]["after"]
    assert f"| IMDb | {_fmt(t, 3)} | {_fmt(before['ece'])} → {_fmt(after['ece'])} | {_fmt(before['brier'])} → {_fmt(after['brier'])}" in card
    assert "| Evaluation set | <=128 tokens | 129-512 tokens | >512 tokens |" in card
    buckets = imdb["by_length"]
    assert "| IMDb |" + "".join(f" {_fmt(b['accuracy'])} (n = {b['n']}) |" for b in buckets.values()) in card
    assert "15 equal-width confidence bins" in card and "not a calibrated probability" not in card
    assert "windows of 64 tokens sharing 24 tokens" in card


def test_training_in_windows_mode_end_to_end(tiny_headless_encoder_dir, shared_data, tmp_path):
    from classify.train import train_classifier
    from tests.test_classify_train import tiny_config

    config = tiny_config(tiny_headless_encoder_dir, shared_data, tmp_path, "model.truncation=windows", "model.window_stride=16",
                         "model.head_tokens=16", "train.epochs=1", "data.eval.sst2_validation=null")
    results = train_classifier(config)
    assert results["hyperparameters"]["truncation"] == "windows" and results["hyperparameters"]["window_stride"] == 16
    fitted = results["training"]["calibration"]
    assert fitted["n"] == 16 and fitted["temperature"] > 0
    imdb = results["evaluation"]["imdb_test"]
    assert imdb["n"] == 40 and sum(b["n"] for b in imdb["by_length"].values()) == 40  # reviews, not windows
    assert imdb["calibration"]["temperature"] == fitted["temperature"]
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert (saved["truncation"], saved["window_stride"], saved["temperature"]) == ("windows", 16, fitted["temperature"])


def test_evaluate_cli_reads_reviews_another_way_than_trained(overconfident, shared_data, tmp_path, capsys):
    """A head-truncation model evaluated with windows (``dapt-evaluate --truncation windows``)."""
    from classify.evaluate import main as evaluate_main

    classifier, tokenizer, _, _ = overconfident
    classifier.save_pretrained(tmp_path / "model", tokenizer)
    evaluate_main(["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "eval"), "--truncation", "windows",
                   "--window-stride", "8", f"data.eval.imdb_test.path={shared_data}/imdb", "data.eval.imdb_test.max_samples=12",
                   "data.eval.sst2_validation=null", 'impl.mixed_precision="no"', "impl.dataloader_workers=0"])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["settings"]["truncation"] == "windows" and results["settings"]["window_stride"] == 8
    assert results["evaluation"]["imdb_test"]["n"] == 12 and "ECE" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="stride"):
        evaluate_main(["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "bad"), "--truncation", "windows",
                       "--window-stride", "40", f"data.eval.imdb_test.path={shared_data}/imdb", "data.eval.imdb_test.max_samples=12",
                       "data.eval.sst2_validation=null", 'impl.mixed_precision="no"', "impl.dataloader_workers=0"])
    assert not (tmp_path / "bad" / "results.json").exists()
    # a model folder that stored a stride its windows cannot take (128 for 32-token windows, as
    # folders written before the default followed max_length did): --truncation windows alone works
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "window_stride": 128}))
    evaluate_main(["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "old"), "--truncation", "windows",
                   f"data.eval.imdb_test.path={shared_data}/imdb", "data.eval.imdb_test.max_samples=12",
                   "data.eval.sst2_validation=null", 'impl.mixed_precision="no"', "impl.dataloader_workers=0"])
    assert json.loads((tmp_path / "old" / "results.json").read_text())["settings"]["window_stride"] == 8


@pytest.mark.parametrize("max_length", [8, 16, 64, 128, 512, 1024])
def test_every_truncation_mode_runs_with_only_max_length_set(max_length, tiny_tokenizer):
    """head_tokens and window_stride default to min(128, max_length // 4): valid for every max_length
    (128 for 512, as before); a value given explicitly is still checked."""
    from classify.config import ClassifyConfig
    from classify.model import DaptClassifierConfig, encode_reviews, encode_windows
    from dapt.core.config import ConfigError, load_config

    long_text = " ".join(["great"] * 3 * max_length)
    for truncation in ("head", "head+tail", "windows"):
        config = load_config(ClassifyConfig, None, [f"model.truncation={truncation}", f"model.max_length={max_length}"])
        config.validate()
        assert config.model.head_tokens == config.model.window_stride == min(128, max_length // 4)
        encode_reviews(tiny_tokenizer, [long_text], max_length, truncation if truncation != "windows" else "head+tail",
                       config.model.head_tokens)
        encode_windows(tiny_tokenizer, [long_text], max_length, config.model.window_stride)
    assert DaptClassifierConfig(max_length=max_length).window_stride == min(128, max_length // 4)
    with pytest.raises(ConfigError, match="model.head_tokens"):
        load_config(ClassifyConfig, None, ["model.truncation=head+tail", f"model.max_length={max_length}",
                                           f"model.head_tokens={max_length}"]).validate()


def test_validation_and_evaluation_rank_by_the_logit_margin_not_the_saturated_probability():
    """Two confident positives whose P(positive) both round to 1.0: the probability ties them, the
    margin keeps them apart. Model selection (``val_roc_auc``) ranks as evaluation does."""
    from classify import train as train_module
    from classify.evaluate import compute_metrics, ranking_score

    logits = np.array([[0.0, 40.0], [0.0, 50.0], [3.0, 0.0]])
    predictions = from_logits(logits, np.array([0, 1, 0]))
    assert predictions.prob[0] == predictions.prob[1] == 1.0  # the tie the margin avoids
    by_prob = compute_metrics(predictions.label, predictions.pred, predictions.prob, predictions.loss)
    by_margin = compute_metrics(predictions.label, predictions.pred, ranking_score(predictions), predictions.loss)
    assert by_prob["roc_auc"] == 0.75 and by_margin["roc_auc"] == 1.0
    assert train_module.ranking_score is ranking_score  # what end_of_epoch ranks validation by


def test_a_temperature_fit_that_stops_at_its_bound_is_reported_and_warned(caplog):
    """Issue 20: logits that do not separate the classes drive T to its upper bound (20.0); that is
    said, not silently stored."""
    import logging

    from classify.calibration import fit_report, search_bound

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    with caplog.at_level(logging.WARNING, logger="classify.calibration"):
        uninformative = fit_report(rng.normal(0, 3, (400, 2)), labels)
    assert uninformative["temperature"] == pytest.approx(20.0, rel=1e-3) and uninformative["at_bound"] == "upper"
    assert "stopped at its upper search bound" in caplog.text
    informative = fit_report(np.stack([np.zeros(400), 4 * (labels - 0.5) + rng.normal(0, 1, 400)], 1), labels)
    assert informative["at_bound"] is None and search_bound(1.0) is None and search_bound(0.05) == "lower"

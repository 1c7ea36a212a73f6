"""dapt-predict for any number of classes: label names, ``--probs``, and ``p_positive`` for two classes only."""

from __future__ import annotations

import json

import pytest

from classify.model import infer_reviews, predict_proba
from tests.k_class_fixtures import AG_LABELS, TOY_TEXTS, make_k_run_dir
from tests.test_predict import REVIEWS, run, run_cli  # noqa: F401  (run: the binary run fixture)

LABELS = list(AG_LABELS.values())
TEXTS = [TOY_TEXTS[label][2] for label in AG_LABELS] + ["people of the world and their new work"]


@pytest.fixture(scope="module")
def k_run(tmp_path_factory, tiny_headless_encoder_dir):
    return make_k_run_dir(tmp_path_factory.mktemp("k_predict"), tiny_headless_encoder_dir)


def test_k_class_text_output_names_the_labels(k_run):
    run_dir, classifier, tokenizer = k_run
    lines = run_cli(["--model", str(run_dir), *TEXTS]).splitlines()
    expected = infer_reviews(TEXTS, classifier, tokenizer)
    assert [line.split()[0] for line in lines] == [label for _, label, _ in expected]
    assert {label for _, label, _ in expected} >= {"World", "Sports", "Business", "Sci/Tech"}  # the toy model tells them apart
    for line, text, (_, _, confidence) in zip(lines, TEXTS, expected):
        assert f"{confidence:6.1%}" in line and line.endswith(text) and "|" not in line


def test_k_class_probs_flag_prints_every_class(k_run):
    run_dir, classifier, tokenizer = k_run
    lines = run_cli(["--model", str(run_dir), "--probs", *TEXTS]).splitlines()
    for line, text, probabilities in zip(lines, TEXTS, predict_proba(TEXTS, classifier, tokenizer, all_classes=True)):
        shown = " | ".join(f"{name} {p:.1%}" for name, p in zip(LABELS, probabilities))
        assert f"  {shown}  {text}" in line


def test_k_class_jsonl_has_probs_and_no_p_positive(k_run):
    run_dir, classifier, tokenizer = k_run
    plain = [json.loads(x) for x in run_cli(["--model", str(run_dir), "--jsonl", *TEXTS]).splitlines()]
    assert all(set(r) == {"text", "label", "label_class", "confidence"} for r in plain)
    records = [json.loads(x) for x in run_cli(["--model", str(run_dir), "--jsonl", "--probs", *TEXTS]).splitlines()]
    expected = infer_reviews(TEXTS, classifier, tokenizer)
    for record, (label_class, label, confidence), probabilities in zip(
            records, expected, predict_proba(TEXTS, classifier, tokenizer, all_classes=True)):
        assert set(record) == {"text", "label", "label_class", "confidence", "probs"}
        assert (record["label_class"], record["label"]) == (label_class, label)
        assert record["confidence"] == pytest.approx(confidence, abs=1e-6)
        assert list(record["probs"]) == LABELS  # class-index order
        assert list(record["probs"].values()) == pytest.approx(probabilities, abs=1e-6)
        assert sum(record["probs"].values()) == pytest.approx(1.0, abs=1e-5)


def test_binary_jsonl_keeps_p_positive_and_gains_probs(run):
    run_dir, classifier, tokenizer = run
    records = [json.loads(x) for x in run_cli(["--model", str(run_dir), "--jsonl", "--probs", *REVIEWS]).splitlines()]
    for record, p in zip(records, predict_proba(REVIEWS, classifier, tokenizer)):
        assert set(record) == {"text", "label", "label_class", "confidence", "p_positive", "probs"}
        assert record["p_positive"] == pytest.approx(p, abs=1e-6) == record["probs"]["Positive"]
        assert list(record["probs"]) == ["Negative", "Positive"]
    text = run_cli(["--model", str(run_dir), "--probs", REVIEWS[0]])
    assert "Negative " in text and " | Positive " in text


def test_help_is_not_about_movie_reviews(capsys):
    from classify.release import predict

    with pytest.raises(SystemExit):
        predict.main(["--help"])
    out = capsys.readouterr().out.lower()
    assert "classify texts with a dapt classifier" in out and "--probs" in out
    assert "movie" not in out and "sentiment" not in out and "review" not in out

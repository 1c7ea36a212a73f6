"""A real 4-class stage-2 run (AG News, tiny encoder) through everything downstream of training:
dapt-publish (card, model.py) with its Space, dapt-predict --probs, dapt-export --check.

The other K-class tests build the run folder by hand (tests/k_class_fixtures.py); this one takes
what ``classify.train`` actually writes (results.json, config.yaml, examples.json, plots), so a
change of stage 2's output that the distribution side does not follow fails here.
"""

from __future__ import annotations

import json

import pytest

from classify import export, predict, publish, space
from classify.model import load_classifier, predict_proba
from model_card import validate_card
from tests.test_multiclass import AG_NEWS, _ag_news_config
from tests.test_publish_k_classes import assert_nothing_about_movies
from tests.test_predict import run_cli

pytestmark = pytest.mark.slow  # a 4-class training run (~10-20 s), an ONNX export

REPO_ID, SPACE_ID = "alice/ag-news-tiny", "alice/ag-news-tiny-demo"


@pytest.fixture(scope="module")
def trained(tiny_headless_encoder_dir, shared_data, tmp_path_factory):
    from classify.train import train_classifier

    out = tmp_path_factory.mktemp("ag_news_e2e")
    results = train_classifier(_ag_news_config(tiny_headless_encoder_dir, shared_data, out))
    folder = tmp_path_factory.mktemp("ag_news_hub") / "repo"
    assert publish.main([str(out), "--repo-id", REPO_ID, "--folder", str(folder), "--dry-run", "--space", SPACE_ID]) == 0
    return out, results, folder


def test_the_card_of_a_real_four_class_run(trained):
    out, results, folder = trained
    card = (folder / "README.md").read_text()
    published = json.loads((folder / "results.json").read_text())  # local paths made path-free
    validate_card(card, published, REPO_ID)
    assert "A 4-class text classifier (labels: **World**, **Sports**, **Business**, **Sci/Tech**)" in card
    assert "fine-tuned on `ag_news` (split `train`)" in card  # local files: named, not passed off as a Hub id
    assert f"{results['data']['train']['rows']:,} texts read" in card and "label_names metadata" in card
    assert "**Measured in domain only.**" in card and "| **World** |" in card
    assert_nothing_about_movies(card)


def test_the_space_of_a_real_four_class_run(trained):
    out, _, _ = trained
    folder = space.default_space_folder(out, SPACE_ID)
    shown = json.loads((folder / "examples.json").read_text())["examples"]
    written = json.loads((out / "examples.json").read_text())["examples"]
    assert shown == [{"text": e["text"], "label": e["label"]} for e in written]
    assert "4-class text classifier: World, Sports, Business, Sci/Tech" in (folder / "README.md").read_text()


def test_predict_and_export_of_a_real_four_class_run(trained, tmp_path):
    out, _, _ = trained
    classifier, tokenizer = load_classifier(out)
    texts = ["Stocks rally as the central bank holds rates", "The home side won the final in extra time"]
    records = [json.loads(line) for line in run_cli(["--model", str(out), "--jsonl", "--probs", *texts]).splitlines()]
    for record, probabilities in zip(records, predict_proba(texts, classifier, tokenizer, all_classes=True)):
        assert list(record["probs"]) == AG_NEWS and "p_positive" not in record
        assert list(record["probs"].values()) == pytest.approx(probabilities, abs=1e-6)
    pytest.importorskip("onnxruntime")
    assert export.main([str(out), "--onnx", "--out", str(tmp_path / "onnx"), "--check", "24"]) == 0
    report = json.loads((tmp_path / "onnx" / export.CHECK_FILE).read_text())
    assert report["n"] == 24 and report["texts"].startswith("ag_news_test (") and report["labels"] == AG_NEWS
    assert report["variants"]["fp32"]["equivalent"]

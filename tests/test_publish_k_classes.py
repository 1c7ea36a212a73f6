"""dapt-publish and the model card for a 4-class (AG News-like) run (issue 18, section 2).

The run folder is built as stage 2 writes it (tests/k_class_fixtures.py): the card must say what
the run was (a 4-class text classifier, its labels, the data actually used, macro / micro metrics
with the right model-index names) and nothing about IMDb or movie reviews; the published model.py
must serve four labels through the seed snippet, the Auto classes and the pipeline.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from classify.release import publish
from classify.model import infer_reviews, predict_proba
from model_card import render_card, validate_card
from model_card.render import USER_SNIPPET
from tests.k_class_fixtures import AG_LABELS, TOY_TEXTS, fake_k_results, k_eval_block, make_k_run_dir
from tests.test_model import fake_results

REPO_ID = "alice/tiny-ag-news"
LABELS = list(AG_LABELS.values())
TEXTS = [TOY_TEXTS[label][1] for label in AG_LABELS] + ["a text with words it has never seen, 2024!"]


@pytest.fixture(scope="module")
def k_run(tmp_path_factory, tiny_headless_encoder_dir):
    run_dir, classifier, tokenizer = make_k_run_dir(tmp_path_factory.mktemp("k_run"), tiny_headless_encoder_dir)
    folder = publish.build_repo_folder(run_dir, tmp_path_factory.mktemp("k_hub") / "repo", REPO_ID)
    return run_dir, folder, classifier, tokenizer


def without_snippet(card: str) -> str:
    """The card without the seed snippet (kept verbatim for every model: it says "Great movie")."""
    assert USER_SNIPPET in card
    return card.replace(USER_SNIPPET, "")


def assert_nothing_about_movies(card: str) -> None:
    body = without_snippet(card).lower()
    for word in ("imdb", "movie", "film", "sst-2", "sst2", "sentiment", "rotten tomatoes"):
        assert word not in body, word
    reviews = re.compile(r"(?<!infer_)(?<!human )reviews?\b")  # the function's name and "human review" are fine
    assert not reviews.search(body), body[reviews.search(body).start() - 60:][:100]


def metrics_of(card: str) -> dict:
    from huggingface_hub import ModelCard

    return {(e.dataset_type, e.dataset_split, e.metric_name): (e.metric_type, e.metric_config, e.metric_args, e.metric_value)
            for e in ModelCard(card).data.eval_results or []}


def test_k_class_folder_builds_and_verifies(k_run, tmp_path, capsys):
    run_dir, folder, classifier, _ = k_run
    files = {name for name, _ in publish.list_folder(folder)}
    assert {"README.md", "config.json", "model.py", "model.safetensors", "results.json", "tokenizer.json",
            "plots/confusion_ag_news_test.png", "plots/roc_ag_news_test.png", "plots/reliability_ag_news_test.png"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {str(k): v for k, v in AG_LABELS.items()}
    assert config["label2id"] == {v: k for k, v in AG_LABELS.items()}
    publish.verify_folder(folder)  # the written model.py alone rebuilds the 4-class head and loads it strictly
    # the CLI's dry run builds the same folder
    assert publish.main([str(run_dir), "--repo-id", REPO_ID, "--folder", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert "dry run: nothing uploaded" in capsys.readouterr().out
    assert (tmp_path / "dry" / "README.md").read_text() == (folder / "README.md").read_text()


def test_k_class_card_says_what_the_run_was(k_run):
    run_dir, folder, _, _ = k_run
    card = (folder / "README.md").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert "A 4-class text classifier (labels: **World**, **Sports**, **Business**, **Sci/Tech**)" in card
    assert "* Labels: `0` = World, `1` = Sports, `2` = Business, `3` = Sci/Tech" in card
    assert "fine-tuned on `fancyzhx/ag_news` (split `train`)" in card
    assert "`fancyzhx/ag_news` split `train`: 6,000 texts read, 5,400 for" in card and "600 held out" in card
    assert_nothing_about_movies(card)
    # only an in-domain set: no domain-shift claim, but the card says what was not measured
    assert "Domain shift" not in card and "**Measured in domain only.**" in card
    # per-class table and confusion matrix, from results.json
    assert "| Sci/Tech | 0.8465 | 0.9065 | 0.8615 | 400 | 0.96 |" in card
    assert "| **World** | 351 | 49 | 0 | 0 |" in card
    assert "![plots/confusion_ag_news_test.png](plots/confusion_ag_news_test.png)" in card
    assert "top-label expected calibration error" in card and "multi-class Brier score" in card
    assert "| 2 (best) | 0.6543 | 0.83 | 0.5123 | 0.8456 | 0.8401 | 0.93 |" in card  # val_macro_f1
    validate_card(card, results, REPO_ID)


def test_k_class_model_index_names_macro_and_micro_metrics(k_run):
    from huggingface_hub import ModelCard

    run_dir, folder, _, _ = k_run
    card = (folder / "README.md").read_text()
    block = json.loads((run_dir / "results.json").read_text())["evaluation"]["ag_news_test"]
    data = ModelCard(card).data
    assert data.datasets == ["fancyzhx/ag_news"]
    assert "imdb" not in data.tags and "sentiment-analysis" not in data.tags
    assert {"text-classification", "multi-class-classification"} <= set(data.tags)
    assert all(e.task_name == "Text Classification" and e.dataset_type == "fancyzhx/ag_news" for e in data.eval_results)
    key = ("fancyzhx/ag_news", "test")
    assert metrics_of(card) == {
        (*key, "Accuracy"): ("accuracy", None, None, block["accuracy"]),
        (*key, "Macro F1"): ("f1", None, {"average": "macro"}, block["macro_f1"]),
        (*key, "Micro F1"): ("f1", None, {"average": "micro"}, block["micro_f1"]),
        (*key, "Macro Precision"): ("precision", None, {"average": "macro"}, block["macro_precision"]),
        (*key, "Macro Recall"): ("recall", None, {"average": "macro"}, block["macro_recall"]),
        (*key, "ROC AUC (one-vs-rest, macro)"): ("roc_auc", "multiclass", {"average": "macro", "multi_class": "ovr"},
                                                  block["roc_auc"]),
    }


def test_validate_card_tells_macro_from_micro_f1(k_run):
    run_dir, folder, _, _ = k_run
    card = (folder / "README.md").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    results["evaluation"]["ag_news_test"]["micro_f1"] = 0.1  # the macro F1 entry is unchanged
    with pytest.raises(ValueError, match="differ"):
        validate_card(card, results, REPO_ID)


def test_an_out_of_domain_set_gets_the_domain_shift_limitation():
    results = fake_k_results(evaluation={"ag_news_test": k_eval_block("fancyzhx/ag_news", "test", 0.9, 1600),
                                         "other_news": k_eval_block("someone/other-news", "validation", 0.7, 400)})
    card = render_card(results, REPO_ID)
    validate_card(card, results, REPO_ID)
    assert ("* **Domain shift.** Accuracy is 90.00 % on ag_news_test (in domain); on other data it is 70.00 % on "
            "other_news (`someone/other-news`).") in card
    assert "* other_news: out of domain, `someone/other-news` is another dataset than the training data." in card
    assert "Measured in domain only" not in card
    from huggingface_hub import ModelCard

    assert ModelCard(card).data.datasets == ["fancyzhx/ag_news", "someone/other-news"]


def test_local_data_is_named_but_never_passed_off_as_a_hub_dataset():
    """Local files have no Hub id: no ``datasets`` entry and no model-index result for them, the
    card names them by their own name; a set whose ``name:`` is a Hub id counts as that dataset."""
    from huggingface_hub import ModelCard

    local = "../shared/data/ag_news"
    results = fake_k_results(train_dataset=local, evaluation={"ag_news_test": k_eval_block(local, "test", 0.8, 1600)})
    card = render_card(results, REPO_ID)
    validate_card(card, results, REPO_ID)
    data = ModelCard(card).data
    assert data.datasets is None and data.eval_results is None
    assert local not in card and "fine-tuned on `ag_news` (split `train`)" in card
    assert "| ag_news_test (`ag_news`) | test | 1,600 |" in card and "**Measured in domain only.**" in card
    # the evaluation set named by its Hub id (LabelledSetConfig.name), read from a local copy
    results["evaluation"]["ag_news_test"]["dataset"] = "fancyzhx/ag_news"
    card = render_card(results, REPO_ID)
    validate_card(card, results, REPO_ID)
    assert ModelCard(card).data.datasets == ["fancyzhx/ag_news"]
    assert {e.dataset_type for e in ModelCard(card).data.eval_results} == {"fancyzhx/ag_news"}
    assert "**Measured in domain only.**" in card  # the same name as the local training data: the same dataset


def test_a_binary_sentiment_run_on_other_data_is_not_called_imdb():
    """Two classes named Negative / Positive, trained on SST-2: a sentiment card, but no IMDb or movie wording."""
    from huggingface_hub import ModelCard

    results = fake_results()
    del results["evaluation"]["imdb_test"]
    results["task"] = {"num_labels": 2, "labels": ["Negative", "Positive"], "labels_from": "data.labels"}
    results["data"] = {"train": {"dataset": "stanfordnlp/sst2", "split": "train", "rows": 5000, "train": 4500, "validation": 500}}
    card = render_card(results, REPO_ID)
    validate_card(card, results, REPO_ID)
    body = without_snippet(card)
    assert "A binary sentiment classifier (**Negative** / **Positive**)" in body
    assert "imdb" not in body.lower() and "movie" not in body.lower()
    data = ModelCard(card).data
    assert data.datasets == ["stanfordnlp/sst2"] and "imdb" not in data.tags and "sentiment-analysis" in data.tags
    assert {e.metric_name for e in data.eval_results} == {"Accuracy", "F1", "Precision", "Recall", "ROC AUC"}
    assert "**Measured in domain only.**" in card  # SST-2 validation is SST-2: in domain
    assert "F1, precision and recall are those of class 1 (`Positive`)" in card


def test_a_hub_imdb_run_with_neg_pos_labels_gets_the_imdb_card():
    """stanfordnlp/imdb's ClassLabel names its classes neg / pos: still the movie-review card."""
    from huggingface_hub import ModelCard

    results = fake_results()
    results["task"] = {"num_labels": 2, "labels": ["neg", "pos"], "labels_from": "the ClassLabel feature of stanfordnlp/imdb"}
    results["data"] = {"train": {"dataset": "stanfordnlp/imdb", "split": "train", "rows": 25000, "train": 22500, "validation": 2500}}
    card = render_card(results, REPO_ID)
    validate_card(card, results, REPO_ID)
    assert "A binary sentiment classifier for English movie reviews" in card and "* Labels: `0` = neg, `1` = pos" in card
    assert "IMDb (`stanfordnlp/imdb`) `train` split (25,000 reviews read: 22,500 for training, 2,500 held out)" in card
    assert {"imdb", "movie-reviews"} <= set(ModelCard(card).data.tags)


def test_labels_come_from_the_config_when_results_json_has_none(tmp_path):
    results = fake_k_results()
    del results["task"]
    card = render_card(results, REPO_ID, config={"id2label": {str(k): v for k, v in AG_LABELS.items()}})
    assert "* Labels: `0` = World, `1` = Sports, `2` = Business, `3` = Sci/Tech (names from the classifier's config.json)" in card


# --------------------------------------------------------------------------------------------
# The published repository with four labels: Auto classes, pipeline, the seed snippet on a Hub
# --------------------------------------------------------------------------------------------


def test_k_class_repo_loads_through_auto_classes_and_pipeline(k_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    _, folder, classifier, tokenizer = k_run
    expected = predict_proba(TEXTS, classifier, tokenizer, all_classes=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True).eval()
    assert model.config.id2label == AG_LABELS and model.config.num_labels == 4
    hf_tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    batch = hf_tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(model(**batch).logits, -1).tolist()
    for got, want in zip(probabilities, expected):
        assert got == pytest.approx(want, abs=1e-5)
    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    for scores, want in zip(classify(TEXTS, truncation=True, top_k=None), expected):
        assert {s["label"]: s["score"] for s in scores} == pytest.approx(dict(zip(LABELS, want)), abs=1e-5)


@pytest.mark.slow  # a fresh interpreter running the seed snippet against the loopback Hub
def test_k_class_repo_works_through_the_seed_snippet(k_run, hub_env, tmp_path):
    from tests.test_hub_roundtrip import SNIPPET_TEXTS, run_user_script

    run_dir, _, classifier, tokenizer = k_run
    hub_env.login("alice")
    repo_id = hub_env.hub.new_repo_id("alice", "ag-news")
    publish.publish_run(run_dir, repo_id, folder=tmp_path / "folder")
    cwd = tmp_path / "user"
    cwd.mkdir()
    out = run_user_script(hub_env, repo_id, cwd)
    one = infer_reviews(SNIPPET_TEXTS[0], classifier, tokenizer)
    many = infer_reviews(SNIPPET_TEXTS[1:], classifier, tokenizer)
    assert out["one"][:2] == list(one[:2]) and out["one"][1] in LABELS
    assert out["one"][2] == pytest.approx(one[2], abs=1e-5)
    assert [tuple(r[:2]) for r in out["many"]] == [r[:2] for r in many]
    hub_env.logout()


def test_a_temperature_at_its_search_bound_is_a_caution_in_the_card():
    """Issue 20: a fit that stopped at its bound (T = 20) is said in the card, not silently served."""
    results = fake_k_results()
    assert "Caution" not in render_card(results, "user/news")
    results["training"]["calibration"].update(temperature=20.0, at_bound="upper")
    card = render_card(results, "user/news")
    assert "stopped at its upper search bound" in card and "near 1/4" in card

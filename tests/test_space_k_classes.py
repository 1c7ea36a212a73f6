"""dapt-publish --space for a 4-class run: every label's confidence, the run's own examples, no movie wording.

The run folder is tests/k_class_fixtures.py's (a tiny 4-class classifier, examples.json as stage 2
writes it); the model and Space folders come from one ``dapt-publish --dry-run --space``, and the
app is ``python app.py`` on 127.0.0.1 asked through ``gradio_client`` (tests/test_space.py's
``serve_app``).
"""

from __future__ import annotations

import json
import types

import pytest

from classify.release import publish, space
from classify.model import infer_reviews, load_classifier, predict_proba
from tests.k_class_fixtures import AG_LABELS, TOY_TEXTS, k_examples, make_k_run_dir
from tests.test_space import _import_app, _metadata, serve_app

REPO_ID = "alice/tiny-ag-news"
SPACE_ID = "alice/tiny-ag-news-demo"
LABELS = list(AG_LABELS.values())


@pytest.fixture(scope="module")
def k_built(tmp_path_factory, tiny_headless_encoder_dir):
    """(run dir, model folder, space folder) of a 4-class run, built by the CLI in one dry run."""
    run_dir, _, _ = make_k_run_dir(tmp_path_factory.mktemp("k_space_run"), tiny_headless_encoder_dir)
    model_folder = tmp_path_factory.mktemp("k_space_hub") / "model"
    assert publish.main([str(run_dir), "--repo-id", REPO_ID, "--folder", str(model_folder), "--dry-run",
                         "--space", SPACE_ID]) == 0
    return run_dir, model_folder, space.default_space_folder(run_dir, SPACE_ID)


def test_k_space_folder_carries_the_runs_examples_and_says_what_the_model_does(k_built):
    _, _, folder = k_built
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "app.py", "examples.json", "requirements.txt"]
    examples = json.loads((folder / "examples.json").read_text())["examples"]
    assert examples == [{"text": e["text"], "label": e["label"]} for e in k_examples()["examples"]]
    readme = (folder / "README.md").read_text()
    meta = _metadata(readme)
    assert meta["emoji"] != "🎬" and meta["models"] == [REPO_ID]
    assert meta["short_description"] == "4-class text classifier: World, Sports, Business, Sci/Tech"
    assert len(meta["short_description"]) <= space.SHORT_DESCRIPTION_CHARS
    assert "a 4-class text classifier (World, Sports, Business, Sci/Tech)" in readme
    for word in ("movie", "review", "sentiment", "imdb"):
        assert word not in readme.lower().replace("infer_reviews", ""), word
    app = (folder / "app.py").read_text()
    assert "TASK = {'title': 'Text classification: World, Sports, Business, Sci/Tech', 'item': 'text'}" in app


def test_bad_examples_json_is_a_clear_error_before_anything_is_written(k_built, tmp_path):
    run_dir, _, _ = k_built
    path = run_dir / "examples.json"
    good = path.read_text()
    try:
        for document, message in ((["x"], "expected an object with a list 'examples'"),
                                  ({"examples": [{"label": "World"}]}, r"examples\[0\] has no text"),
                                  ({"examples": [{"text": "a", "label": "Weather"}]}, r"examples\[0\] label 'Weather' is not one")):
            path.write_text(json.dumps(document))
            with pytest.raises(publish.PublishError, match=message):
                space.build_space_folder(REPO_ID, SPACE_ID, tmp_path / "space", run_dir=run_dir)
            assert not (tmp_path / "space").exists()
        path.write_text(json.dumps({"examples": [{"text": "people of the world", "label": 2}]}))  # a class index
        folder = space.build_space_folder(REPO_ID, SPACE_ID, tmp_path / "space", run_dir=run_dir)
        assert json.loads((folder / "examples.json").read_text())["examples"] == [{"text": "people of the world", "label": "Business"}]
    finally:
        path.write_text(good)


def test_a_binary_run_without_examples_keeps_the_movie_space(tmp_path, tiny_headless_encoder_dir):
    from tests.test_model import make_run_dir

    run_dir, _, _ = make_run_dir(tmp_path / "run", tiny_headless_encoder_dir)
    folder = space.build_space_folder(REPO_ID, SPACE_ID, tmp_path / "space", run_dir=run_dir)
    assert not (folder / "examples.json").exists()
    assert (folder / "README.md").read_text() == space.render_readme(REPO_ID, SPACE_ID)  # as before any run was read
    assert "TASK = {'title': 'Movie review sentiment', 'item': 'review'}" in (folder / "app.py").read_text()


@pytest.mark.slow  # imports gradio
def test_examples_open_on_a_correct_one_and_old_model_py_still_works(k_built):
    _, model_folder, folder = k_built
    app = _import_app(folder)
    module, classifier, tokenizer = app.load_model(str(model_folder))
    labels = app.settings(classifier)["id2label"]
    examples = app.load_examples(labels)
    assert [text for text, _ in examples] == [e["text"] for e in k_examples()["examples"]]
    opening = app.opening_example(examples, module, classifier, tokenizer)
    truth = dict(examples)[opening]
    assert module.infer_reviews(opening, classifier, tokenizer)[1] == truth  # the page opens on a right answer
    wrong_first = [(TOY_TEXTS[1][0], "World")] + examples  # a wrong one first is skipped
    assert app.opening_example(wrong_first, module, classifier, tokenizer) != TOY_TEXTS[1][0]
    # a model.py from before predict_proba(..., all_classes=True): two classes from P(class 1)
    old = types.SimpleNamespace(predict_proba=lambda texts, classifier, tokenizer, batch_size=32: [0.25] * len(texts))
    assert app.class_probabilities(["a", "b"], old, None, None) == [[0.75, 0.25], [0.75, 0.25]]
    # the movie reviews of a neg / pos model without examples.json: the first one it gets right
    p_positive = {text: 0.3 for text, _ in app.MOVIE_EXAMPLES}  # says negative to every review
    old = types.SimpleNamespace(predict_proba=lambda texts, classifier, tokenizer: [p_positive[t] for t in texts])
    binary = types.SimpleNamespace(config_dict={"id2label": {"0": "neg", "1": "pos"}})
    app.EXAMPLES_FILE = folder / "no-examples.json"  # as in a Space built without examples.json
    movie = app.load_examples({0: "neg", 1: "pos"})
    assert movie == app.MOVIE_EXAMPLES and app.load_examples({0: "spam", 1: "ham"}) == []
    assert app.opening_example(movie, old, binary, None) == "Highly recommend to never watch again."


@pytest.fixture(scope="module")
def k_app_url(k_built, tmp_path_factory):
    _, model_folder, folder = k_built
    yield from serve_app(model_folder, folder, tmp_path_factory.mktemp("k_app"))


@pytest.mark.slow
def test_k_app_shows_all_four_confidences(k_built, k_app_url):
    from gradio_client import Client

    _, model_folder, _ = k_built
    classifier, tokenizer = load_classifier(model_folder)
    client = Client(k_app_url, verbose=False)
    text = TOY_TEXTS[3][1]
    scores, spans, summary = client.predict(text, api_name="/classify")
    label_class, label, confidence = infer_reviews(text, classifier, tokenizer)
    expected = dict(zip(LABELS, predict_proba(text, classifier, tokenizer, all_classes=True)))
    assert scores["label"] == label
    shown = {c["label"]: c["confidence"] for c in scores["confidences"]}
    assert shown == pytest.approx(expected, abs=1e-6)  # all four labels
    assert summary == f"**{label}** ({confidence:.1%}); read the whole text."
    texts = [TOY_TEXTS[k][0] for k in AG_LABELS]
    table = client.predict("\n".join(texts), api_name="/classify_batch")
    assert [row[1] for row in table["data"]] == [label for _, label, _ in infer_reviews(texts, classifier, tokenizer)]

"""dapt-publish --space: the Gradio Space folder, the app on loopback, in a real browser, pushed to the Hub.

The app is the built ``app.py`` run as the Space runs it (``python app.py``), against a model folder
built by ``dapt-publish --dry-run`` from a tiny classifier (head+tail truncation at 64 tokens, so a
long review shows what was not read). It is asked through ``gradio_client`` and rendered by headless
Chromium (Debian's ``chromium``; scripts/setup_env.sh installs it where apt-get can).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from classify.release import publish, space
from classify.model import clean_text, encode_reviews, infer_reviews, load_classifier
from tests.hub_fixtures import hub_env, hub_server  # noqa: F401  (fixtures)
from tests.test_model import make_run_dir

REPO_ID = "alice/tiny-imdb-sentiment"
SPACE_ID = "alice/tiny-imdb-sentiment-demo"
LONG_REVIEW = "the first scene is great . " + "the story goes on and on . " * 60 + "in the end it was awful !"
APP_START_SECONDS = 300  # importing gradio + torch on 2 loaded cores can take a minute or more


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_headless_encoder_dir):
    """(run dir, model folder, space folder), built by the dapt-publish CLI in one dry run."""
    run_dir, _, _ = make_run_dir(tmp_path_factory.mktemp("run"), tiny_headless_encoder_dir,
                                 truncation="head+tail", head_tokens=16, max_length=64)
    model_folder = tmp_path_factory.mktemp("hub") / "model"
    assert publish.main([str(run_dir), "--repo-id", REPO_ID, "--folder", str(model_folder), "--dry-run",
                         "--space", SPACE_ID]) == 0
    return run_dir, model_folder, space.default_space_folder(run_dir, SPACE_ID)


def _metadata(readme: str) -> dict:
    header = readme.split("---\n")[1]
    return yaml.safe_load(header)


def test_space_folder_has_space_metadata_and_names_the_model(built):
    _, _, folder = built
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    meta = _metadata((folder / "README.md").read_text())
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["models"] == [REPO_ID]
    assert meta["sdk_version"] == space.gradio_version()
    app = (folder / "app.py").read_text()
    assert f"MODEL_REPO = {REPO_ID!r}" in app
    # what the Space runs needs only what its requirements (and the gradio SDK) install
    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(ast.parse(app)) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"gradio", "huggingface_hub", "safetensors", "transformers"}
    requirements = (folder / "requirements.txt").read_text().split()
    assert {r.split(">")[0].split("<")[0] for r in requirements} >= {"torch", "transformers", "huggingface_hub", "safetensors"}


def test_rebuild_replaces_own_folder_but_refuses_a_foreign_one(built, tmp_path):
    _, _, folder = built
    space.build_space_folder(REPO_ID, SPACE_ID, folder)  # ours: rebuilt in place
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(publish.PublishError, match="not built by dapt-publish --space"):
        space.build_space_folder(REPO_ID, SPACE_ID, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_space_flags_reject_bad_input_before_writing(built, tmp_path, capsys):
    run_dir, _, _ = built
    for argv, message in ((["--space", "no-slash"], "--space must look like USER/NAME"),
                          (["--space", "user/a--b"], "--space must look like USER/NAME and be a name the Hub accepts"),
                          (["--space-dry-run"], "--space-dry-run needs --space")):
        with pytest.raises(SystemExit):
            publish.main([str(run_dir), "--repo-id", REPO_ID, "--folder", str(tmp_path / "f"), *argv])
        assert message in capsys.readouterr().err
        assert not (tmp_path / "f").exists()


@pytest.mark.slow  # a fresh interpreter importing torch + transformers
def test_the_core_never_imports_gradio():
    code = ("import sys, classify.release.publish, classify.release.space, classify.model, classify.release.predict, classify.train, "
            "classify.evaluate; assert 'gradio' not in sys.modules, 'gradio imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})


# --------------------------------------------------------------------------------------------
# The app itself
# --------------------------------------------------------------------------------------------


def _import_app(folder: Path):
    pytest.importorskip("gradio", reason="the [space] extra is not installed (scripts/setup_env.sh installs it)")
    spec = importlib.util.spec_from_file_location(f"space_app_{uuid.uuid4().hex}", folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("truncation", ["head", "head+tail"])
def test_highlighted_part_is_exactly_what_the_model_reads(built, truncation):
    _, model_folder, folder = built
    app = _import_app(folder)
    module, classifier, tokenizer = app.load_model(str(model_folder))
    if isinstance(getattr(classifier, "config_dict", None), dict):
        classifier.config_dict["truncation"] = truncation
    else:  # model.py versions whose settings live on the config object
        classifier.config.truncation = truncation
    ids, kept, _, _ = app.read_tokens(LONG_REVIEW, module, classifier, tokenizer)
    expected = encode_reviews(tokenizer, [LONG_REVIEW], 64, truncation, 16)[0]
    assert [tokenizer.cls_token_id] + [ids[i] for i in kept] + [tokenizer.sep_token_id] == expected
    spans = app.read_spans(LONG_REVIEW, module, classifier, tokenizer)
    assert "".join(text for text, _ in spans) == clean_text(LONG_REVIEW)
    states = [state for _, state in spans]
    assert states == ([app.READ, app.NOT_READ] if truncation == "head" else [app.READ, app.NOT_READ, app.READ])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(built, tmp_path_factory):
    """``python app.py`` serving on 127.0.0.1 against the local model folder."""
    _, model_folder, folder = built
    yield from serve_app(model_folder, folder, tmp_path_factory.mktemp("app"))


def serve_app(model_folder: Path, folder: Path, log_dir: Path):
    """Run the Space folder's ``app.py`` as the Space runs it, against ``model_folder``; yields its URL
    once it answers, and stops it afterwards."""
    pytest.importorskip("gradio", reason="the [space] extra is not installed (scripts/setup_env.sh installs it)")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the Space has no dapt checkout
    env.update(DAPT_MODEL=str(model_folder), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log = log_dir / "app.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + APP_START_SECONDS
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer on {url} within {APP_START_SECONDS} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.slow
def test_app_answers_through_gradio_client(built, app_url):
    from gradio_client import Client

    _, model_folder, folder = built
    classifier, tokenizer = load_classifier(model_folder)
    client = Client(app_url, verbose=False)

    scores, spans, summary = client.predict(LONG_REVIEW, api_name="/classify")
    label_class, label, confidence = infer_reviews(LONG_REVIEW, classifier, tokenizer)
    assert scores["label"] == label
    assert {c["label"]: c["confidence"] for c in scores["confidences"]}[label] == pytest.approx(confidence, abs=1e-6)
    assert [s["class_or_confidence"] for s in spans] == ["read", "not read", "read"]
    assert "".join(s["token"] for s in spans) == clean_text(LONG_REVIEW)
    assert f"{confidence:.1%}" in summary and "head+tail" in summary

    reviews = ["Highly recommend to never watch again.", "A masterpiece of boredom.", LONG_REVIEW]
    table = client.predict("\n".join(reviews) + "\n\n", api_name="/classify_batch")
    expected = infer_reviews(reviews, classifier, tokenizer)
    assert [row[1] for row in table["data"]] == [label for _, label, _ in expected]
    assert [row[2] for row in table["data"]] == [round(conf, 4) for _, _, conf in expected]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_app_renders_the_prediction_in_a_headless_browser(built, app_url, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH: scripts/setup_env.sh installs Debian's chromium only where apt-get can")
    from PIL import Image

    _, model_folder, folder = built
    app = _import_app(folder)
    module, app_classifier, app_tokenizer = app.load_model(str(model_folder))
    opening = app.opening_example(app.load_examples(app.settings(app_classifier)["id2label"]), module, app_classifier,
                                  app_tokenizer)
    classifier, tokenizer = load_classifier(model_folder)
    _, label, confidence = infer_reviews(opening, classifier, tokenizer)  # what the page shows on load
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--window-size=1100,1200", "--virtual-time-budget=30000", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "space.png"
    subprocess.run(flags + [f"--screenshot={shot}", app_url], check=True, capture_output=True, timeout=180)
    summary = f"<strong>{label}</strong> ({confidence:.1%})"  # the summary line, after the load event ran
    for _ in range(4):  # the load event is a real round trip to the app: on a busy machine it can miss a dump
        dom = subprocess.run(flags + ["--dump-dom", app_url], check=True, capture_output=True, text=True, timeout=180).stdout
        if summary in dom:
            break
    assert "What the model read" in dom and "Many reviews" in dom
    assert summary in dom
    image = Image.open(shot).convert("L")
    assert image.size == (1100, 1200)
    histogram = image.histogram()
    assert max(histogram) < 0.97 * sum(histogram), "the screenshot is (nearly) one colour: a blank page"
    dark = sum(histogram[:100])
    assert dark > 2000, "almost no dark pixels: no text rendered"


# --------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_space_pushes_to_the_hub_and_its_app_loads_the_model_from_there(built, hub_env, tmp_path):
    run_dir, _, _ = built
    hub_env.login("alice")
    model_id = hub_env.hub.new_repo_id("alice", "sentiment")
    space_id = f"{model_id}-demo"
    assert publish.main([str(run_dir), "--repo-id", model_id, "--folder", str(tmp_path / "model"),
                         "--space", space_id]) == 0
    api = hub_env.api("alice")
    assert set(api.list_repo_files(space_id, repo_type="space")) >= {"app.py", "README.md", "requirements.txt"}
    assert hub_env.server.repo(space_id, "space").repo_type == "space"
    from huggingface_hub import hf_hub_download

    app_py = Path(hf_hub_download(space_id, "app.py", repo_type="space"))
    assert f"MODEL_REPO = {model_id!r}" in app_py.read_text()
    # the pushed app, as the Space runs it: model.py + weights + tokenizer from the model repo
    hub_env.logout()
    app = _import_app(app_py.parent)
    module, classifier, tokenizer = app.load_model(app.MODEL_REPO)
    reference, reference_tokenizer = load_classifier(tmp_path / "model")
    assert module.infer_reviews(LONG_REVIEW, classifier, tokenizer) == pytest.approx(
        infer_reviews(LONG_REVIEW, reference, reference_tokenizer), abs=1e-6)


def test_a_private_space_push_never_leaves_an_existing_public_space_public(built, hub_env, tmp_path):
    """``--private`` on an existing public Space makes it private before uploading, as for the model
    repository (the Space used to be pushed with create_repo(exist_ok=True) alone, which kept it public)."""
    hub_env.login("alice")
    space_id = hub_env.hub.new_repo_id("alice", "demo")
    api = hub_env.api("alice")
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=False)
    folder = space.build_space_folder(REPO_ID, space_id, tmp_path / "space")
    space.push_space(folder, space_id, private=True)
    assert api.repo_info(space_id, repo_type="space").private is True
    assert "app.py" in api.list_repo_files(space_id, repo_type="space")
    hub_env.logout()

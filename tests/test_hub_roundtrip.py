"""Publish to the loopback Hub (tests/hub_server.py) and use the repo the way a user does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from classify.release import publish
from classify.model import infer_reviews, load_classifier, predict_proba
from model_card.render import USER_SNIPPET
from tests.hub_fixtures import hub_env, hub_server  # noqa: F401  (fixtures)
from tests.test_model import make_run_dir
from tests.test_publish import DESIGN, design_snippet

SNIPPET_TEXTS = ["Great movie", "I loved this film!", "Terrible."]
TEXTS = ["great movie", "terrible film, a waste of time", "I loved this film!", "boring story and a bad script"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_headless_encoder_dir):
    """Two differently trained tiny classifiers (a first and a second push); the first one calibrated
    (temperature 1.7 in its config.json), so every user path must apply the temperature."""
    run_dir, _, _ = make_run_dir(tmp_path_factory.mktemp("run1"), tiny_headless_encoder_dir, seed=0,
                                 truncation="head+tail", head_tokens=16)
    config = json.loads((run_dir / "model" / "config.json").read_text())
    (run_dir / "model" / "config.json").write_text(json.dumps({**config, "temperature": 1.7}))
    first = (run_dir, *load_classifier(run_dir))
    second = make_run_dir(tmp_path_factory.mktemp("run2"), tiny_headless_encoder_dir, seed=1, steps=10)
    return first, second


def user_script(repo_id: str) -> str:
    snippet = design_snippet() if DESIGN.is_file() else USER_SNIPPET
    return f"REPO_ID = {repo_id!r}\n" + snippet + textwrap.dedent("""
        import json, sys
        assert "classify" not in sys.modules
        print("\\nRESULT", json.dumps({"one": [label_class, label, conf], "many": results}))
    """)


def run_user_script(hub_env, repo_id, cwd, *, offline=False):
    env = hub_env.subprocess_env(offline=offline)
    env.pop("PYTHONPATH", None)
    env["TOKENIZERS_PARALLELISM"] = "false"
    # stdin closed, as in a script or CI job: AutoTokenizer's remote-code question gets no answer.
    done = subprocess.run([sys.executable, "-c", user_script(repo_id)], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.split("\nRESULT ")[-1])


def assert_same_as(out, classifier, tokenizer):
    one = infer_reviews(SNIPPET_TEXTS[0], classifier, tokenizer)
    many = infer_reviews(SNIPPET_TEXTS[1:], classifier, tokenizer)
    assert out["one"][:2] == list(one[:2])
    assert out["one"][2] == pytest.approx(one[2], abs=1e-5)
    assert [r[:2] for r in out["many"]] == [list(r[:2]) for r in many]
    assert [r[2] for r in out["many"]] == pytest.approx([r[2] for r in many], abs=1e-5)


def test_push_then_user_snippet_online_and_offline(hub_env, runs, tmp_path):
    (run_dir, classifier, tokenizer), _ = runs
    hub_env.login("alice")
    repo_id = hub_env.hub.new_repo_id("alice", "sentiment")
    result = publish.publish_run(run_dir, repo_id, folder=tmp_path / "folder")
    assert result["commit"] and len(result["commit"]) == 40
    files = set(hub_env.api("alice").list_repo_files(repo_id))
    assert {"model.py", "model.safetensors", "config.json", "README.md", "tokenizer.json"} <= files
    [commit] = [c for c in hub_env.api("alice").list_repo_commits(repo_id) if c.commit_id == result["commit"]]
    assert "unit-test-run" in commit.title

    cwd = tmp_path / "user"
    cwd.mkdir()
    assert_same_as(run_user_script(hub_env, repo_id, cwd), classifier, tokenizer)
    assert (cwd / "model.py").is_file()
    # Again with the network off: model.py is in ".", the weights and tokenizer in the cache.
    assert_same_as(run_user_script(hub_env, repo_id, cwd, offline=True), classifier, tokenizer)


def test_trust_remote_code_and_pipeline_via_the_hub(hub_env, runs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    (run_dir, classifier, tokenizer), _ = runs
    hub_env.login("alice")
    repo_id = hub_env.hub.new_repo_id("alice", "remote-code")
    publish.publish_run(run_dir, repo_id, folder=tmp_path / "folder")
    hub_env.logout()  # a public repo: anonymous reads

    expected = predict_proba(TEXTS, classifier, tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(repo_id, trust_remote_code=True).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**hf_tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    assert torch.softmax(logits, -1)[:, 1].tolist() == pytest.approx(expected, abs=1e-5)

    classify = pipeline("text-classification", model=repo_id, trust_remote_code=True)
    for scores, p in zip(classify(TEXTS, truncation=True, top_k=None), expected):
        assert {s["label"]: s["score"] for s in scores}["Positive"] == pytest.approx(p, abs=1e-5)

    loaded, loaded_tokenizer = load_classifier(repo_id)
    assert predict_proba(TEXTS, loaded, loaded_tokenizer) == pytest.approx(expected, abs=1e-5)


def test_second_push_is_a_new_commit_and_old_revision_keeps_old_weights(hub_env, runs, tmp_path):
    from huggingface_hub import hf_hub_download

    (run1, clf1, tok1), (run2, clf2, tok2) = runs
    hub_env.login("alice")
    repo_id = hub_env.hub.new_repo_id("alice", "versions")
    first = publish.publish_run(run1, repo_id, folder=tmp_path / "f1")["commit"]
    second = publish.publish_run(run2, repo_id, folder=tmp_path / "f2")["commit"]
    assert first != second
    commits = [c.commit_id for c in hub_env.api("alice").list_repo_commits(repo_id)]
    assert commits[:2] == [second, first]

    old = hf_hub_download(repo_id, "model.safetensors", revision=first)
    new = hf_hub_download(repo_id, "model.safetensors")
    assert open(old, "rb").read() == (run1 / "model" / "model.safetensors").read_bytes()
    assert open(new, "rb").read() == (run2 / "model" / "model.safetensors").read_bytes()
    p1, p2 = predict_proba(TEXTS, clf1, tok1), predict_proba(TEXTS, clf2, tok2)
    assert p1 != pytest.approx(p2, abs=1e-3)  # the two runs really differ
    old_model, old_tokenizer = load_classifier(repo_id, revision=first)
    assert predict_proba(TEXTS, old_model, old_tokenizer) == pytest.approx(p1, abs=1e-5)
    assert old_model.settings["truncation"] == "head+tail"  # the first run's settings came along
    assert old_model.config.temperature == 1.7
    new_model, new_tokenizer = load_classifier(repo_id)
    assert predict_proba(TEXTS, new_model, new_tokenizer) == pytest.approx(p2, abs=1e-5)
    assert new_model.settings["truncation"] == "head"


def _snapshot(folder):
    return {p: (folder / p).read_bytes() for p, _ in publish.list_folder(folder)}


def test_push_failures_are_clear_and_keep_the_folder(hub_env, runs, tmp_path, capsys):
    (run_dir, _, _), _ = runs
    folder = publish.build_repo_folder(run_dir, tmp_path / "folder", "alice/whatever")
    before = _snapshot(folder)
    repo_id = hub_env.hub.new_repo_id("alice", "errors")

    with pytest.raises(publish.PublishError, match="rejected the token.*401") as info:
        publish.push(folder, repo_id, token="hf_not_a_real_token")
    assert "hf_not_a_real_token" not in str(info.value)

    hub_env.logout()
    with pytest.raises(publish.PublishError, match="no Hugging Face token"):
        publish.push(folder, repo_id)
    with pytest.raises(SystemExit) as exit_info:
        publish.main([str(run_dir), "--repo-id", repo_id, "--folder", str(tmp_path / "cli")])
    assert exit_info.value.code != 0 and "no Hugging Face token" in str(exit_info.value.code)

    # alice's private repo: bob can neither push to it nor read it; anonymous cannot read it.
    publish.push(folder, repo_id, private=True, token=hub_env.tokens["alice"])
    bob = hub_env.tokens["bob"]
    with pytest.raises(publish.PublishError, match="no write access.*403") as info:
        publish.push(folder, repo_id, token=bob)
    assert bob not in str(info.value)
    with pytest.raises(OSError):
        load_classifier(repo_id)
    hub_env.login("bob")
    with pytest.raises(OSError):
        load_classifier(repo_id)
    hub_env.login("alice")
    assert load_classifier(repo_id)[0] is not None  # the owner can

    hub_env.set_offline(True)
    with pytest.raises(publish.PublishError, match="offline"):
        publish.push(folder, repo_id)
    hub_env.set_offline(False)
    from huggingface_hub import constants

    hub_env.monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(publish.PublishError, match="could not reach the Hub"):
        publish.push(folder, repo_id)
    assert _snapshot(folder) == before
    assert "hf_" not in capsys.readouterr().out

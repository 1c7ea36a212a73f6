"""classify/release/publish.py and model_card/: the Hub folder, the standalone model.py, the card, the CLI."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from classify.release import publish
from classify.model import predict_proba
from model_card import render_card, validate_card
from model_card.render import USER_SNIPPET
from tests.test_model import fake_results, make_run_dir

REPO_ID = "alice/tiny-imdb-sentiment"
DESIGN = Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"
TEXTS = ["great movie", "terrible film, a waste of time", "I loved this film!", "Terrible.",
         "the story was boring<br /><br />and the script was bad"]
EXPECTED_FILES = {"README.md", "config.json", "model.py", "model.safetensors", "results.json",
                  "tokenizer.json", "tokenizer_config.json", "plots/imdb_test_roc.png"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_headless_encoder_dir):
    run_dir, classifier, tokenizer = make_run_dir(tmp_path_factory.mktemp("run"), tiny_headless_encoder_dir,
                                                  truncation="head+tail", head_tokens=16, max_length=64)
    folder = publish.build_repo_folder(run_dir, tmp_path_factory.mktemp("hub") / "repo", REPO_ID)
    return run_dir, folder, classifier, tokenizer


def design_snippet() -> str:
    if not DESIGN.is_file():
        pytest.skip(f"{DESIGN} not available")
    block = re.search(r"```python\n(.*?)```", DESIGN.read_text(), re.DOTALL).group(1)
    return textwrap.dedent(block)


def clean_env(**extra) -> dict:
    """The environment of a fresh interpreter that cannot see this repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------


def test_folder_contents(run):
    run_dir, folder, classifier, _ = run
    files = {name for name, _ in publish.list_folder(folder)}
    assert files == EXPECTED_FILES
    assert (folder / "model.safetensors").read_bytes() == (run_dir / "model" / "model.safetensors").read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "model.DaptClassifierConfig",
                                  "AutoModelForSequenceClassification": "model.DaptClassifier"}
    assert config["model_type"] == "dapt-encoder-classifier"
    assert config["architectures"] == ["DaptClassifier"]
    assert config["encoder_config"]["hidden_size"] == classifier.encoder.config.hidden_size
    assert (config["max_length"], config["truncation"], config["head_tokens"]) == (64, "head+tail", 16)
    assert config["id2label"] == {"0": "Negative", "1": "Positive"}
    assert json.loads((folder / "results.json").read_text()) == json.loads((run_dir / "results.json").read_text())


def test_model_py_has_config_embedded_and_only_allowed_imports(run):
    _, folder, classifier, _ = run
    source = (folder / "model.py").read_text()
    assert "EMBEDDED_CONFIG = None" not in source
    tree = ast.parse(source)
    [assign] = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "EMBEDDED_CONFIG"]
    embedded = ast.literal_eval(assign.value)
    assert embedded["encoder_config"] == classifier.config.encoder_config
    assert (embedded["truncation"], embedded["head_tokens"], embedded["max_length"]) == ("head+tail", 16, 64)
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    third_party = {r for r in roots if r not in sys.stdlib_module_names and r != "__future__"}
    assert third_party == {"torch", "transformers"}


def test_the_published_model_py_carries_the_one_cleaning_rule(run):
    """model.py in the repo imports dapt.core.text; the published one holds that module's code instead,
    and cleans exactly as stage 1 and stage 2 do (random strings of tags, spaces and words)."""
    import random

    from dapt.core import text as text_rules

    _, folder, _, _ = run
    source = (folder / "model.py").read_text()
    assert "import dapt" not in source and "from dapt" not in source
    namespace: dict = {}
    exec(compile(source[source.index("# --- dapt/core/text.py"):source.index("# --- end of dapt/core/text.py")],
                 "model.py", "exec"), namespace)
    pieces = ["<br />", "<BR/>", "<br>", " ", "\t", "\n", "\u00a0", "\u2003", "word", "ok.", ""]
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        assert namespace["clean_text"](text) == text_rules.clean_text(text), repr(text)
    with pytest.raises(publish.PublishError, match="exactly one line"):
        publish.inline_text_rules("x = 1\n")


def test_model_py_works_standalone_in_a_subprocess(run, tmp_path):
    """Only model.py in a clean cwd, the repo not importable: no-arg build + strict load + inference."""
    _, folder, classifier, tokenizer = run
    (tmp_path / "model.py").write_text((folder / "model.py").read_text())
    script = textwrap.dedent(f"""
        import json, sys
        from safetensors.torch import load_file
        from transformers import AutoTokenizer
        import model
        assert model.__file__.startswith({str(tmp_path)!r}), model.__file__
        assert "classify" not in sys.modules
        assert model.DistilBERTClassifier is model.DaptClassifier  # the first cards' name, an alias
        classifier = model.DistilBERTClassifier()
        classifier.load_state_dict(load_file({str(folder / "model.safetensors")!r}), strict=True)
        classifier.eval()
        tokenizer = AutoTokenizer.from_pretrained({str(folder)!r})
        print("\\nRESULT", json.dumps({{"p": model.predict_proba({TEXTS!r}, classifier, tokenizer),
                           "one": model.infer_reviews("Great movie", classifier, tokenizer),
                           "settings": classifier.settings}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=clean_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("\nRESULT ")[-1])
    assert out["p"] == pytest.approx(predict_proba(TEXTS, classifier, tokenizer), abs=1e-5)
    assert out["settings"]["truncation"] == "head+tail" and out["settings"]["head_tokens"] == 16
    assert out["one"][1] == ["Negative", "Positive"][out["one"][0]]


def test_verify_catches_a_model_py_that_does_not_match(run, tmp_path):
    import shutil

    _, folder, _, _ = run
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    source = (broken / "model.py").read_text()
    (broken / "model.py").write_text(source.replace("'num_hidden_layers': 2", "'num_hidden_layers': 3", 1))
    assert (broken / "model.py").read_text() != source
    with pytest.raises(publish.PublishError, match="does not match"):
        publish.verify_folder(broken)


def test_embed_config_needs_exactly_one_marker_line():
    with pytest.raises(publish.PublishError):
        publish.embed_config("x = 1\n", {"a": 1})
    with pytest.raises(publish.PublishError):
        publish.embed_config("EMBEDDED_CONFIG = None\nEMBEDDED_CONFIG = None\n", {"a": 1})
    out = publish.embed_config("A = 0\nEMBEDDED_CONFIG = None\nB = 1\n", {"a": [1, 2.5e-12, None, True], "b": "x'y"})
    namespace: dict = {}
    exec(out, namespace)
    assert namespace["EMBEDDED_CONFIG"] == {"a": [1, 2.5e-12, None, True], "b": "x'y"}
    assert namespace["B"] == 1


def test_build_refuses_a_folder_it_did_not_build(run, tmp_path):
    run_dir, _, _, _ = run
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(publish.PublishError, match="not built by dapt-publish"):
        publish.build_repo_folder(run_dir, foreign, REPO_ID)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(publish.PublishError, match="results.json"):
        publish.build_repo_folder(tmp_path, tmp_path / "out", REPO_ID)


# --------------------------------------------------------------------------------------------
# The model card
# --------------------------------------------------------------------------------------------


def test_card_parses_and_metrics_equal_results(run):
    from huggingface_hub import ModelCard

    run_dir, folder, _, _ = run
    results = json.loads((run_dir / "results.json").read_text())
    card = ModelCard((folder / "README.md").read_text())
    parsed = {(e.dataset_type, e.dataset_split, e.metric_type): e.metric_value for e in card.data.eval_results}
    expected = {}
    for key, dataset, split in (("imdb_test", "stanfordnlp/imdb", "test"),
                                ("sst2_validation", "stanfordnlp/sst2", "validation")):
        for metric in ("accuracy", "f1", "precision", "recall", "roc_auc"):
            expected[(dataset, split, metric)] = pytest.approx(results["evaluation"][key][metric], abs=5e-5)
    assert parsed == expected
    assert all(e.task_type == "text-classification" for e in card.data.eval_results)
    data = card.data
    assert (data.license, data.language, data.pipeline_tag) == ("apache-2.0", "en", "text-classification")
    assert data.base_model == "distilbert/distilbert-base-uncased"
    assert set(data.datasets) == {"stanfordnlp/imdb", "stanfordnlp/sst2"}
    assert set(data.metrics) >= {"accuracy", "f1", "precision", "recall", "roc_auc"}
    assert data.tags and "text-classification" in data.tags
    validate_card(str(card), results, REPO_ID)


def test_card_body_carries_the_run(run):
    run_dir, folder, _, _ = run
    results = json.loads((run_dir / "results.json").read_text())
    text = (folder / "README.md").read_text()
    hp = results["hyperparameters"]
    assert f"| Encoder learning rate | {hp['encoder_lr']:.2e} |" in text
    assert f"| Head learning rate | {hp['head_lr']:g} |" in text
    assert "No domain-adaptive pretraining was done" in text
    for epoch in results["training"]["epochs"]:
        assert f"| {epoch['epoch']}" in text and f"{epoch['val_acc']:g}" in text
    gap = 100 * (results["evaluation"]["imdb_test"]["accuracy"] - results["evaluation"]["sst2_validation"]["accuracy"])
    assert f"({gap:.2f} points)" in text
    assert f'REPO_ID = "{REPO_ID}"\n{USER_SNIPPET}```' in text
    assert f'pipeline("text-classification", model="{REPO_ID}", trust_remote_code=True)' in text
    assert "plots/imdb_test_roc.png" in text
    for section in ("## Intended uses", "## Out-of-scope uses", "## Limitations", "head+tail"):
        assert section in text


def test_card_snippet_is_the_design_snippet_verbatim():
    assert USER_SNIPPET == design_snippet()


def test_card_with_dapt_and_local_base_model(tmp_path):
    from huggingface_hub import ModelCard

    local_encoder = tmp_path / "stage1" / "encoder"
    local_encoder.mkdir(parents=True)
    results = fake_results(dapt=True, base_model=str(local_encoder))
    text = render_card(results, "bob/dapt-model")
    card = validate_card(text, results, "bob/dapt-model")
    assert card.data.base_model == "distilbert/distilbert-base-uncased"  # what stage 1 started from
    assert "12.35" in text and "7.89" in text  # perplexity before / after, from results["dapt"]
    assert "imdb:train, imdb:unsupervised" in text
    assert "No domain-adaptive pretraining" not in text
    # No Hub id anywhere: no base_model in the metadata rather than a local path.
    results = fake_results(base_model=str(local_encoder))
    card = ModelCard(render_card(results, "bob/plain"))
    assert card.data.base_model is None
    # An evaluation subset read from a local path: the known Hub dataset id, the subset size shown.
    local_data = tmp_path / "data" / "imdb"
    results["evaluation"]["imdb_test"].update(dataset=str(local_data), n=1000, subset_of=25000)
    text = render_card(results, "bob/plain")
    assert "| 1,000 of 25,000 |" in text and str(local_data) not in text
    assert ModelCard(text).data.eval_results[0].dataset_type == "stanfordnlp/imdb"
    # A changed metric changes the model-index (nothing is hard-coded).
    results["evaluation"]["sst2_validation"]["roc_auc"] = 0.5
    parsed = {(e.dataset_type, e.metric_type): e.metric_value for e in ModelCard(render_card(results, "b/p")).data.eval_results}
    assert parsed[("stanfordnlp/sst2", "roc_auc")] == 0.5


def test_validate_card_rejects_mismatched_metrics(run):
    run_dir, folder, _, _ = run
    results = json.loads((run_dir / "results.json").read_text())
    text = (folder / "README.md").read_text()
    results["evaluation"]["imdb_test"]["f1"] = 0.1234
    with pytest.raises(ValueError, match="differ"):
        validate_card(text, results, REPO_ID)


# --------------------------------------------------------------------------------------------
# Auto classes and pipeline from the local folder (trust_remote_code)
# --------------------------------------------------------------------------------------------


def test_trust_remote_code_and_pipeline_match_infer_reviews(run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    _, folder, classifier, tokenizer = run
    short = ["great movie", "terrible film, a waste of time", "I loved this film!", "Terrible."]
    expected = predict_proba(short, classifier, tokenizer)

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True).eval()
    assert type(model).__name__ == "DaptClassifier"
    assert model.config.id2label == {0: "Negative", 1: "Positive"}
    hf_tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    batch = hf_tokenizer(short, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(model(**batch).logits, -1)[:, 1].tolist()
    assert probabilities == pytest.approx(expected, abs=1e-5)

    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    outputs = classify(short, truncation=True, top_k=None)
    for scores, p in zip(outputs, expected):
        by_label = {s["label"]: s["score"] for s in scores}
        assert set(by_label) == {"Negative", "Positive"}
        assert by_label["Positive"] == pytest.approx(p, abs=1e-5)
    top = classify(short, truncation=True)
    assert [t["label"] for t in top] == ["Positive" if p > 0.5 else "Negative" for p in expected]


def test_the_pipeline_reads_a_long_review_by_its_head_as_documented(run):
    """docs/publishing.md: pipeline() keeps the first max_length tokens of the raw text; infer_reviews
    applies the model's head+tail rule. Both are what they say, and they differ on a long review."""
    from transformers import pipeline

    _, folder, classifier, tokenizer = run
    long_review = "what a great opening scene . " * 20 + "in the end it was a terrible and boring film ."
    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    by_label = {s["label"]: s["score"] for s in classify([long_review], truncation=True, max_length=64, top_k=None)[0]}
    head = tokenizer(long_review, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        p_head = torch.softmax(classifier(**head).logits, -1)[0, 1].item()
    assert by_label["Positive"] == pytest.approx(p_head, abs=1e-5)
    assert predict_proba(long_review, classifier, tokenizer) != pytest.approx(p_head, abs=1e-6)  # head+tail


def test_a_repo_published_before_the_generic_name_still_loads(run, tmp_path):
    """Repositories published earlier name ``DistilBERTClassifier`` in config.json (architectures,
    auto_map): they load through the Auto classes with today's model.py and through dapt's loader."""
    import shutil

    from transformers import AutoModelForSequenceClassification

    from classify.model import load_classifier

    _, folder, classifier, tokenizer = run
    old = tmp_path / "old-repo"
    shutil.copytree(folder, old)
    config = json.loads((old / "config.json").read_text())
    config["architectures"] = ["DistilBERTClassifier"]
    config["auto_map"]["AutoModelForSequenceClassification"] = "model.DistilBERTClassifier"
    (old / "config.json").write_text(json.dumps(config))
    expected = predict_proba(TEXTS, classifier, tokenizer)
    auto = AutoModelForSequenceClassification.from_pretrained(str(old), trust_remote_code=True).eval()
    assert type(auto).__name__ == "DaptClassifier"
    loaded, loaded_tokenizer = load_classifier(old)
    assert predict_proba(TEXTS, loaded, loaded_tokenizer) == pytest.approx(expected, abs=1e-6)
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(auto(**batch).logits, loaded(**batch).logits)


# --------------------------------------------------------------------------------------------
# CLI: dry run and failures
# --------------------------------------------------------------------------------------------


def test_dry_run_lists_files_with_sizes(run, tmp_path, capsys, monkeypatch):
    run_dir, _, _, _ = run
    monkeypatch.delenv("HF_TOKEN", raising=False)
    folder = tmp_path / "dry"
    assert publish.main([str(run_dir), "--repo-id", REPO_ID, "--folder", str(folder), "--dry-run"]) == 0
    out = capsys.readouterr().out
    listing = publish.list_folder(folder)
    assert {name for name, _ in listing} == EXPECTED_FILES
    for name, size in listing:
        assert re.search(rf"^{re.escape(name)}\s+\S+ (B|KiB|MiB)$", out, re.MULTILINE), name
    assert re.search(rf"^total\s+.*\({len(listing)} files\)$", out, re.MULTILINE)
    assert "dry run: nothing uploaded" in out
    # A second build into the same folder replaces it cleanly.
    assert publish.main([str(run_dir), "--repo-id", REPO_ID, "--folder", str(folder), "--dry-run"]) == 0


def test_push_without_token_is_a_clear_error_and_keeps_the_folder(run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    run_dir, _, _, _ = run
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no saved login either
    folder = tmp_path / "repo"
    with pytest.raises(SystemExit) as exit_info:
        publish.main([str(run_dir), "--repo-id", REPO_ID, "--folder", str(folder)])
    assert exit_info.value.code != 0
    assert "no Hugging Face token" in str(exit_info.value.code)
    assert {name for name, _ in publish.list_folder(folder)} == EXPECTED_FILES
    with pytest.raises(publish.PublishError, match="no Hugging Face token"):
        publish.push(folder, REPO_ID)


def test_bad_repo_id_is_rejected(run, tmp_path):
    run_dir, _, _, _ = run
    with pytest.raises(SystemExit) as exit_info:
        publish.main([str(run_dir), "--repo-id", "not a repo", "--folder", str(tmp_path / "x"), "--dry-run"])
    assert "USER/NAME" in str(exit_info.value.code)

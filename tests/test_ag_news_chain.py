"""A second domain end to end (issue 18, section 4): AG News news topics, 4 classes, the chain
TAPT (stage 1 on the task's own training texts) -> 4-class stage 2 -> evaluation -> dapt-publish
--dry-run (card, model.py, Space) -> dapt-predict printing topic names -> the published model.py's
snippet in a fresh process -> ONNX parity -> the Space answering through gradio_client with 4 labels.

A tiny random encoder keeps it to seconds per step; the recipe is the shipped one
(configs/tasks/ag_news/tapt.yaml and classify.yaml's settings), its budget shrunk. It takes what the
stages actually write, so a change of their output that the distribution side does not follow
fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from classify.release import export, predict, publish, space
from classify.model import load_classifier, predict_proba
from model_card import validate_card
from tests.test_multiclass import AG_NEWS, _ag_news_config
from tests.test_publish_k_classes import assert_nothing_about_movies
from tests.test_predict import run_cli

pytestmark = pytest.mark.slow  # TAPT + a 4-class training run, an ONNX export, a Space launch

ROOT = Path(__file__).resolve().parents[1]
REPO_ID, SPACE_ID = "alice/ag-news-tiny", "alice/ag-news-tiny-demo"
HEADLINES = ["Stocks rally as the central bank holds rates", "The home side won the final in extra time"]


def tapt(encoder_dir, data_dir, output_dir) -> dict:
    """configs/tasks/ag_news/tapt.yaml on a tiny encoder and a few hundred training texts."""
    from dapt.core.config import load_config
    from dapt.pretrain import pretrain
    from dapt.pretrain_config import PretrainConfig

    config = load_config(PretrainConfig, ROOT / "configs" / "tasks" / "ag_news" / "tapt.yaml", [
        f"output_dir={output_dir}", f"model.name_or_path={encoder_dir}", f"data.sources.0.path={data_dir}/ag_news",
        "data.sources.0.max_documents=400", "data.heldout=40", "data.block_size=48", "train.batch_size=8",
        "train.eval_batch_size=16", "train.max_steps=6", "train.head_warmup_steps=4", "train.log_every=2"])
    return pretrain(config)


@pytest.fixture(scope="module")
def trained(tiny_headless_encoder_dir, shared_data, tmp_path_factory):
    from classify.train import train_classifier
    from dapt.core.runtime import forget_accelerate_state

    adapted = tmp_path_factory.mktemp("ag_news_tapt") / "tapt"
    forget_accelerate_state()  # TAPT in bf16 autocast after a test that built an fp32 state
    summary = tapt(tiny_headless_encoder_dir, shared_data, adapted)
    forget_accelerate_state()
    out = tmp_path_factory.mktemp("ag_news_e2e")
    results = train_classifier(_ag_news_config(adapted, shared_data, out))
    folder = tmp_path_factory.mktemp("ag_news_hub") / "repo"
    assert publish.main([str(out), "--repo-id", REPO_ID, "--folder", str(folder), "--dry-run", "--space", SPACE_ID]) == 0
    return out, results, folder, summary


def test_tapt_read_the_training_texts_and_stage_2_the_test_split(trained):
    _, results, _, summary = trained
    phases = summary["adaptation"]
    assert len(phases) == 1 and summary["had_mlm_head"] is False and summary["baseline"] == "head_warmup"
    read = json.dumps(phases[0]["sources"])
    assert "ag_news" in read and "train" in read and "test" not in read.replace("\"test\"", "")
    assert summary["perplexity_after"] < summary["perplexity_before"]
    assert results["dapt"]["adaptation"] == phases  # stage 2 records the chain it stands on
    block = results["evaluation"]["ag_news_test"]
    assert block["n"] == 80 and list(block["per_class"]) == AG_NEWS and 0 <= block["macro_f1"] <= 1
    assert len(block["confusion_matrix"]["matrix"]) == 4 and block["calibration"]["after"]["ece"] >= 0


def test_the_card_of_a_real_four_class_run(trained):
    out, results, folder, _ = trained
    card = (folder / "README.md").read_text()
    published = json.loads((folder / "results.json").read_text())  # local paths made path-free
    validate_card(card, published, REPO_ID)
    assert "A 4-class text classifier (labels: **World**, **Sports**, **Business**, **Sci/Tech**)" in card
    assert "fine-tuned on `ag_news` (split `train`)" in card  # local files: named, not passed off as a Hub id
    assert f"{results['data']['train']['rows']:,} texts read" in card and "label_names metadata" in card
    assert "**Measured in domain only.**" in card and "| **World** |" in card
    assert_nothing_about_movies(card)


def test_the_space_of_a_real_four_class_run(trained):
    out, _, _, _ = trained
    folder = space.default_space_folder(out, SPACE_ID)
    shown = json.loads((folder / "examples.json").read_text())["examples"]
    written = json.loads((out / "examples.json").read_text())["examples"]
    assert shown == [{"text": e["text"], "label": e["label"]} for e in written]
    assert "4-class text classifier: World, Sports, Business, Sci/Tech" in (folder / "README.md").read_text()


def test_predict_and_export_of_a_real_four_class_run(trained, tmp_path):
    out, _, _, _ = trained
    classifier, tokenizer = load_classifier(out)
    texts = HEADLINES
    records = [json.loads(line) for line in run_cli(["--model", str(out), "--jsonl", "--probs", *texts]).splitlines()]
    for record, probabilities in zip(records, predict_proba(texts, classifier, tokenizer, all_classes=True)):
        assert list(record["probs"]) == AG_NEWS and "p_positive" not in record
        assert list(record["probs"].values()) == pytest.approx(probabilities, abs=1e-6)
    pytest.importorskip("onnxruntime")
    assert export.main([str(out), "--onnx", "--out", str(tmp_path / "onnx"), "--check", "24"]) == 0
    report = json.loads((tmp_path / "onnx" / export.CHECK_FILE).read_text())
    assert report["n"] == 24 and report["texts"].startswith("ag_news_test (") and report["labels"] == AG_NEWS
    assert report["variants"]["fp32"]["equivalent"]


def test_dapt_predict_prints_topic_names_from_the_published_folder(trained):
    _, _, folder, _ = trained
    lines = run_cli(["--model", str(folder), *HEADLINES]).splitlines()
    assert len(lines) == 2 and all(line.split()[0] in {"World", "Sports", "Business", "Sci/Tech"} for line in lines)


def test_the_published_snippet_runs_in_a_fresh_process_without_dapt(trained, tmp_path):
    """DESIGN.md's snippet, offline: model.py beside the user's script, weights and tokenizer from the
    published folder, no dapt installed on the path."""
    _, _, folder, _ = trained
    (tmp_path / "model.py").write_bytes((folder / "model.py").read_bytes())
    script = textwrap.dedent(f"""
        from transformers import AutoTokenizer
        from safetensors.torch import load_file as safe_load_file
        from model import DistilBERTClassifier, infer_reviews, predict_proba
        classifier = DistilBERTClassifier()
        tokenizer = AutoTokenizer.from_pretrained({str(folder)!r})
        classifier.load_state_dict(safe_load_file({str(folder / "model.safetensors")!r}))
        classifier.eval()
        print(infer_reviews({HEADLINES!r}, classifier, tokenizer))
        print(predict_proba({HEADLINES[0]!r}, classifier, tokenizer))
        import sys
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("dapt", "classify", "model_card")))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results, probabilities, project_modules = (eval(line) for line in done.stdout.strip().splitlines()[-3:])  # noqa: S307
    assert project_modules == []  # model.py stands alone: torch, transformers and the standard library
    # importing model.py registers its classes: AutoTokenizer no longer asks whether to run the repo's
    # code (a prompt with a hf.co link built from the local path, issue 20)
    assert "custom code" not in done.stdout + done.stderr and "hf.co" not in done.stdout + done.stderr
    classifier, tokenizer = load_classifier(folder)
    from classify.model import infer_reviews

    assert [label for _, label, _ in results] == [label for _, label, _ in infer_reviews(HEADLINES, classifier, tokenizer)]
    assert len(probabilities) == 4 and sum(probabilities) == pytest.approx(1)


@pytest.fixture(scope="module")
def app_url(trained, tmp_path_factory):
    from tests.test_space import serve_app

    out, _, folder, _ = trained
    yield from serve_app(folder, space.default_space_folder(out, SPACE_ID), tmp_path_factory.mktemp("ag_news_app"))


def test_the_space_answers_with_four_topics(trained, app_url):
    from gradio_client import Client

    _, _, folder, _ = trained
    scores, _, summary = Client(app_url, verbose=False).predict(HEADLINES[0], api_name="/classify")
    classifier, tokenizer = load_classifier(folder)
    expected = dict(zip(AG_NEWS, predict_proba(HEADLINES[0], classifier, tokenizer, all_classes=True)))
    assert {c["label"]: c["confidence"] for c in scores["confidences"]} == pytest.approx(expected, abs=1e-6)
    assert scores["label"] in AG_NEWS and summary.startswith(f"**{scores['label']}**")

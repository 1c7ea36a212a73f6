"""scripts/demo_report.py: the artifact check (calibration, length buckets, reliability diagrams)
and the summary (expected labels counted, ECE before -> after, CPU budget vs the GPU recipe)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from classify.calibration import calibration_report, fit_temperature
from classify.evaluate import accuracy_by_length, from_logits
from tests.test_calibration import synthetic_logits
from tests.test_model import fake_results

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def _report_module():
    spec = importlib.util.spec_from_file_location("demo_report", ROOT / "scripts" / "demo_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_folder(out: Path, *, calibrated: bool = True) -> dict:
    """A demo output folder with every artifact; results computed from synthetic logits."""
    (out / "dapt").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (out / "dapt" / name).write_text("{}")
    (out / "dapt" / "dapt_summary.json").write_text(json.dumps({
        "perplexity_before": 900.0, "perplexity_after": 300.0, "baseline": "head-warmup", "steps": 5,
        "tokens_seen": 1000, "corpus": {"documents": 10},
    }))
    results = fake_results(truncation="head+tail")
    logits, labels = synthetic_logits(300, scale=3.0, seed=8)
    t = fit_temperature(logits[:100], labels[:100])
    if calibrated:
        results["training"]["calibration"] = {"fitted_on": "validation", "n": 100, **calibration_report(logits[:100], labels[:100], t)}
    run = out / "classify"
    (run / "plots").mkdir(parents=True)
    for name, block in results["evaluation"].items():
        if calibrated:
            block["calibration"] = calibration_report(logits[100:], labels[100:], t)
            block["by_length"] = accuracy_by_length(np.full(200, 300), from_logits(logits[100:], labels[100:], t))
            (run / "plots" / f"reliability_{name}.png").write_bytes(PNG)
        for kind in ("confusion", "roc"):
            (run / "plots" / f"{kind}_{name}.png").write_bytes(PNG)
    (run / "plots" / "training_curves.png").write_bytes(PNG)
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text("data:\n  train:\n    max_samples: 1600\n")
    hub = out / "hub"
    hub.mkdir()
    for name in ("model.py", "model.safetensors", "config.json", "tokenizer_config.json"):
        (hub / name).write_text("x")
    from model_card.render import render_card

    (hub / "README.md").write_text(render_card(results, "me/demo"))
    predictions = [("One of the best films.", "Positive", 0.9), ("A masterpiece of boredom.", "Positive", 0.6)]
    (out / "predictions.jsonl").write_text("".join(json.dumps({"text": t, "label": l, "confidence": c}) + "\n" for t, l, c in predictions))
    (out / "expected.tsv").write_text("expected\treview\nPositive\tOne of the best films.\nNegative\tA masterpiece of boredom.\n")
    return results


def test_summary_counts_expected_labels_and_shows_ece_before_after(tmp_path, capsys):
    report = _report_module()
    results = _demo_folder(tmp_path)
    assert report.main([str(tmp_path), "--expected", str(tmp_path / "expected.tsv"), "--times", "total=90"]) == 0
    text = capsys.readouterr().out
    assert "expected Positive right" in text and "expected Negative WRONG" in text
    assert "1 of 2 sample reviews right, 1 wrong" in text
    imdb = results["evaluation"]["imdb_test"]["calibration"]
    assert f"imdb_test {imdb['before']['ece']:.3f} -> {imdb['after']['ece']:.3f}" in text
    assert "this CPU run: 1,600 training reviews" in text and "the GPU recipe:" in text and "docs/recipes.md" in text


def test_missing_calibration_and_reliability_diagrams_are_reported(tmp_path, capsys):
    report = _report_module()
    _demo_folder(tmp_path, calibrated=False)
    assert report.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "imdb_test: no calibration" in err and "training: no calibration" in err
    assert "missing reliability diagram" in err and "accuracy per length bucket" in err

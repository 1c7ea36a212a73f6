"""dapt-export --onnx: the exported graph answers like the PyTorch classifier it came from.

One tiny classifier (random weights, head+tail truncation at 64 tokens) is exported once per module
through the CLI, with the int8 graph and a check on real IMDb test reviews; the tests then compare
probabilities with PyTorch on hand-made and real reviews.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from classify.release import export
from classify import model
from classify.model import infer_reviews, load_classifier, predict_proba
from tests.test_model import make_run_dir

pytestmark = pytest.mark.slow  # one ONNX export (~15-30 s on 2 loaded cores)

LONG = "the movie was good but the ending was bad . " * 40 + "in the end i loved it , great film !"
REVIEWS = [
    "Great movie",
    "Highly recommend to never watch again.",
    "A masterpiece of boredom.<br /><br />Terrible acting.",
    LONG,  # far over max_length: head+tail truncation decides what the model reads
    "x",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_headless_encoder_dir, shared_data):
    run_dir, _, _ = make_run_dir(tmp_path_factory.mktemp("run"), tiny_headless_encoder_dir,
                                 truncation="head+tail", head_tokens=16, max_length=64)
    folder = run_dir / "model"
    # a calibration temperature, where the classifier applies one (it divides the logits in forward)
    stored = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**stored, "temperature": 1.7}, indent=2))
    out = tmp_path_factory.mktemp("onnx")
    exporter_log = logging.getLogger("torch.onnx._internal.exporter._registration")

    class Collect(logging.Handler):
        def emit(self, record):
            EXPORTER_LINES.append(record.getMessage())

    collect = Collect(level=logging.DEBUG)
    exporter_log.addHandler(collect)
    try:
        assert export.main([str(run_dir), "--onnx", "--int8", "--out", str(out), "--check", "60",
                            "--data-dir", str(shared_data)]) == 0
    finally:
        exporter_log.removeHandler(collect)
    return folder, out


EXPORTER_LINES: list[str] = []  # what the ONNX exporter logged during the fixture's export


def test_the_export_does_not_print_a_note_per_torchvision_op(exported):
    assert not [line for line in EXPORTER_LINES if "torchvision" in line], EXPORTER_LINES[:3]


def test_folder_holds_both_graphs_config_and_tokenizer(exported):
    _, out = exported
    info = json.loads((out / export.EXPORT_INFO).read_text())
    assert info["files"] == {"fp32": export.FP32_FILE, "int8": export.INT8_FILE}
    for name in (export.FP32_FILE, export.INT8_FILE, "config.json", "tokenizer.json", export.CHECK_FILE):
        assert (out / name).is_file(), name
    # the int8 graph is the graph-optimised one: the BERT fusions ran
    assert info["int8_fused_operators"], info


def test_fp32_probabilities_match_pytorch_on_tricky_and_long_reviews(exported):
    folder, out = exported
    classifier, tokenizer = load_classifier(folder)
    served = export.OnnxClassifier(out)
    # the stored head+tail, and overrides at inference time
    for truncation in [None, "head"] + (["windows"] if "windows" in model.TRUNCATION_STRATEGIES else []):
        options = {"truncation": truncation, **({"window_stride": 16} if truncation == "windows" else {})}
        expected = predict_proba(REVIEWS, classifier, tokenizer, **options)
        got = served.predict_proba(REVIEWS, **options)
        assert max(abs(a - b) for a, b in zip(expected, got)) < 1e-4
    # one entry point, same shapes of answer as infer_reviews: a str gives a tuple, a list a list
    assert served.predict("Great movie") == pytest.approx(infer_reviews("Great movie", classifier, tokenizer), abs=1e-4)
    assert [r[:2] for r in served.predict(REVIEWS)] == [r[:2] for r in infer_reviews(REVIEWS, classifier, tokenizer)]


def test_fp32_probabilities_match_pytorch_on_real_imdb_reviews(exported, shared_data):
    folder, out = exported
    texts, _ = export.imdb_test_reviews(48, shared_data, seed=3)
    classifier, tokenizer = load_classifier(folder)
    expected = predict_proba(texts, classifier, tokenizer, batch_size=8)
    got = export.OnnxClassifier(out).predict_proba(texts, batch_size=8)
    assert max(abs(a - b) for a, b in zip(expected, got)) < 1e-4


def test_check_report_is_measured_and_judged(exported):
    _, out = exported
    report = json.loads((out / export.CHECK_FILE).read_text())
    assert report["n"] == 60
    fp32, int8 = report["variants"]["fp32"], report["variants"]["int8"]
    assert fp32["equivalent"] and fp32["max_abs_prob_diff"] < 1e-4 and fp32["agreement"] == 1.0
    # int8 is judged by its measured agreement, whatever it is on a random model
    assert int8["equivalent"] == (int8["agreement"] >= export.INT8_MIN_AGREEMENT)
    assert int8["disagreements"] == round((1 - int8["agreement"]) * 60)
    assert 0 < int8["max_abs_prob_diff"] < 1  # a different computation, not a copy of fp32
    # tied to the bytes it scored: each graph's SHA-256, and the fp32 graph int8 was quantised from
    sha256 = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in (export.FP32_FILE, export.INT8_FILE)}
    assert (fp32["file"], fp32["sha256"]) == (export.FP32_FILE, sha256[export.FP32_FILE])
    assert (int8["file"], int8["sha256"]) == (export.INT8_FILE, sha256[export.INT8_FILE])
    assert report["reference"] == {"file": export.FP32_FILE, "sha256": sha256[export.FP32_FILE]}


def test_int8_graph_is_served_only_as_measured(exported, tmp_path):
    _, out = exported
    report = json.loads((out / export.CHECK_FILE).read_text())
    if report["variants"]["int8"]["equivalent"]:
        export.OnnxClassifier(out, int8=True)
    else:
        with pytest.raises(export.ExportError, match="not equivalent to PyTorch"):
            export.OnnxClassifier(out, int8=True)
    probs = export.OnnxClassifier(out, int8=True, allow_unverified=True).predict_proba(REVIEWS)
    assert len(probs) == len(REVIEWS) and all(0.0 <= p <= 1.0 for p in probs)
    # never checked at all: refused whatever it would answer
    unchecked = tmp_path / "unchecked"
    unchecked.mkdir()
    for name in (export.INT8_FILE, "config.json", "tokenizer.json", "tokenizer_config.json"):
        (unchecked / name).write_bytes((out / name).read_bytes())
    with pytest.raises(export.ExportError, match="never checked"):
        export.OnnxClassifier(unchecked, int8=True)
    # the verified bytes are the ones served: a folder whose check passes loads and answers
    passing = tmp_path / "passing"
    passing.mkdir()
    for name in (export.FP32_FILE, export.INT8_FILE, "config.json", "tokenizer.json", "tokenizer_config.json"):
        (passing / name).write_bytes((out / name).read_bytes())
    report["variants"]["int8"].update(equivalent=True, agreement=1.0)
    (passing / export.CHECK_FILE).write_text(json.dumps(report))
    served = export.OnnxClassifier(passing, int8=True).predict_proba(REVIEWS)
    assert served == pytest.approx(probs, abs=1e-6)


def test_verdict_refuses_int8_below_the_agreement_bar():
    base = {"max_abs_prob_diff": 0.01}
    assert export.verdict("int8", {**base, "agreement": 0.995})[0]
    ok, reason = export.verdict("int8", {**base, "agreement": 0.994})
    assert not ok and "99.40%" in reason
    assert not export.verdict("fp32", {"max_abs_prob_diff": 2e-4, "agreement": 1.0})[0]


def test_compare_counts_agreement_and_accuracy_change():
    result = export.compare([0.9, 0.2, 0.6, 0.4], [0.8, 0.3, 0.4, 0.4], [1, 0, 1, 1])
    assert result["agreement"] == 0.75 and result["disagreements"] == 1
    assert result["accuracy_torch"] == 0.75 and result["accuracy_onnx"] == 0.5
    assert result["accuracy_change"] == -0.25
    assert result["max_abs_prob_diff"] == pytest.approx(0.2)


def test_missing_graph_and_bad_folder_are_clear_errors(tmp_path):
    with pytest.raises(export.ExportError, match="not an ONNX export folder"):
        export.OnnxClassifier(tmp_path)
    with pytest.raises(SystemExit, match="nope: no config.json .*not a stage-2 run or classifier folder"):
        export.main([str(tmp_path / "nope"), "--onnx"])


def test_bench_script_reports_same_process_ratios(exported, shared_data, tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_onnx.py"
    spec = importlib.util.spec_from_file_location("bench_onnx", script)
    bench_onnx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_onnx)
    folder, out = exported
    assert bench_onnx.main([str(folder), "--export", str(out), "--reviews", "8", "--threads", "1", "--repeats", "1",
                            "--data-dir", str(shared_data), "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["variant"] for r in rows] == ["pytorch", "onnx fp32", "onnx int8 (graph-optimised)"]
    assert rows[0]["vs_pytorch"] == 1.0 and all(r["reviews_per_s"] > 0 for r in rows)

"""dapt-export for a 4-class model: K logits in the graph, the check over every class's probability,
on the run's own evaluation data (its config.yaml) or on ``--check-data``.

The run is tests/k_class_fixtures.py's tiny 4-class classifier; its config.yaml names the AG News
test split of the shared data as its evaluation set, as a real AG News run's does.
"""

from __future__ import annotations

import json

import pytest

from classify.release import export, export_check
from classify.data import LabelledSetConfig
from classify.model import infer_reviews, load_classifier, predict_proba
from tests.k_class_fixtures import AG_LABELS, TOY_TEXTS, make_k_run_dir

LABELS = list(AG_LABELS.values())
TEXTS = [TOY_TEXTS[label][3] for label in AG_LABELS] + ["the first people of the world made music " * 30]


@pytest.fixture(scope="module")
def k_exported(tmp_path_factory, tiny_headless_encoder_dir, shared_data):
    eval_data = {"ag_news_test": {"path": str(shared_data / "ag_news"), "split": "test", "text_column": "text",
                                  "label_column": "label"}, "unused": None}
    run_dir, _, _ = make_k_run_dir(tmp_path_factory.mktemp("k_export_run"), tiny_headless_encoder_dir, eval_data=eval_data,
                                   truncation="head+tail")
    out = tmp_path_factory.mktemp("k_onnx")
    assert export.main([str(run_dir), "--onnx", "--int8", "--out", str(out), "--check", "40"]) == 0
    return run_dir, out


@pytest.mark.slow  # one ONNX export with its int8 graph (~20-40 s on 2 loaded cores)
def test_k_class_graph_has_k_outputs_and_serves_every_class(k_exported):
    import onnxruntime

    run_dir, out = k_exported
    info = json.loads((out / export.EXPORT_INFO).read_text())
    assert info["labels"] == LABELS and info["outputs"] == {"logits": ["batch", 4]}
    assert export.graph_classes(out / export.FP32_FILE) == 4
    session = onnxruntime.InferenceSession(str(out / export.FP32_FILE), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape[-1] == 4
    classifier, tokenizer = load_classifier(run_dir)
    served = export.OnnxClassifier(out)
    expected = predict_proba(TEXTS, classifier, tokenizer, all_classes=True)
    got = served.predict_proba(TEXTS, all_classes=True)
    assert max(abs(a - b) for want, row in zip(expected, got) for a, b in zip(want, row)) < 1e-4
    assert [r[:2] for r in served.predict(TEXTS)] == [r[:2] for r in infer_reviews(TEXTS, classifier, tokenizer)]


@pytest.mark.slow
def test_k_class_check_reads_the_runs_evaluation_set_and_compares_all_classes(k_exported):
    _, out = k_exported
    report = json.loads((out / export.CHECK_FILE).read_text())
    assert report["n"] == 40 and report["labels"] == LABELS
    assert report["texts"].startswith("ag_news_test (") and "the run's first evaluation set" in report["texts"]
    fp32, int8 = report["variants"]["fp32"], report["variants"]["int8"]
    assert fp32["equivalent"] and fp32["agreement"] == 1.0 and fp32["max_abs_prob_diff"] < 1e-4
    assert int8["equivalent"] == (int8["agreement"] >= export.INT8_MIN_AGREEMENT)  # the int8 rule, as for two classes
    assert 0 < int8["max_abs_prob_diff"] < 1
    assert 0 <= fp32["accuracy_torch"] <= 1


@pytest.mark.slow
def test_check_data_flag_reads_a_file_with_label_names(k_exported, shared_data, tmp_path):
    import pyarrow.parquet as pq

    run_dir, out = k_exported
    table = pq.read_table(shared_data / "ag_news" / "test.parquet").slice(0, 200).to_pylist()
    path = tmp_path / "check.jsonl"
    path.write_text("".join(json.dumps({"body": row["text"], "topic": LABELS[row["label"]]}) + "\n" for row in table))
    check = LabelledSetConfig(path=str(path), split="test", text_column="body", label_column="topic")
    report = export.check_export(run_dir, out, 20, check_data=check)
    assert report["n"] == 20 and report["texts"] == f"{path} split test"
    assert report["variants"]["fp32"]["equivalent"]
    path.write_text(json.dumps({"body": "a text", "topic": "Weather"}) + "\n")
    with pytest.raises(export.ExportError, match=r"check data: .*check\.jsonl: column 'topic' row 0 is 'Weather': not one of"):
        export.check_export(run_dir, out, 20, check_data=check)


def test_compare_takes_every_class_and_two_class_floats():
    reference = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.4, 0.5, 0.1], [0.34, 0.33, 0.33]]
    candidate = [[0.6, 0.3, 0.1], [0.1, 0.6, 0.3], [0.4, 0.45, 0.15], [0.33, 0.34, 0.33]]
    result = export.compare(reference, candidate, [0, 2, 1, 0])
    assert result["agreement"] == 0.5 and result["disagreements"] == 2  # texts 2 and 4 change label
    assert result["accuracy_torch"] == 1.0 and result["accuracy_onnx"] == 0.5 and result["accuracy_change"] == -0.5
    assert result["max_abs_prob_diff"] == pytest.approx(0.3)  # text 2, classes 1 and 2
    assert result["mean_abs_prob_diff"] == pytest.approx((0.1 + 0.3 + 0.05 + 0.01) / 4)
    # two classes as P(class 1) floats: the same numbers as their [1 - p, p] rows
    floats = export.compare([0.9, 0.2], [0.8, 0.6], [1, 0])
    assert floats == export.compare([[0.1, 0.9], [0.8, 0.2]], [[0.2, 0.8], [0.4, 0.6]], [1, 0])


def test_check_data_is_named_where_it_cannot_be_found(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(export.ExportError, match=r"config\.yaml not found: --check on a classifier folder needs --check-data"):
        export_check.check_texts(tmp_path / "model", LABELS, 10)
    (tmp_path / "config.yaml").write_text("data:\n  eval:\n    gone: null\n")
    with pytest.raises(export.ExportError, match="data.eval names no evaluation set"):
        export_check.check_texts(tmp_path / "model", LABELS, 10)  # a run's model/ folder: the run's config.yaml
    (tmp_path / "config.yaml").write_text(f"data:\n  eval:\n    news: {{path: {tmp_path / 'missing'}, split: test}}\n")
    with pytest.raises(export.ExportError, match="check data: .*missing"):
        export_check.check_texts(tmp_path, LABELS, 10)
    with pytest.raises(SystemExit, match="--check-data needs --check N"):
        export.main([str(tmp_path), "--onnx", "--check-data", "x.jsonl"])

"""dapt-export --int8-calibrate N (classify/release/export_int8.py, issue 21 section 4): the calibration
slice is the run's validation reviews plus training-split reviews the model never trained on (never
test); the int8 graph keeps the chosen MatMuls in fp32 and quantises the rest; the choice is recorded
in export.json and the graph is checked and served like any int8 graph.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from accelerate import Accelerator

from classify.release import export_int8
from classify.config import ClassifyConfig
from classify.model import encode_reviews, load_tokenizer
from classify.train import get_dataloaders
from dapt.core.config import load_config, to_yaml

pytestmark = pytest.mark.slow  # reads IMDb train twice / exports a graph


def test_calibration_slice_is_validation_then_unused_training_reviews(tmp_path, shared_data, tiny_headless_encoder_dir):
    overrides = [f"output_dir={tmp_path}", f"model.encoder={tiny_headless_encoder_dir}",
                 f"data.train.path={shared_data / 'imdb'}", "data.train.max_samples=300", "data.validation_size=50",
                 "model.max_length=64", "model.head_tokens=16"]
    config = load_config(ClassifyConfig, "configs/demo/classify.yaml", overrides)
    (tmp_path / "config.yaml").write_text(to_yaml(config))
    texts, labels, described = export_int8.calibration_slice(tmp_path, 150)
    assert len(texts) == 150 and sorted(set(labels)) == [0, 1]
    assert described.startswith("50 validation reviews + 100 unused reviews of stanfordnlp/imdb split train")
    # what stage 2 itself holds out and trains on, from its own code
    tokenizer = load_tokenizer(tiny_headless_encoder_dir)
    train_loader, _, _, _, validation, _ = get_dataloaders(config, tokenizer, Accelerator(cpu=True))
    assert texts[:50] == validation.texts and labels[:50] == validation.labels
    trained = {tuple(ids) for ids in train_loader.dataset.ids}
    assert len(trained) > 250
    encoded = encode_reviews(tokenizer, texts[50:], 64, "head+tail", 16)
    assert not trained & {tuple(ids) for ids in encoded}  # none of the top-up was trained on
    # every text is a training-split review (IMDb's test split repeats a few of them verbatim)
    train_texts = set(pq.read_table(shared_data / "imdb" / "train.parquet", columns=["text"]).column("text").to_pylist())
    assert set(texts) <= train_texts


def _run_with_config(tmp_path, shared_data, encoder_dir):
    from tests.test_model import make_run_dir

    run_dir, _, _ = make_run_dir(tmp_path / "run", encoder_dir, truncation="head+tail", max_length=64)
    overrides = [f"output_dir={run_dir}", f"model.encoder={encoder_dir}", f"data.train.path={shared_data / 'imdb'}",
                 "data.train.max_samples=300", "data.validation_size=20", "model.max_length=64", "model.head_tokens=16"]
    (run_dir / "config.yaml").write_text(to_yaml(load_config(ClassifyConfig, "configs/demo/classify.yaml", overrides)))
    return run_dir


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, shared_data, tiny_headless_encoder_dir):
    """(run dir, export folder, what the CLI printed) of one ``dapt-export --int8-calibrate 30 --check 20``."""
    pytest.importorskip("onnxruntime")
    import contextlib
    import io

    from classify.release import export

    tmp_path = tmp_path_factory.mktemp("calibrated")
    run_dir = _run_with_config(tmp_path, shared_data, tiny_headless_encoder_dir)
    out, printed = tmp_path / "onnx", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert export.main([str(run_dir), "--onnx", "--int8-calibrate", "30", "--check", "20", "--data-dir",
                            str(shared_data), "--out", str(out)]) == 0
    return run_dir, out, printed.getvalue()


def test_int8_calibrate_keeps_the_chosen_matmuls_fp32_and_is_checked_like_int8(calibrated):
    import onnx

    from classify.release import export
    from classify.release.export_check import INT8_MIN_AGREEMENT

    _, out, printed = calibrated
    info = json.loads((out / export.EXPORT_INFO).read_text())
    calibration, kept = info["int8"]["calibration"], info["int8"]["fp32_matmuls"]
    assert calibration["texts"] == "20 validation reviews + 10 unused reviews of stanfordnlp/imdb split train"
    ranked = calibration["sensitivity"]  # every weight MatMul of the 2-layer encoder, most sensitive first
    assert ranked == sorted(ranked, key=lambda r: (r["mean_abs_prob_diff"], r["flips"]), reverse=True)
    roles = sorted(row["role"] for row in ranked)
    assert roles == sorted(f"layer {layer} {role}" for layer in range(2)
                           for role in ["attention Q/K/V"] * 3 + ["attention output", "FFN in", "FFN out"])
    assert kept == [row["node"] for row in ranked[:len(kept)]] == [row["node"] for row in calibration["fp32_matmuls"]]
    steps = calibration["greedy"]
    assert [step["fp32"] for step in steps] == list(range(len(kept) + 1))
    assert all(step["agreement"] < INT8_MIN_AGREEMENT for step in steps[:-1])  # stopped at the first that passed
    assert steps[-1]["agreement"] >= INT8_MIN_AGREEMENT or len(kept) == len(ranked) // 2
    fp32_matmuls = {n.name for n in onnx.load(str(out / export.INT8_FILE)).graph.node if n.op_type == "MatMul"}
    assert set(kept) <= fp32_matmuls and not {row["node"] for row in ranked[len(kept):]} & fp32_matmuls
    assert f"int8 keeps {len(kept)} MatMuls fp32" in printed and "labels agree" in printed
    report = json.loads((out / export.CHECK_FILE).read_text())  # checked as any int8 graph: its bytes, its verdict
    int8 = report["variants"]["int8"]
    assert int8["file"] == export.INT8_FILE and int8["equivalent"] == (int8["agreement"] >= INT8_MIN_AGREEMENT)
    if not int8["equivalent"]:
        with pytest.raises(export.ExportError, match="not equivalent"):
            export.OnnxClassifier(out, int8=True)
    with pytest.raises(ValueError, match="allow_unverified=True"):  # another graph file is never served checked
        export.OnnxClassifier(out, graph=out / export.INT8_FILE)


def test_int8_calibrate_needs_the_runs_training_data_and_says_so_before_writing(calibrated, tmp_path):
    import shutil

    from classify.release import export

    run_dir, _, _ = calibrated
    model_only = shutil.copytree(run_dir / "model", tmp_path / "classifier")  # a classifier folder: no config.yaml
    with pytest.raises(SystemExit, match=r"config\.yaml not found: --int8-calibrate needs a stage-2 run folder"):
        export.main([str(model_only), "--onnx", "--int8-calibrate", "20", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    broken = tmp_path / "run"
    shutil.copytree(run_dir / "model", broken / "model")
    (broken / "config.yaml").write_text("data: [1, 2]\n")
    with pytest.raises(SystemExit, match=r"dapt-export: error: calibration data \(.*config\.yaml\): "):
        export.main([str(broken), "--onnx", "--int8-calibrate", "20", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()

"""scripts/int8_sensitivity.py (issue 21, section 4): its calibration slice is the run's validation
reviews plus training-split reviews the model never trained on (never test), and its graphs keep the
excluded MatMuls in fp32 while quantising the rest.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from accelerate import Accelerator

from classify.config import ClassifyConfig
from classify.model import encode_reviews, load_tokenizer
from classify.train import get_dataloaders
from dapt.core.config import load_config, to_yaml
from scripts import int8_sensitivity

pytestmark = pytest.mark.slow  # reads IMDb train twice / exports a graph


def test_calibration_slice_is_validation_then_unused_training_reviews(tmp_path, shared_data, tiny_headless_encoder_dir):
    overrides = [f"output_dir={tmp_path}", f"model.encoder={tiny_headless_encoder_dir}",
                 f"data.train.path={shared_data / 'imdb'}", "data.train.max_samples=300", "data.validation_size=50",
                 "model.max_length=64", "model.head_tokens=16"]
    config = load_config(ClassifyConfig, "configs/demo/classify.yaml", overrides)
    (tmp_path / "config.yaml").write_text(to_yaml(config))
    texts, labels, described = int8_sensitivity.calibration_slice(tmp_path, 150)
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


def test_selective_graph_keeps_the_excluded_matmuls_fp32(tmp_path, tiny_headless_encoder_dir):
    pytest.importorskip("onnxruntime")
    import onnx

    from classify import export
    from classify.model import load_classifier
    from tests.test_model import make_run_dir

    run_dir, _, _ = make_run_dir(tmp_path / "run", tiny_headless_encoder_dir, truncation="head+tail", max_length=64)
    export.export_onnx(run_dir, tmp_path / "onnx")
    classifier, _ = load_classifier(run_dir / "model")
    optimized = int8_sensitivity.optimized_fp32(tmp_path / "onnx", classifier, tmp_path)
    nodes = int8_sensitivity.weight_matmuls(optimized)
    layers = classifier.encoder.config.num_hidden_layers
    roles = int8_sensitivity.matmul_roles(optimized)
    assert len(nodes) == 6 * layers and set(roles) == set(nodes)
    assert sorted(set(r.split(" ", 2)[2] for r in roles.values())) == ["FFN in", "FFN out", "attention Q/K/V",
                                                                       "attention output"]
    assert roles[nodes[-1]] == f"layer {layers - 1} FFN out"
    excluded = [n for n in nodes if roles[n].endswith("FFN out")]
    graph = onnx.load(str(int8_sensitivity.quantize(optimized, tmp_path / "selective.onnx", exclude=excluded))).graph
    still_fp32 = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert set(excluded) <= still_fp32 and not (set(nodes) - set(excluded)) & still_fp32
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node)

"""``report_to``: any tracker Accelerate supports, for both stages - TensorBoard and MLflow (a local
store, offline) tested; an unknown or uninstalled tracker is an error before anything is written."""

from __future__ import annotations

import pytest

from dapt.core.config import ConfigError, load_config
from tests.test_pretrain import tiny_overrides, write_corpus


def test_stage1_reports_to_tensorboard_and_mlflow(tmp_path, tiny_encoder_dir, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from dapt.pretrain import PretrainConfig, pretrain

    store = (tmp_path / "mlruns").as_uri()  # a local file store: no server, no network
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow-skinny has no SQL store
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_encoder_dir, write_corpus(tmp_path / "c.jsonl", 40), out,
                               **{"train.max_steps": 3, "report_to": "[tensorboard, mlflow]", "run_name": "tracked"})
    summary = pretrain(load_config(PretrainConfig, None, overrides))

    assert list((out / "tb").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    [experiment] = [e for e in client.search_experiments() if e.name == "tracked"]
    [run] = client.search_runs([experiment.experiment_id])
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3]
    final = client.get_metric_history(run.info.run_id, "perplexity")
    assert final and final[-1].value == pytest.approx(summary["perplexity_after"], rel=1e-6)


def test_stage2_reports_to_mlflow(tmp_path, tiny_headless_encoder_dir, shared_data, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from classify.train import train_classifier
    from tests.test_classify_train import tiny_config

    store = (tmp_path / "mlruns").as_uri()  # a local file store: no server, no network
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow-skinny has no SQL store
    config = tiny_config(tiny_headless_encoder_dir, shared_data, tmp_path / "run", "train.epochs=1",
                         "report_to=[mlflow]", "run_name=tracked-classifier")
    train_classifier(config)
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    [experiment] = [e for e in client.search_experiments() if e.name == "tracked-classifier"]
    [run] = client.search_runs([experiment.experiment_id])
    assert client.get_metric_history(run.info.run_id, "loss")


@pytest.mark.parametrize("name, message", [
    ("nosuchtracker", "unknown tracker 'nosuchtracker'; Accelerate supports"),
    ("comet_ml", "tracker 'comet_ml' is not installed (pip install comet_ml)"),
])
def test_unknown_or_missing_tracker_fails_before_writing(tmp_path, tiny_encoder_dir, name, message):
    import importlib.util

    from dapt.pretrain import PretrainConfig, pretrain

    if name == "comet_ml" and importlib.util.find_spec("comet_ml"):
        pytest.skip("comet_ml is installed here")
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_encoder_dir, write_corpus(tmp_path / "c.jsonl", 20), out, report_to=f"[{name}]")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pretrain(load_config(PretrainConfig, None, overrides))
    assert not out.exists() or not any(out.iterdir())

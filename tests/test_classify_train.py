"""Stage-2 training loop on a tiny random encoder and real IMDb/SST-2 rows: optimizer groups and
schedule, exact resume, best-epoch restore, early stopping, outputs, repeated runs, evaluate CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from classify import train as train_module
from classify.config import ClassifyConfig
from classify.train import format_epoch_line, train_classifier
from dapt.core.config import ConfigError, load_config
from dapt.core.runtime import forget_accelerate_state

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(encoder_dir, data_dir, output_dir, *overrides) -> ClassifyConfig:
    """A few seconds of training: 64 IMDb train rows, 16 validation rows, small eval subsets."""
    base = [
        f"output_dir={output_dir}", f"model.encoder={encoder_dir}", "model.max_length=64", "model.dropout=0.1",
        f"data.train.path={data_dir}/imdb", "data.train.max_samples=64", "data.validation_size=16",
        f"data.eval.imdb_test.path={data_dir}/imdb", "data.eval.imdb_test.max_samples=40",
        f"data.eval.sst2_validation.path={data_dir}/sst2", "data.eval.sst2_validation.max_samples=24",
        "data.bucket_batches=2", "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=16",
        "train.encoder_lr=1e-3", "train.head_lr=5e-3", "train.min_lr=1e-5", "train.warmup_ratio=0.25",
        "train.log_every=1", 'impl.mixed_precision="no"', "impl.dataloader_workers=0", "checkpoint.keep=20",
    ]
    return load_config(ClassifyConfig, None, base + list(overrides))


@pytest.fixture(scope="module")
def baseline_run(tiny_headless_encoder_dir, shared_data, tmp_path_factory):
    """One uninterrupted 2-epoch run with a checkpoint every 3 steps; several tests read it."""
    out = tmp_path_factory.mktemp("classify_run")
    config = tiny_config(tiny_headless_encoder_dir, shared_data, out, "checkpoint.every_steps=3")
    return out, config, train_classifier(config)


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_outputs_and_results_schema(baseline_run):
    out, config, results = baseline_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert set(results) == {"run_name", "created", "base_model", "dapt", "leakage", "task", "data", "hyperparameters", "training", "evaluation",
                            "plots"}
    assert results["task"] == {"num_labels": 2, "labels": ["Negative", "Positive"],
                               "labels_from": "the binary default (0 = Negative, 1 = Positive)"}
    assert results["data"]["train"] == {"dataset": f"{config.data.train.path}", "split": "train", "rows": 25_000, "train": 64,
                                        "validation": 16, "dropped_empty": 0}
    assert set(results["hyperparameters"]) == {
        "encoder_lr", "head_lr", "min_lr", "warmup_ratio", "schedule", "epochs", "batch_size", "grad_accum",
        "weight_decay", "mixed_precision", "max_length", "truncation", "head_tokens", "window_stride", "dropout", "seed", "num_processes",
    }
    training = results["training"]
    assert [e["epoch"] for e in training["epochs"]] == [1, 2]
    assert set(training["epochs"][0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "val_macro_f1",
                                          "val_roc_auc"}
    assert training["best_metric"] == "val_acc" and training["best_epoch"] in (1, 2)
    assert training["train_samples_per_s"] > 0 and training["wall_time_s"] > 0
    imdb, sst2 = results["evaluation"]["imdb_test"], results["evaluation"]["sst2_validation"]
    assert imdb["split"] == "test" and imdb["n"] == 40 and imdb["subset_of"] == 25_000
    assert sst2["split"] == "validation" and sst2["n"] == 24 and sst2["subset_of"] == 872
    assert {"accuracy", "f1", "precision", "recall", "roc_auc", "loss"} <= set(imdb)
    assert results["dapt"] is None  # the tiny encoder dir has no dapt_summary.json
    examples = json.loads((out / "examples.json").read_text())["examples"]
    assert 1 <= len(examples) <= 4 and {e["label"] for e in examples} <= {"Negative", "Positive"}
    assert all(0 < len(e["text"]) <= 400 and e["set"] == "validation" for e in examples)
    for name in ("model/model.safetensors", "model/config.json", "model/tokenizer.json", "config.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert sorted(results["plots"]) == [
        "plots/confusion_imdb_test.png", "plots/confusion_sst2_validation.png",
        "plots/reliability_imdb_test.png", "plots/reliability_sst2_validation.png",
        "plots/roc_imdb_test.png", "plots/roc_sst2_validation.png", "plots/training_curves.png",
    ]
    assert all((out / p).stat().st_size > 1000 for p in results["plots"])
    import numpy as np

    for name, block in results["evaluation"].items():  # per-row predictions for paired comparisons
        with np.load(out / "predictions" / f"{name}.npz") as saved:
            assert len(saved["label"]) == block["n"]
            assert np.mean(saved["pred"] == saved["label"]) == pytest.approx(block["accuracy"], abs=1e-12)
            assert np.mean(saved["loss"], dtype=np.float64) == pytest.approx(block["loss"], rel=1e-6)  # stored as float32 per row
    from classify.model import load_classifier

    classifier, _ = load_classifier(out)  # the stage-2 dir loads as a classifier
    assert classifier.settings["max_length"] == 64


def test_parameter_groups_and_schedule_observed_during_training(baseline_run):
    out, config, results = baseline_run
    steps = [m for m in _metrics(out) if "lr_encoder" in m]
    total = 2 * math.ceil(64 / 8)  # max_samples=64 training rows, taken after the validation split
    assert [m["step"] for m in steps] == list(range(1, total + 1))
    warmup = round(0.25 * total)
    for name, base in (("encoder", 1e-3), ("head", 5e-3)):
        for suffix in ("", "_no_decay"):
            lrs = [m[f"lr_{name}{suffix}"] for m in steps]
            floor = 1e-5 / base
            expected = [
                base * ((s + 1) / (warmup + 1) if s < warmup else max(floor, 1 - (s - warmup) / (total - warmup) * (1 - floor)))
                for s in range(total)  # the LR of update s+1 is the schedule's value after s steps
            ]
            assert lrs == pytest.approx(expected, rel=1e-9), (name, suffix)
            assert max(lrs) == pytest.approx(base) and lrs.index(max(lrs)) == warmup  # peak after warmup
            assert all(a > b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))  # then strictly decaying...
            # ...on a line that reaches min_lr at the last step
            assert lrs[-1] - (lrs[-2] - lrs[-1]) == pytest.approx(1e-5, rel=1e-6)


def test_optimizer_groups_hold_the_right_parameters(tiny_headless_encoder_dir):
    from classify.encoder import from_encoder
    from classify.config import TrainConfig
    from classify.train import classifier_parameter_groups

    model = from_encoder(tiny_headless_encoder_dir)
    groups = {g["name"]: g for g in classifier_parameter_groups(model, TrainConfig(encoder_lr=1e-5, head_lr=5e-5, weight_decay=0.01))}
    assert set(groups) == {"encoder", "encoder_no_decay", "head", "head_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in groups["head"]["params"]] == ["classifier.weight"]
    assert [names[id(p)] for p in groups["head_no_decay"]["params"]] == ["classifier.bias"]
    assert all(names[id(p)].startswith("encoder.") for p in groups["encoder"]["params"] + groups["encoder_no_decay"]["params"])
    assert all(names[id(p)].endswith(("bias", "LayerNorm.weight")) for p in groups["encoder_no_decay"]["params"])
    assert (groups["encoder"]["lr"], groups["head"]["lr"]) == (1e-5, 5e-5)
    assert groups["encoder"]["weight_decay"] == 0.01 and groups["encoder_no_decay"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_resume_mid_epoch_gives_identical_weights(baseline_run, tmp_path):
    out, config, results = baseline_run
    # step 3 is inside epoch 1 (8 batches per epoch): the resumed run skips 3 batches of the same order
    checkpoint = out / "checkpoints" / "step_00000003"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["batch_in_epoch"] == 3
    resumed_out = tmp_path / "resumed"
    import shutil

    shutil.copytree(checkpoint, resumed_out / "checkpoints" / checkpoint.name)
    config = tiny_config(config.model.encoder, Path(config.data.train.path).parent, resumed_out,
                         "checkpoint.every_steps=3", "checkpoint.resume=latest")
    resumed = train_classifier(config)
    a, b = load_file(str(out / "model" / "model.safetensors")), load_file(str(resumed_out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["training"]["epochs"] == results["training"]["epochs"]
    assert resumed["evaluation"] == results["evaluation"]


def test_epoch_line_format(baseline_run, capsys):
    record = {"epoch": 2, "train_loss": 0.17444, "train_acc": 0.93412, "val_loss": 0.19861, "val_acc": 0.922}
    assert format_epoch_line(record) == "Epoch 2: Train Loss 0.1744, Train Acc 0.9341 | Val Loss 0.1986, Val Acc 0.9220"


def test_best_epoch_restored_and_early_stopping(tiny_headless_encoder_dir, shared_data, tmp_path, monkeypatch, capsys):
    """Validation accuracy scripted to 0.6, 0.8, 0.7, 0.65: epoch 2 is best, patience 2 stops after
    epoch 4 of 6, and the saved model is epoch 2's, not the last one's."""
    scripted = iter([0.6, 0.8, 0.7, 0.65, 0.9, 0.9])
    real = train_module.compute_metrics

    def fake(*args):
        return {**real(*args), "accuracy": next(scripted)}

    monkeypatch.setattr(train_module, "compute_metrics", fake)
    config = tiny_config(tiny_headless_encoder_dir, shared_data, tmp_path, "train.epochs=6", "train.early_stopping_patience=2")
    results = train_classifier(config)
    training = results["training"]
    assert [e["val_acc"] for e in training["epochs"]] == [0.6, 0.8, 0.7, 0.65]
    assert training["stopped_early"] is True and training["best_epoch"] == 2 and training["best_value"] == 0.8
    printed = capsys.readouterr().out
    assert "Epoch 4: Train Loss " in printed and "Epoch 5" not in printed
    import re

    assert re.search(r"^Epoch 1: Train Loss \d\.\d{4}, Train Acc \d\.\d{4} \| Val Loss \d\.\d{4}, Val Acc 0\.6000$", printed, re.M)
    final = load_file(str(tmp_path / "model" / "model.safetensors"))
    best = load_file(str(tmp_path / "checkpoints" / "best" / "model.safetensors"))
    last = load_file(str(sorted((tmp_path / "checkpoints").glob("step_*"))[-1] / "model.safetensors"))
    assert all(torch.equal(final[k], best[k]) for k in final)
    assert not all(torch.equal(final[k], last[k].to(final[k].dtype)) for k in final if k in last)


def test_the_best_epochs_weights_are_verified_before_they_are_restored(tiny_headless_encoder_dir, shared_data, tmp_path,
                                                                        monkeypatch, caplog):
    """Issue 20: the best epoch is saved by the checkpoint manager (complete or absent, its hash
    recorded); damaged weights are refused with a warning and the last epoch's are kept."""
    import logging

    from dapt.core.checkpoint import CheckpointManager

    scripted = iter([0.8, 0.6])  # epoch 1 is the best: its weights would be restored
    real = train_module.compute_metrics
    monkeypatch.setattr(train_module, "compute_metrics", lambda *args: {**real(*args), "accuracy": next(scripted)})
    save = CheckpointManager.save_weights

    def save_then_damage(self, name, info):
        folder = save(self, name, info)
        assert json.loads((folder / "weights.json").read_text())["epoch"] == info["epoch"] == 1
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[-5] ^= 0x10  # one bit of the last tensor
        (folder / "model.safetensors").write_bytes(bytes(data))
        return folder

    monkeypatch.setattr(CheckpointManager, "save_weights", save_then_damage)
    with caplog.at_level(logging.WARNING):
        results = train_classifier(tiny_config(tiny_headless_encoder_dir, shared_data, tmp_path))
    assert results["training"]["best_epoch"] == 1
    assert "model.safetensors does not match" in caplog.text and "keeping the last epoch's weights" in caplog.text
    final = load_file(str(tmp_path / "model" / "model.safetensors"))
    last = load_file(str(sorted((tmp_path / "checkpoints").glob("step_*"))[-1] / "model.safetensors"))
    assert all(torch.equal(final[k], last[k].to(final[k].dtype)) for k in final if k in last)


def test_best_by_val_loss_is_minimised():
    from classify.train import is_better

    assert is_better(0.3, 0.4, "val_loss") and not is_better(0.5, 0.4, "val_loss")
    assert is_better(0.9, 0.8, "val_acc") and not is_better(0.8, 0.8, "val_acc")
    assert is_better(0.1, None, "val_f1") and not is_better(None, 0.5, "val_roc_auc")


def test_repeated_runs_in_one_process_and_evaluate_cli(baseline_run, tiny_headless_encoder_dir, shared_data, tmp_path, capsys):
    """A second run with another precision in the same (test) process, then the evaluate-only CLI
    reproduces the training run's final metrics from the saved model."""
    out, config, results = baseline_run
    second = train_classifier(tiny_config(tiny_headless_encoder_dir, shared_data, tmp_path / "bf16", 'impl.mixed_precision="bf16"', "train.epochs=1"))
    assert second["hyperparameters"]["mixed_precision"] == "bf16"
    from classify.evaluate import main as evaluate_main

    forget_accelerate_state()  # evaluation in fp32 after a bf16 run: as a new process would start

    overrides = [f"data.eval.imdb_test.path={shared_data}/imdb", "data.eval.imdb_test.max_samples=40",
                 f"data.eval.sst2_validation.path={shared_data}/sst2", "data.eval.sst2_validation.max_samples=24",
                 "train.eval_batch_size=16", 'impl.mixed_precision="no"', "impl.dataloader_workers=0"]
    evaluate_main(["--model", str(out), "--output-dir", str(tmp_path / "eval"), *overrides])
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["evaluation"] == results["evaluation"]
    assert (tmp_path / "eval" / "plots" / "roc_imdb_test.png").is_file()
    assert "imdb_test: accuracy" in capsys.readouterr().out


def test_configs_load_and_override(tmp_path):
    for name in ("configs/classify.yaml", "configs/classify-minilm.yaml", "configs/demo/classify.yaml"):
        config = load_config(ClassifyConfig, ROOT / name, [f"output_dir={tmp_path}"])
        assert config.output_dir == str(tmp_path)
        assert set(config.data.eval) == {"imdb_test", "sst2_validation"}
    real = load_config(ClassifyConfig, ROOT / "configs/classify.yaml")
    assert (real.train.batch_size, real.train.epochs, real.train.encoder_lr, real.train.head_lr) == (64, 3, 1e-5, 5e-5)
    assert (real.train.warmup_ratio, real.train.min_lr, real.impl.mixed_precision, real.model.max_length) == (0.1, 1e-8, "bf16", 512)
    assert real.data.train.path == "stanfordnlp/imdb" and real.data.eval["sst2_validation"].text_column == "sentence"
    minilm = load_config(ClassifyConfig, ROOT / "configs/classify-minilm.yaml")
    assert (minilm.train.encoder_lr, minilm.train.head_lr, minilm.model.truncation) == (5e-5, 5e-4, "head+tail")
    demo = load_config(ClassifyConfig, ROOT / "configs/demo/classify.yaml")
    assert demo.impl.mixed_precision == "no" and Path(demo.data.train.path).name == "imdb"
    with pytest.raises(ConfigError, match="train.encoder_lrr"):
        load_config(ClassifyConfig, None, ["train.encoder_lrr=1"])
    with pytest.raises(ConfigError, match="model.truncation"):
        load_config(ClassifyConfig, None, ["model.truncation=tail"])
    with pytest.raises(ConfigError, match="train.best_metric"):
        load_config(ClassifyConfig, None, ["train.best_metric=accuracy"])
    dropped = load_config(ClassifyConfig, None, ["data.eval.sst2_validation=null"])
    assert dropped.data.eval["sst2_validation"] is None


def test_missing_or_unfinished_encoder_is_a_clear_error(tmp_path, shared_data):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("interrupted stage 1\n")
    for encoder, message in ((tmp_path / "nope", "not found"), (tmp_path / "half", "no config.json")):
        with pytest.raises(FileNotFoundError, match=message):
            train_classifier(tiny_config(encoder, shared_data, tmp_path / "out"))

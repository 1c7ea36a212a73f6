"""The DAPT ablation in one command: the same classifier on the plain and on the adapted encoder.

    dapt-ablate --config configs/ablate/minilm.yaml [key=value ...]
    accelerate launch classify/ablate.py --config configs/ablate/minilm.yaml seeds=[0,1,2,3,4]
    python -m classify.ablate --config configs/ablate/demo.yaml          # CPU, a few minutes

Reads top to bottom: config -> stage 1 (``dapt.pretrain.pretrain``), or an existing stage-1 output
reused as is -> for every arm and seed, stage 2 (``classify.train.train_classifier``) with the same
data, hyperparameters and seed, only the encoder and the arm's own overrides differing -> the
per-example test predictions of each run -> statistics -> ``ablation.json``, ``ablation.md``,
``ablation.png`` (bars with error bars) and ``convergence.png`` (validation accuracy per epoch).

An *arm* is a name, an encoder (``plain``: the base encoder; ``dapt``: stage 1's output; or any
encoder path or Hub id) and stage-2 ``key=value`` overrides (``model.truncation=head+tail``). An arm
with ``dapt_overrides`` (``train.epochs=1``) gets its own stage-1 run. Every arm is compared with
the ``baseline`` arm (the first by default), metric by metric and dataset by dataset, two ways:

* **paired by seed** (``paired_t``): d_s = arm - baseline for seed s, a Student-t interval
  mean(d) +- t(n-1) sd(d) / sqrt(n). It covers the variation between training runs (seed: head
  initialisation, dropout, data order, validation split) but, with 3 seeds, it is wide.
* **paired bootstrap over test examples** (``bootstrap``): the test examples are resampled with
  replacement (the same resample for both arms and, when the seeds share the test set, for every
  seed), the metric difference is averaged over seeds, and the percentile interval is reported. It
  covers the finite test set, not the variation between training runs.

Runs live in ``OUTPUT/runs/ARM/seed_S`` (a complete stage-2 output each, plus
``predictions/NAME.npz``); a finished run whose ``config.yaml`` matches is read back rather than
retrained (``reuse_runs``), so an interrupted ablation continues where it stopped and a finished one
re-renders its report in seconds. Under ``accelerate launch`` every process runs both stages; only
the main process writes the report.
"""

from __future__ import annotations

import gc
import json
import math
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a file: `accelerate launch classify/ablate.py`
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # classify/ itself: its model.py / data.py / evaluate.py must not shadow other imports
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from omegaconf import MISSING

from classify.plots import save_figure
from dapt.config import ConfigError, load_config, parse_cli, to_dict, to_yaml
from dapt.runtime import logger, raise_config

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc")
METRIC_TITLES = {"accuracy": "accuracy", "f1": "F1", "precision": "precision", "recall": "recall", "roc_auc": "ROC AUC"}
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
PREDICTIONS_DIR = "predictions"  # RUN/predictions/NAME.npz: prob, pred, label, loss in dataset order


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class StageConfig:
    config: Optional[str] = None  # the stage's YAML (relative to the working directory or the repo)
    overrides: List[str] = field(default_factory=list)  # key=value, applied after the YAML


@dataclass
class DaptStageConfig(StageConfig):
    # an existing stage-1 output directory: used as is when it holds a finished encoder
    # (dapt_summary.json), otherwise stage 1 runs and writes there; null: OUTPUT/dapt
    reuse_dir: Optional[str] = None


@dataclass
class ArmConfig:
    name: str = MISSING  # also the run folder: OUTPUT/runs/NAME/seed_S
    encoder: str = "plain"  # plain | dapt | an encoder directory or Hub id
    overrides: List[str] = field(default_factory=list)  # stage-2 key=value for this arm only
    dapt_overrides: List[str] = field(default_factory=list)  # stage-1 key=value: this arm's own DAPT run


@dataclass
class BootstrapConfig:
    samples: int = 1000  # resamples of the test examples; 0: no bootstrap
    seed: int = 0


def _default_arms() -> list:
    return [
        ArmConfig(name="plain", encoder="plain", overrides=["model.truncation=head"]),
        ArmConfig(name="dapt", encoder="dapt", overrides=["model.truncation=head"]),
        ArmConfig(name="dapt-head+tail", encoder="dapt", overrides=["model.truncation=head+tail"]),
    ]


@dataclass
class AblationConfig:
    output_dir: str = "runs/ablate"
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # stage-2 train.seed, the same for every arm
    # where the plain arm and stage 1 both start; null: stage 1's model.name_or_path
    base_encoder: Optional[str] = None
    baseline: Optional[str] = None  # the arm the others are compared with; null: the first arm
    metrics: List[str] = field(default_factory=lambda: ["accuracy", "f1", "roc_auc"])
    confidence: float = 0.95  # of both intervals
    reuse_runs: bool = True  # read back a finished run with the same config.yaml instead of retraining
    keep_checkpoints: bool = False  # false: delete RUN/checkpoints once a run has finished
    dapt: DaptStageConfig = field(default_factory=lambda: DaptStageConfig(config="configs/pretrain.yaml"))
    classify: StageConfig = field(default_factory=lambda: StageConfig(config="configs/classify.yaml"))
    arms: List[ArmConfig] = field(default_factory=_default_arms)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def validate(self) -> None:
        if not self.seeds:
            raise_config("seeds", self.seeds, "a non-empty list of integers")
        if len(set(self.seeds)) != len(self.seeds):
            raise_config("seeds", self.seeds, "distinct seeds")
        if not self.arms:
            raise_config("arms", self.arms, "at least one arm")
        names = [arm.name for arm in self.arms]
        for index, arm in enumerate(self.arms):
            if not ARM_NAME.fullmatch(arm.name):
                raise_config(f"arms.{index}.name", arm.name, "letters, digits and . _ + - (it names a folder)")
            if arm.name in names[:index]:
                raise_config(f"arms.{index}.name", arm.name, "a name no other arm has")
            if arm.dapt_overrides and arm.encoder != "dapt":
                raise_config(f"arms.{index}.dapt_overrides", arm.dapt_overrides, "none unless encoder is dapt")
            if arm.encoder == "dapt" and not self.dapt.config and not (self.dapt.reuse_dir and not arm.dapt_overrides):
                raise_config("dapt.config", self.dapt.config, f"a stage-1 config (arm {arm.name!r} needs a DAPT encoder)")
        if self.baseline is not None and self.baseline not in names:
            raise_config("baseline", self.baseline, "the name of an arm: " + ", ".join(names))
        for index, metric in enumerate(self.metrics):
            if metric not in BOOTSTRAP_METRICS:
                raise_config(f"metrics.{index}", metric, " | ".join(BOOTSTRAP_METRICS))
        if not 0 < self.confidence < 1:
            raise_config("confidence", self.confidence, "a probability in (0, 1)")
        if self.bootstrap.samples < 0:
            raise_config("bootstrap.samples", self.bootstrap.samples, "a count >= 0")

    @property
    def baseline_arm(self) -> str:
        return self.baseline or self.arms[0].name


def _config_path(path: Optional[str]) -> Optional[Path]:
    """A stage YAML as given, or relative to the repository when the working directory lacks it."""
    if path is None:
        return None
    given = Path(path)
    return given if given.is_file() or given.is_absolute() or not (ROOT / given).is_file() else ROOT / given


# --------------------------------------------------------------------------------------------
# Statistics (pure functions of numbers; unit-tested on known inputs)


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t critical value: P(|T_df| <= q) = confidence."""
    from scipy.stats import t  # scipy comes with scikit-learn

    return float(t.ppf(0.5 + confidence / 2, df))


def summarize(values: Sequence[Optional[float]]) -> dict:
    """Mean and sample standard deviation (ddof 1; null for one value) of the non-null values."""
    kept = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if kept.size == 0:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    return {
        "mean": float(kept.mean()), "std": float(kept.std(ddof=1)) if kept.size > 1 else None,
        "n": int(kept.size), "values": list(values),
    }


def paired_t_interval(differences: Sequence[float], confidence: float = 0.95) -> dict:
    """mean(d) +- t_{n-1} sd(d) / sqrt(n) for paired differences d (one per seed); no interval for
    fewer than two pairs."""
    d = np.asarray(differences, dtype=np.float64)
    n = int(d.size)
    result = {"mean": float(d.mean()) if n else None, "std": None, "n": n, "df": n - 1 if n > 1 else None,
              "t": None, "low": None, "high": None, "confidence": confidence}
    if n < 2:
        return result
    sd = float(d.std(ddof=1))
    q = t_quantile(confidence, n - 1)
    half = q * sd / math.sqrt(n)
    result.update(std=sd, t=q, low=result["mean"] - half, high=result["mean"] + half)
    return result


def resampled_metric(metric: str, label: np.ndarray, pred: np.ndarray, prob: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``metric`` on every resample: ``index`` is (resamples, n) row indices; returns (resamples,).

    Same definitions as :func:`classify.evaluate.compute_metrics` (scikit-learn): F1, precision and
    recall of the positive class with 0 for an empty denominator; ROC AUC as the Mann-Whitney
    statistic with average ranks for ties (exactly sklearn's value), NaN when a class is absent."""
    y = label[index].astype(bool)
    if metric == "accuracy":
        return (pred[index] == label[index]).mean(axis=1)
    if metric == "roc_auc":
        from scipy.stats import rankdata

        ranks = rankdata(prob[index], axis=1)
        positives = y.sum(axis=1).astype(np.float64)
        negatives = y.shape[1] - positives
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = ((ranks * y).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)
        return np.where((positives > 0) & (negatives > 0), auc, np.nan)
    p = pred[index].astype(bool)
    tp = (p & y).sum(axis=1).astype(np.float64)
    fp = (p & ~y).sum(axis=1)
    fn = (~p & y).sum(axis=1)
    denominator = {"precision": tp + fp, "recall": tp + fn, "f1": 2 * tp + fp + fn}[metric]
    numerator = 2 * tp if metric == "f1" else tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 0.0)


def bootstrap_indices(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(samples, n), dtype=np.int64 if n > 2**31 - 1 else np.int32)


def paired_bootstrap(pairs: Sequence[tuple], metric: str, indices: Sequence[np.ndarray], confidence: float = 0.95,
                     chunk: int = 200) -> dict:
    """Difference in ``metric`` (arm - baseline), averaged over seeds, with a percentile interval.

    ``pairs``: per seed, ``(baseline, arm)`` predictions (objects with ``label``, ``pred``,
    ``prob``) on the same examples; ``indices``: per seed, the (resamples, n) resampled rows, used
    for both arms. ``observed`` is the difference on the full test sets."""
    diffs, observed = None, []
    for (base, arm), index in zip(pairs, indices):
        if not np.array_equal(base.label, arm.label):
            raise ValueError("paired bootstrap: the two arms were evaluated on different examples")
        full = np.arange(len(base.label))[None, :]
        observed.append(float(resampled_metric(metric, arm.label, arm.pred, arm.prob, full)[0]
                              - resampled_metric(metric, base.label, base.pred, base.prob, full)[0]))
        seed_diffs = np.concatenate([
            resampled_metric(metric, arm.label, arm.pred, arm.prob, index[i:i + chunk])
            - resampled_metric(metric, base.label, base.pred, base.prob, index[i:i + chunk])
            for i in range(0, len(index), chunk)
        ])
        diffs = seed_diffs if diffs is None else diffs + seed_diffs
    diffs = diffs / len(pairs)
    kept = diffs[np.isfinite(diffs)]
    alpha = 1 - confidence
    low, high = (np.quantile(kept, [alpha / 2, 1 - alpha / 2]) if kept.size else (np.nan, np.nan))
    return {
        "mean": float(np.mean(observed)), "low": float(low), "high": float(high), "confidence": confidence,
        "samples": int(kept.size), "std": float(kept.std(ddof=1)) if kept.size > 1 else None,
        "p_not_positive": float(np.mean(kept <= 0)) if kept.size else None,  # share of resamples with no gain
        "seeds": len(pairs),
    }


def excludes_zero(interval: Optional[dict]) -> Optional[bool]:
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return None
    return bool(interval["low"] > 0 or interval["high"] < 0)


# --------------------------------------------------------------------------------------------
# Planning: stage-1 runs and the arm x seed grid, all configs loaded (and checked) before training


@dataclass
class Stage1Plan:
    name: str
    output_dir: Path
    config: Optional[object]  # PretrainConfig, or None for a reuse_dir without a config
    reuse: bool  # a finished output exists: read it, do not train
    given_dir: bool  # the user's reuse_dir (vs this ablation's own folder)


@dataclass
class RunPlan:
    arm: ArmConfig
    seed: int
    config: object  # ClassifyConfig
    output_dir: Path
    encoder: str
    stage1: Optional[str]
    reuse: bool
    fresh: bool = False  # start from scratch even if checkpoints exist (a redo, or a new stage-1 encoder)


def stage1_finished(directory: Path) -> bool:
    return (directory / "dapt_summary.json").is_file() and (directory / "config.json").is_file()


def _same_yaml(directory: Path, config) -> bool:
    saved = directory / "config.yaml"
    return saved.is_file() and saved.read_text() == to_yaml(config)


def plan(config: AblationConfig) -> tuple[str, Dict[str, Stage1Plan], List[RunPlan]]:
    from classify.train import ClassifyConfig
    from dapt.pretrain import PretrainConfig

    out = Path(config.output_dir)
    base = config.base_encoder
    stage1: Dict[str, Stage1Plan] = {}
    keys: Dict[tuple, str] = {}

    def stage1_config(extra: Sequence[str], directory: Path):
        if not config.dapt.config:
            return None
        loaded = load_config(PretrainConfig, _config_path(config.dapt.config), list(config.dapt.overrides) + list(extra))
        loaded.output_dir = str(directory)
        if base:
            loaded.model.name_or_path = base
        loaded.validate()
        return loaded

    for arm in config.arms:
        if arm.encoder != "dapt":
            continue
        key = tuple(arm.dapt_overrides)
        if key in keys:
            continue
        if not key:
            name, given = "dapt", bool(config.dapt.reuse_dir)
            directory = Path(config.dapt.reuse_dir) if given else out / "dapt"
        else:
            name, given, directory = f"dapt-{arm.name}", False, out / f"dapt-{arm.name}"
        keys[key] = name
        loaded = stage1_config(key, directory)
        finished = stage1_finished(directory)
        reuse = finished and (given or config.reuse_runs and (loaded is None or _same_yaml(directory, loaded)))
        if not reuse and loaded is None:
            raise ConfigError(f"dapt.reuse_dir {directory} holds no finished stage-1 output (dapt_summary.json) "
                              f"and dapt.config is not set, so stage 1 cannot run")
        stage1[name] = Stage1Plan(name, directory, loaded, reuse, given)

    if base is None:
        first = next((s.config for s in stage1.values() if s.config is not None), None)
        if first is None and config.dapt.config:
            first = load_config(PretrainConfig, _config_path(config.dapt.config), list(config.dapt.overrides))
        if first is None:
            raise ConfigError("base_encoder is not set and there is no stage-1 config to take model.name_or_path from")
        base = first.model.name_or_path

    runs = []
    for arm in config.arms:
        if arm.encoder == "plain":
            encoder, stage = base, None
        elif arm.encoder == "dapt":
            stage = keys[tuple(arm.dapt_overrides)]
            encoder = str(stage1[stage].output_dir)
        else:
            encoder, stage = arm.encoder, None
        for seed in config.seeds:
            run_dir = out / "runs" / arm.name / f"seed_{seed}"
            loaded = load_config(ClassifyConfig, _config_path(config.classify.config),
                                 list(config.classify.overrides) + list(arm.overrides))
            loaded.model.encoder = encoder
            loaded.train.seed = seed
            loaded.output_dir = str(run_dir)
            loaded.run_name = f"ablate-{arm.name}-seed{seed}"
            loaded.push_to_hub = False
            # an interrupted run continues from its last checkpoint (checkpoint.every_epoch in the
            # GPU configs); checkpoints of a run with other settings are deleted before it starts
            loaded.checkpoint.resume = loaded.checkpoint.resume or "latest"
            loaded.validate()
            finished = (run_dir / "results.json").is_file() and (run_dir / "model" / "config.json").is_file()
            reuse = config.reuse_runs and finished and _same_yaml(run_dir, loaded)
            if reuse and stage is not None:  # trained on this very stage-1 output, not an earlier one
                summary = stage1[stage].output_dir / "dapt_summary.json"
                reuse = stage1[stage].reuse and (
                    json.loads((run_dir / "results.json").read_text()).get("dapt") == json.loads(summary.read_text()))
            fresh = not reuse and (finished or (stage is not None and not stage1[stage].reuse))
            runs.append(RunPlan(arm, seed, loaded, run_dir, encoder, stage, reuse, fresh))
    return base, stage1, runs


# --------------------------------------------------------------------------------------------
# Running


def _is_main_process() -> bool:
    from accelerate.state import PartialState

    return PartialState().is_main_process


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def _process_group_kept():
    """While stage 1 runs, ``Accelerator.end_training()`` finishes the trackers but leaves the
    process group alone: ``dapt.pretrain.pretrain`` ends with it, and a destroyed group cannot be
    re-created reliably for the stage-2 runs that follow in the same processes (gloo peers race)."""
    from accelerate import Accelerator

    original = Accelerator.end_training

    def end_training(self):
        for tracker in self.trackers:
            tracker.finish()

    Accelerator.end_training = end_training
    try:
        yield
    finally:
        Accelerator.end_training = original


def run_stage1(stage: Stage1Plan) -> dict:
    """Stage 1 in this process (every process under a launcher); the summary it wrote."""
    from classify.train import fresh_accelerator_state
    from dapt.pretrain import pretrain

    logger.info(f"== stage 1 ({stage.name}) -> {stage.output_dir}")
    stale = stage.output_dir / "config.yaml"
    if not stage.given_dir and stale.is_file() and stale.read_text() != to_yaml(stage.config):
        # this ablation's own folder, left by a stage 1 with other settings: do not resume from it
        from accelerate.state import PartialState

        if PartialState().is_main_process:
            logger.warning(f"{stage.output_dir} holds a stage 1 with other settings: starting it afresh")
            shutil.rmtree(stage.output_dir / "checkpoints", ignore_errors=True)
        PartialState().wait_for_everyone()
    fresh_accelerator_state()
    with _process_group_kept():
        summary = pretrain(stage.config)
    fresh_accelerator_state()
    _release_memory()
    return summary


@dataclass
class _Predictions:  # the fields of classify.evaluate.Predictions that the statistics use
    prob: np.ndarray
    pred: np.ndarray
    label: np.ndarray
    loss: Optional[np.ndarray] = None


def load_predictions(run_dir: Path, names: Sequence[str]) -> Optional[dict]:
    """``RUN/predictions/NAME.npz`` for every set, or None when one is missing."""
    found = {}
    for name in names:
        path = run_dir / PREDICTIONS_DIR / f"{name}.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            found[name] = _Predictions(data["prob"], data["pred"], data["label"], data["loss"] if "loss" in data else None)
    return found


def predict_run(config, run_dir: Path) -> dict:
    """Per-example predictions of a finished run's classifier on its evaluation sets, with the
    evaluation code of stage 2 (same tokenization settings, subsets and batches)."""
    from classify.data import load_labelled
    from classify.evaluate import evaluate_set
    from classify.model import load_classifier
    from classify.train import fresh_accelerator_state
    from dapt.runtime import make_accelerator

    fresh_accelerator_state()
    accelerator = make_accelerator(config.impl, run_dir)
    classifier, tokenizer = load_classifier(run_dir / "model")
    settings = classifier.settings | {"head_tokens": classifier.config_dict["head_tokens"]}
    model = classifier.to(accelerator.device)
    found = {}
    for name, set_config in config.data.eval.items():
        if set_config is None:
            continue
        with accelerator.main_process_first():
            labelled = load_labelled(set_config, seed=config.train.seed)
        _, predictions = evaluate_set(model, tokenizer, labelled, settings, accelerator, config.train.eval_batch_size,
                                      config.data.group_by_length, config.impl.dataloader_workers)
        found[name] = predictions
        if accelerator.is_main_process:
            path = run_dir / PREDICTIONS_DIR / f"{name}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, prob=predictions.prob, pred=predictions.pred, label=predictions.label, loss=predictions.loss)
    accelerator.wait_for_everyone()
    del model, classifier
    _release_memory()
    return found


def execute(run: RunPlan, keep_checkpoints: bool) -> tuple[dict, dict]:
    """Train (or read back) one arm x seed run; its results.json content and predictions."""
    from classify.train import train_classifier

    names = [name for name, value in run.config.data.eval.items() if value is not None]
    if run.reuse:
        logger.info(f"== {run.arm.name} seed {run.seed}: finished earlier, reading {run.output_dir}")
        results = json.loads((run.output_dir / "results.json").read_text())
        predictions = load_predictions(run.output_dir, names)
    else:
        logger.info(f"== {run.arm.name} seed {run.seed}: encoder {run.encoder} -> {run.output_dir}")
        from accelerate.state import PartialState

        if _is_main_process():  # a previous run's predictions must not pass for this one's
            shutil.rmtree(run.output_dir / PREDICTIONS_DIR, ignore_errors=True)
            if run.fresh or (run.output_dir / "config.yaml").is_file() and not _same_yaml(run.output_dir, run.config):
                shutil.rmtree(run.output_dir / "checkpoints", ignore_errors=True)  # not this run's to resume from
        PartialState().wait_for_everyone()
        results = train_classifier(run.config)
        _release_memory()
        predictions = load_predictions(run.output_dir, names)  # present if stage 2 saved them itself
    if predictions is None:
        predictions = predict_run(run.config, run.output_dir)
    for name in names:  # the re-prediction must be the run's own evaluation
        recorded, recomputed = results["evaluation"][name], predictions[name]
        accuracy = float(np.mean(recomputed.pred == recomputed.label))
        if recorded["n"] != len(recomputed.label) or abs(recorded["accuracy"] - accuracy) > 1e-9:
            logger.warning(f"{run.output_dir} {name}: predictions give accuracy {accuracy:.6f} on {len(recomputed.label)} rows, "
                           f"results.json {recorded['accuracy']:.6f} on {recorded['n']}")
    if not keep_checkpoints and _is_main_process():
        shutil.rmtree(run.output_dir / "checkpoints", ignore_errors=True)
    return results, predictions


# --------------------------------------------------------------------------------------------
# Analysis


def analyse(config: AblationConfig, results: dict, predictions: dict) -> dict:
    """Summary, comparisons with the baseline arm, and convergence, from the runs' results.json
    (``results[arm][seed]``) and per-example predictions (``predictions[arm][seed][dataset]``)."""
    arms = [arm.name for arm in config.arms]
    baseline = config.baseline_arm
    seeds = list(config.seeds)
    datasets = [name for name in results[arms[0]][seeds[0]]["evaluation"]]

    summary = {arm: {ds: {m: summarize([results[arm][s]["evaluation"][ds].get(m) for s in seeds])
                          for m in config.metrics + ["loss"]} for ds in datasets} for arm in arms}
    for arm in arms:
        for ds in datasets:
            summary[arm][ds]["n"] = [results[arm][s]["evaluation"][ds]["n"] for s in seeds]

    # the bootstrap resamples: one (resamples, n) matrix per dataset and seed, shared by all arms,
    # and by all seeds when the seeds were evaluated on the very same examples
    rng = np.random.default_rng(config.bootstrap.seed)
    indices = {}
    for ds in datasets:
        labels = [predictions[baseline][s][ds].label for s in seeds]
        if config.bootstrap.samples == 0:
            continue
        if all(np.array_equal(labels[0], other) for other in labels[1:]):
            shared = bootstrap_indices(len(labels[0]), config.bootstrap.samples, rng)
            indices[ds] = [shared] * len(seeds)
        else:
            indices[ds] = [bootstrap_indices(len(label), config.bootstrap.samples, rng) for label in labels]

    comparisons = {}
    for arm in arms:
        if arm == baseline:
            continue
        comparisons[arm] = {}
        for ds in datasets:
            block = {}
            for metric in config.metrics:
                pairs = [(results[baseline][s]["evaluation"][ds].get(metric), results[arm][s]["evaluation"][ds].get(metric)) for s in seeds]
                diffs = [a - b for b, a in pairs if a is not None and b is not None]
                entry = {"difference": float(np.mean(diffs)) if diffs else None, "per_seed": diffs,
                         "paired_t": paired_t_interval(diffs, config.confidence) if diffs else None, "bootstrap": None}
                if ds in indices:
                    entry["bootstrap"] = paired_bootstrap(
                        [(predictions[baseline][s][ds], predictions[arm][s][ds]) for s in seeds], metric, indices[ds], config.confidence,
                    )
                entry["paired_t_excludes_zero"] = excludes_zero(entry["paired_t"])
                entry["bootstrap_excludes_zero"] = excludes_zero(entry["bootstrap"])
                block[metric] = entry
            comparisons[arm][ds] = block

    convergence = {}
    for arm in arms:
        histories = {s: {e["epoch"]: e for e in results[arm][s]["training"]["epochs"]} for s in seeds}
        epochs = sorted({e for h in histories.values() for e in h})
        curve = {"epochs": epochs, "val_acc_mean": [], "val_acc_std": [], "val_loss_mean": [], "train_loss_mean": [], "n": [],
                 "val_acc": {str(s): [histories[s].get(e, {}).get("val_acc") for e in epochs] for s in seeds},
                 "best_epoch": {str(s): results[arm][s]["training"]["best_epoch"] for s in seeds}}
        for epoch in epochs:
            rows = [histories[s][epoch] for s in seeds if epoch in histories[s]]
            acc = summarize([r["val_acc"] for r in rows])
            curve["val_acc_mean"].append(acc["mean"])
            curve["val_acc_std"].append(acc["std"])
            curve["val_loss_mean"].append(summarize([r["val_loss"] for r in rows])["mean"])
            curve["train_loss_mean"].append(summarize([r["train_loss"] for r in rows])["mean"])
            curve["n"].append(len(rows))
        if arm != baseline:  # the validation-accuracy gain per epoch, paired by seed
            base = {s: {e["epoch"]: e["val_acc"] for e in results[baseline][s]["training"]["epochs"]} for s in seeds}
            curve["val_acc_difference"] = [
                paired_t_interval([histories[s][e]["val_acc"] - base[s][e] for s in seeds if e in histories[s] and e in base[s]],
                                  config.confidence) for e in epochs
            ]
        convergence[arm] = curve
    return {"datasets": datasets, "summary": summary, "comparisons": comparisons, "convergence": convergence}


# --------------------------------------------------------------------------------------------
# Report: markdown and figures


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _mean_std(block: dict) -> str:
    if block["mean"] is None:
        return "—"
    return _fmt(block["mean"]) + (f" ± {_fmt(block['std'])}" if block["std"] is not None else "")


def _points(interval: Optional[dict], mean: Optional[float] = None) -> str:
    """A difference and its interval in percentage points: ``+0.62 [+0.40, +0.84]``."""
    if not interval:
        return "—"
    centre = interval.get("mean") if mean is None else mean
    if centre is None:
        return "—"
    text = f"{100 * centre:+.2f}"
    if interval.get("low") is not None and interval.get("high") is not None and not math.isnan(interval["low"]):
        text += f" [{100 * interval['low']:+.2f}, {100 * interval['high']:+.2f}]"
        if excludes_zero(interval):
            text += " *"
    return text


def markdown_report(report: dict) -> str:
    config, analysis = report["config"], report["analysis"]
    arms, baseline = [arm["name"] for arm in report["arms"]], report["baseline"]
    confidence = round(100 * config["confidence"])
    lines = ["# DAPT ablation", ""]
    lines.append(f"Base encoder `{report['base_encoder']}`; seeds {', '.join(map(str, config['seeds']))}; "
                 f"stage 2 `{config['classify']['config']}`; {report['num_processes']} process(es); "
                 f"{report['wall_time_s'] / 60:.1f} min.")
    for name, stage in report["stage1"].items():
        ppl = ""
        if stage.get("perplexity_before") is not None:
            ppl = f", held-out perplexity {stage['perplexity_before']:.2f} → {stage['perplexity_after']:.2f}"
        lines.append(f"Stage 1 `{name}`: `{stage['output_dir']}` ({'reused' if stage['reused'] else 'trained here'}{ppl}).")
    lines += ["", "| arm | encoder | overrides |", "|---|---|---|"]
    for arm in report["arms"]:
        lines.append(f"| {arm['name']} | `{arm['encoder']}` | {' '.join(f'`{o}`' for o in arm['overrides']) or '—'} |")
    metrics = config["metrics"]
    for ds in analysis["datasets"]:
        n = sorted(set(analysis["summary"][arms[0]][ds]["n"]))
        lines += ["", f"## {ds} (n = {', '.join(map(str, n))})", ""]
        header = ["arm"] + [METRIC_TITLES[m] for m in metrics] + [
            f"Δ accuracy vs {baseline}, pt ({confidence} % t, seeds)", f"Δ accuracy, pt ({confidence} % bootstrap, examples)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for arm in arms:
            row = [arm] + [_mean_std(analysis["summary"][arm][ds][m]) for m in metrics]
            comparison = analysis["comparisons"].get(arm, {}).get(ds, {}).get("accuracy")
            if comparison is None:
                row += ["(baseline)" if arm == baseline else "—", "—"]
            else:
                row += [_points(comparison["paired_t"]), _points(comparison["bootstrap"])]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"### Every difference vs {baseline} (percentage points, {confidence} % intervals)", "",
              "| arm | dataset | metric | per seed | paired t (seeds) | bootstrap (examples) |", "|---|---|---|---|---|---|"]
    for arm, by_ds in analysis["comparisons"].items():
        for ds, by_metric in by_ds.items():
            for metric, entry in by_metric.items():
                per_seed = ", ".join(f"{100 * d:+.2f}" for d in entry["per_seed"])
                lines.append(f"| {arm} | {ds} | {METRIC_TITLES[metric]} | {per_seed} | {_points(entry['paired_t'])} | "
                             f"{_points(entry['bootstrap'])} |")
    epochs = max((len(c["epochs"]) for c in analysis["convergence"].values()), default=0)
    lines += ["", "## Validation accuracy per epoch (mean ± std over seeds)", "",
              "| arm | " + " | ".join(f"epoch {e + 1}" for e in range(epochs)) + " |", "|---|" + "---|" * epochs]
    for arm in arms:
        curve = analysis["convergence"][arm]
        cells = [_mean_std({"mean": m, "std": s}) for m, s in zip(curve["val_acc_mean"], curve["val_acc_std"])]
        lines.append(f"| {arm} | " + " | ".join(cells + ["—"] * (epochs - len(cells))) + " |")
    for arm in arms:
        if arm == baseline:
            continue
        diffs = analysis["convergence"][arm]["val_acc_difference"]
        lines.append(f"| Δ {arm} vs {baseline}, pt | " + " | ".join(_points(d) for d in diffs) + " |")
    lines += ["", f"mean ± sample standard deviation over seeds. Δ: the arm minus `{baseline}`, in percentage points, "
              f"with a {confidence} % interval; * marks an interval that excludes zero. *paired t*: the per-seed "
              "differences (same seed, same data order and validation split), a Student-t interval — the variation "
              "between training runs. *bootstrap*: test examples resampled with replacement "
              f"({config['bootstrap']['samples']} resamples, seed {config['bootstrap']['seed']}), the same resample for "
              "both arms, the difference averaged over seeds, percentile interval — the variation due to the finite "
              "test set. Stage 1 ran once per DAPT encoder, so its own randomness is not sampled.", ""]
    return "\n".join(lines)


def bar_chart_png(report: dict, path: Path) -> Path:
    """Mean ± std over seeds, one panel per dataset, one group of bars per metric, one bar per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    analysis, metrics = report["analysis"], report["config"]["metrics"]
    arms, datasets = [arm["name"] for arm in report["arms"]], analysis["datasets"]
    figure, axes = plt.subplots(1, len(datasets), figsize=(1.2 + 2.2 * len(metrics) * len(datasets), 4.2), squeeze=False)
    width = 0.8 / len(arms)
    for axis, ds in zip(axes[0], datasets):
        lows, highs = [], []
        for position, arm in enumerate(arms):
            blocks = [analysis["summary"][arm][ds][m] for m in metrics]
            means = [b["mean"] if b["mean"] is not None else np.nan for b in blocks]
            stds = [b["std"] or 0.0 for b in blocks]
            x = np.arange(len(metrics)) + (position - (len(arms) - 1) / 2) * width
            axis.bar(x, means, width, yerr=stds, capsize=3, label=arm)
            for xi, mean, std in zip(x, means, stds):
                if not np.isnan(mean):
                    axis.annotate(f"{mean:.3f}", (xi, mean + std), textcoords="offset points", xytext=(0, 3), ha="center",
                                  va="bottom", fontsize=7, rotation=90)
            lows += [m - s for m, s in zip(means, stds) if not np.isnan(m)]
            highs += [m + s for m, s in zip(means, stds) if not np.isnan(m)]
        if lows:
            span = max(highs) - min(lows)
            axis.set_ylim(max(0.0, min(lows) - max(0.02, span)), max(highs) + max(0.04, 0.8 * span))
        axis.set_xticks(np.arange(len(metrics)), [METRIC_TITLES[m] for m in metrics])
        axis.set_title(f"{ds} (mean ± std, {len(report['config']['seeds'])} seeds)", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper right", ncol=min(len(arms), 3))
    return save_figure(figure, path)


def convergence_png(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.2, 3.8))
    arms, epochs = report["arms"], set()
    for position, arm in enumerate(arms):
        curve = report["analysis"]["convergence"][arm["name"]]
        stds = [s or 0.0 for s in curve["val_acc_std"]]
        shift = (position - (len(arms) - 1) / 2) * 0.04  # side by side, so that error bars do not hide each other
        axis.errorbar(np.asarray(curve["epochs"]) + shift, curve["val_acc_mean"], yerr=stds, marker="o", capsize=3, label=arm["name"])
        epochs.update(curve["epochs"])
    axis.set_xticks(sorted(epochs))
    axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy")
    axis.set_title("Validation accuracy per epoch (mean ± std over seeds)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


# --------------------------------------------------------------------------------------------
# The whole ablation


def run_ablation(config: AblationConfig) -> dict:
    """Stage 1 where needed, every arm x seed through stage 2, statistics and the report.
    Returns the content of ``ablation.json`` (on every process; only the main one writes files)."""
    import torch
    from accelerate.state import PartialState

    started = time.time()
    out = Path(config.output_dir)
    base, stage1, runs = plan(config)  # every config is loaded and checked before anything trains
    PartialState(cpu=runs[0].config.impl.cpu or not torch.cuda.is_available())  # the process group, as the stages make it
    logger.info(f"ablation: {len(config.arms)} arms x {len(config.seeds)} seeds = {len(runs)} stage-2 runs "
                f"({sum(r.reuse for r in runs)} finished earlier); stage 1: "
                + (", ".join(f"{s.name} ({'reused' if s.reuse else 'to train'}: {s.output_dir})" for s in stage1.values()) or "none"))

    stage1_report = {}
    for stage in stage1.values():
        if stage.reuse:
            summary = json.loads((stage.output_dir / "dapt_summary.json").read_text())
            logger.info(f"stage 1 ({stage.name}): reusing {stage.output_dir}")
            if stage.config is not None and not _same_yaml(stage.output_dir, stage.config):
                logger.warning(f"stage 1 ({stage.name}): {stage.output_dir}/config.yaml differs from dapt.config + overrides; "
                               f"reusing it anyway (set dapt.reuse_dir=null to train stage 1 into {out / 'dapt'})")
            if summary.get("model_name_or_path") not in (None, base):
                logger.warning(f"stage 1 ({stage.name}): {stage.output_dir} was adapted from {summary['model_name_or_path']}, "
                               f"but the plain arm uses {base}: the comparison is only fair if they are the same encoder")
        else:
            summary = run_stage1(stage)
        stage1_report[stage.name] = {
            "output_dir": str(stage.output_dir), "reused": stage.reuse, "base": summary.get("model_name_or_path"),
            "config_matches": stage.config is not None and _same_yaml(stage.output_dir, stage.config),
            **{k: summary.get(k) for k in ("perplexity_before", "perplexity_after", "baseline", "steps", "epochs",
                                          "tokens_seen", "wall_time_s", "num_processes")},
        }

    results: dict = {arm.name: {} for arm in config.arms}
    predictions: dict = {arm.name: {} for arm in config.arms}
    for number, run in enumerate(runs, 1):
        logger.info(f"run {number}/{len(runs)}")
        results[run.arm.name][run.seed], predictions[run.arm.name][run.seed] = execute(run, config.keep_checkpoints)

    analysis = analyse(config, results, predictions)
    first = results[config.arms[0].name][config.seeds[0]]
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_encoder": base,
        "baseline": config.baseline_arm,
        "seeds": list(config.seeds),
        "num_processes": first["hyperparameters"].get("num_processes"),
        "wall_time_s": round(time.time() - started, 2),
        "stage1": stage1_report,
        "arms": [{"name": arm.name, "encoder": run.encoder, "encoder_kind": arm.encoder if arm.encoder in ("plain", "dapt") else "path",
                  "stage1": run.stage1, "overrides": list(arm.overrides), "dapt_overrides": list(arm.dapt_overrides)}
                 for arm in config.arms for run in runs if run.arm is arm and run.seed == config.seeds[0]],
        "hyperparameters": {arm.name: results[arm.name][config.seeds[0]]["hyperparameters"] for arm in config.arms},
        "runs": {arm: {str(seed): {
            "dir": str(out / "runs" / arm / f"seed_{seed}"),
            "reused": next(r.reuse for r in runs if r.arm.name == arm and r.seed == seed),
            "evaluation": {ds: {k: v for k, v in block.items() if k in ("accuracy", "f1", "precision", "recall", "roc_auc", "loss", "n", "subset_of")}
                           for ds, block in res["evaluation"].items()},
            "val_acc": [e["val_acc"] for e in res["training"]["epochs"]],
            "best_epoch": res["training"]["best_epoch"],
            "wall_time_s": res["training"]["wall_time_s"],
            "train_samples_per_s": res["training"].get("train_samples_per_s"),
        } for seed, res in by_seed.items()} for arm, by_seed in results.items()},
        "analysis": analysis,
        "config": to_dict(config),
    }
    if _is_main_process():
        from dapt.runtime import _json_default

        out.mkdir(parents=True, exist_ok=True)
        temporary = out / "ablation.json.tmp"
        temporary.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        temporary.replace(out / "ablation.json")
        (out / "ablation.md").write_text(markdown_report(report))
        bar_chart_png(report, out / "ablation.png")
        convergence_png(report, out / "convergence.png")
        (out / "ablation_config.yaml").write_text(to_yaml(config))
        logger.info(f"ablation report: {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'ablation.png'}")
    return report


def main(argv=None) -> None:
    from classify.data import DataError

    config = parse_cli(AblationConfig, argv, "The DAPT ablation: the classifier on the plain and the DAPT encoder, "
                                              "N seeds each, with intervals", default_config=None)
    try:
        report = run_ablation(config)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        logger.error(str(error))
        raise SystemExit(f"error: {error}") from None
    if _is_main_process():
        print(markdown_report(report))
        print(f"report: {Path(config.output_dir) / 'ablation.md'}")


if __name__ == "__main__":
    main()

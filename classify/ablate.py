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

This module holds the configuration and the driver (:func:`run_ablation`); the plan and the runs
are in ``classify/ablation_runs.py``, the statistics in ``classify/ablation_stats.py``, the report
and its figures in ``classify/ablation_report.py``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):  # run as a file: `accelerate launch classify/ablate.py`
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # classify/ itself: its model.py / data.py / evaluate.py must not shadow other imports
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import MISSING

from classify.ablation_report import bar_chart_png, convergence_png, markdown_report
from classify.ablation_runs import execute, is_main_process, plan, run_stage1, same_yaml
from classify.ablation_stats import BOOTSTRAP_METRICS, analyse
from classify.evaluate import METRIC_KEYS
from dapt.config import ConfigError, parse_cli, to_dict, to_yaml
from dapt.runtime import logger, raise_config, write_json

ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


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
            matches = stage.config is not None and same_yaml(stage.output_dir, stage.config)
            if stage.config is not None and not matches:
                logger.warning(f"stage 1 ({stage.name}): {stage.output_dir}/config.yaml differs from dapt.config + overrides; "
                               f"reusing it anyway (set dapt.reuse_dir=null to train stage 1 into {out / 'dapt'})")
            if summary.get("model_name_or_path") not in (None, base):
                logger.warning(f"stage 1 ({stage.name}): {stage.output_dir} was adapted from {summary['model_name_or_path']}, "
                               f"but the plain arm uses {base}: the comparison is only fair if they are the same encoder")
        else:
            summary, matches = run_stage1(stage), True  # it wrote stage.config
        stage1_report[stage.name] = {
            "output_dir": str(stage.output_dir), "reused": stage.reuse, "base": summary.get("model_name_or_path"),
            "config_matches": matches,
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
    by_run = {(run.arm.name, run.seed): run for run in runs}
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
                 for arm in config.arms for run in [by_run[arm.name, config.seeds[0]]]],
        "hyperparameters": {arm.name: results[arm.name][config.seeds[0]]["hyperparameters"] for arm in config.arms},
        "runs": {arm: {str(seed): {
            "dir": str(out / "runs" / arm / f"seed_{seed}"),
            "reused": by_run[arm, seed].reuse,
            "evaluation": {ds: {k: v for k, v in block.items() if k in (*METRIC_KEYS, "subset_of")}
                           for ds, block in res["evaluation"].items()},
            "val_acc": [e["val_acc"] for e in res["training"]["epochs"]],
            "best_epoch": res["training"]["best_epoch"],
            "wall_time_s": res["training"]["wall_time_s"],
            "train_samples_per_s": res["training"].get("train_samples_per_s"),
        } for seed, res in by_seed.items()} for arm, by_seed in results.items()},
        "analysis": analysis,
        "config": to_dict(config),
    }
    write_json(PartialState(), out / "ablation.json", report)
    if is_main_process():
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
    if is_main_process():
        print(markdown_report(report))
        print(f"report: {Path(config.output_dir) / 'ablation.md'}")


if __name__ == "__main__":
    main()

"""The DAPT ablation in one command: the same classifier on the plain and on the adapted encoder.

    dapt-ablate --config configs/ablate/minilm.yaml [key=value ...]
    python -m experiments.ablation --config configs/ablate/minilm.yaml seeds=[0,1,2,3,4]
    python -m experiments.ablation --config configs/ablate/demo.yaml          # CPU, a few minutes
    dapt-ablate --config configs/ablate/distilbert.yaml \
        'launcher=[accelerate,launch,--config_file,configs/accelerate/multi_gpu.yaml]'

Reads top to bottom: config -> stage 1 (``python -m dapt.pretrain``), or an existing stage-1 output
reused as is -> for every arm and seed, stage 2 (``python -m classify.train``) with the same
data, hyperparameters and seed, only the encoder and the arm's own overrides differing -> the
per-example test predictions of each run -> statistics -> ``ablation.json``, ``ablation.md``,
``ablation.png`` (bars with error bars) and ``convergence.png`` (validation accuracy per epoch).

An *arm* is a name, an encoder (``plain``: the base encoder; ``dapt``: stage 1's output; or any
encoder path or Hub id), a ``chain`` of further stage-1 recipes run in order from it (``[tapt]``:
TAPT; ``encoder: dapt`` + ``[tapt]``: DAPT then TAPT - each phase one stage-1 run, shared by the
arms whose chains begin alike) and stage-2 ``key=value`` overrides (``model.truncation=head+tail``).
An arm with ``dapt_overrides`` (``train.epochs=1``) gets its own stage-1 run. Every arm is compared with
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
re-renders its report in seconds. The driver is one plain process: every stage is a command of its
own (``launcher`` starts it on several processes), as in cramming's ablation scripts.

This module holds the driver (:func:`run_ablation`); the configuration is in ``config.py``, the
plan and the stage commands in ``runs.py``, the statistics in ``stats.py``, the report and its
figures in ``report.py``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from classify.evaluate import METRIC_KEYS
from dapt.core.config import ConfigError, parse_cli, to_dict, to_yaml
from dapt.core.sources import DataError
from experiments.ablation.config import AblationConfig
from experiments.ablation.report import bar_chart_png, convergence_png, markdown_report
from experiments.ablation.runs import StageError, execute, plan, run_stage1, same_yaml
from experiments.ablation.stats import analyse

logger = logging.getLogger(__name__)


def run_ablation(config: AblationConfig) -> dict:
    """Stage 1 where needed, every arm x seed through stage 2, statistics and the report.
    Returns the content of ``ablation.json``."""
    started = time.time()
    out = Path(config.output_dir)
    base, stage1, runs = plan(config)  # every config is loaded and checked before anything trains
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
            expected = stage.start or base  # the base encoder, a given one, or the previous phase's output
            if stage.parent is None and summary.get("model_name_or_path") not in (None, expected):
                logger.warning(f"stage 1 ({stage.name}): {stage.output_dir} was adapted from {summary['model_name_or_path']}, "
                               f"but the plain arm uses {expected}: the comparison is only fair if they are the same encoder")
        else:
            summary, matches = run_stage1(config, stage), True  # it wrote stage.config
        stage1_report[stage.name] = {
            "output_dir": str(stage.output_dir), "reused": stage.reuse, "base": summary.get("model_name_or_path"),
            "recipes": list(stage.recipes), "parent": stage.parent, "config_matches": matches,
            **{k: summary.get(k) for k in ("perplexity_before", "perplexity_after", "baseline", "steps", "epochs",
                                          "tokens_seen", "wall_time_s", "num_processes")},
        }

    results: dict = {arm.name: {} for arm in config.arms}
    predictions: dict = {arm.name: {} for arm in config.arms}
    for number, run in enumerate(runs, 1):
        logger.info(f"run {number}/{len(runs)}")
        results[run.arm.name][run.seed], predictions[run.arm.name][run.seed] = execute(config, run)

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
                  "stage1": run.stage1, "chain": [recipe for recipe, _ in arm.phases()[1]],
                  "overrides": list(arm.overrides), "dapt_overrides": list(arm.dapt_overrides)}
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
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown_report(report))
    bar_chart_png(report, out / "ablation.png")
    convergence_png(report, out / "convergence.png")
    (out / "ablation_config.yaml").write_text(to_yaml(config))
    logger.info(f"ablation report: {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'ablation.png'}")
    return report


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("error: run the ablation as one process (python -m experiments.ablation); "
                         "launcher=[...] starts each stage on several processes")
    config = parse_cli(AblationConfig, argv, "The DAPT ablation: the classifier on the plain and the DAPT encoder, "
                                              "N seeds each, with intervals", default_config=None)
    try:
        report = run_ablation(config)
    except (ConfigError, DataError, FileNotFoundError, ValueError, StageError) as error:
        logger.error(str(error))
        raise SystemExit(f"error: {error}") from None
    print(markdown_report(report))
    print(f"report: {Path(config.output_dir) / 'ablation.md'}")


if __name__ == "__main__":
    main()

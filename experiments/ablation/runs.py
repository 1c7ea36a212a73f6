"""The DAPT ablation's runs: the plan - the stage-1 runs and the arm x seed grid of stage-2 runs,
every config loaded and checked before anything trains, finished runs marked for reuse - and its
execution. Each stage runs as an ordinary command-line run in its own process(es)
(``python -m dapt.pretrain --config FILE``, ``python -m classify.train ...``,
``python -m classify.evaluate ...``, behind ``launcher`` when it asks for several processes), so
the product needs nothing to run several trainings in one process. The stage configs are written
to ``OUTPUT/stages/NAME.yaml`` first: the run is exactly the one planned, and can be repeated by
hand. Each stage-2 run leaves the per-example test predictions (``RUN/predictions/NAME.npz``) the
statistics need.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from classify.evaluate import PREDICTIONS_DIR, load_predictions
from dapt.core.config import ConfigError, load_config, to_yaml
from experiments.ablation.config import AblationConfig, ArmConfig

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Planning: stage-1 runs and the arm x seed grid, all configs loaded (and checked) before training


@dataclass
class Stage1Plan:
    name: str
    output_dir: Path
    config: Optional[object]  # PretrainConfig, or None for a reuse_dir without a config
    reuse: bool  # a finished output exists: read it, do not train
    given_dir: bool  # the user's reuse_dir (vs this ablation's own folder)
    recipes: tuple = ()  # the chain of recipe names this output is the end of (dapt, tapt, ...)
    parent: Optional[str] = None  # the stage-1 run it starts from (None: the base or a given encoder)
    start: Optional[str] = None  # the model it starts from (None: the stage-1 config's own, when no base is set)
    fresh: bool = False  # its parent is trained anew: never resume from checkpoints made on the old one


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


def same_yaml(directory: Path, config) -> bool:
    saved = directory / "config.yaml"
    return saved.is_file() and saved.read_text() == to_yaml(config)


def _config_path(path: Optional[str]) -> Optional[Path]:
    """A stage YAML as given, or relative to the repository when the working directory lacks it."""
    if path is None:
        return None
    given = Path(path)
    return given if given.is_file() or given.is_absolute() or not (ROOT / given).is_file() else ROOT / given


def _chain_matches(child: Path, parent: Path) -> bool:
    """The finished stage-1 output ``child`` was trained on ``parent`` as it is now: its recorded
    chain of phases continues ``parent``'s (summaries without a chain are taken as matching)."""
    mine = json.loads((child / "dapt_summary.json").read_text()).get("adaptation")
    theirs = json.loads((parent / "dapt_summary.json").read_text()).get("adaptation")
    return mine is None or theirs is None or mine[:-1] == theirs


def plan(config: AblationConfig) -> tuple[str, Dict[str, Stage1Plan], List[RunPlan]]:
    from classify.config import ClassifyConfig
    from dapt.pretrain import PretrainConfig

    out = Path(config.output_dir)
    base = config.base_encoder
    recipes = {"dapt": config.dapt, **config.stage1}
    stage1: Dict[str, Stage1Plan] = {}
    keys: Dict[tuple, str] = {}  # (start, phases so far) -> stage-1 run name

    def stage1_config(recipe, extra: Sequence[str], directory: Path, model: Optional[str]):
        if not recipe.config:
            return None
        loaded = load_config(PretrainConfig, _config_path(recipe.config), list(recipe.overrides) + list(extra))
        loaded.output_dir = str(directory)
        loaded.overwrite = True  # the ablation's own folder: run() decides what to reuse
        if model:
            loaded.model.name_or_path = model
        loaded.validate()
        return loaded

    for arm in config.arms:
        start, phases = arm.phases()
        parent: Optional[str] = None
        for depth in range(len(phases)):
            key = (start, tuple(phases[: depth + 1]))
            if key in keys:
                parent = keys[key]
                continue
            recipe, extra = phases[depth]
            parts = [f"dapt-{arm.name}" if name == "dapt" and own else name for name, own in phases[: depth + 1]]
            name = "+".join(parts) if start == "plain" else f"{arm.name}.{'+'.join(parts)}"
            if name in stage1:  # the same name from another starting point: keep them apart
                name = f"{name}-{arm.name}"
            given = bool(recipes[recipe].reuse_dir) and depth == 0 and start == "plain" and not extra
            directory = Path(recipes[recipe].reuse_dir) if given else out / name
            model = str(stage1[parent].output_dir) if parent else (base if start == "plain" else start)
            loaded = stage1_config(recipes[recipe], extra, directory, model)
            finished = stage1_finished(directory)
            reuse = finished and (given or config.reuse_runs and (loaded is None or same_yaml(directory, loaded)))
            if reuse and parent is not None:  # trained on its parent as the parent is now
                reuse = stage1[parent].reuse and _chain_matches(directory, stage1[parent].output_dir)
            if not reuse and loaded is None:
                raise ConfigError(f"{'dapt' if recipe == 'dapt' else 'stage1.' + recipe}.reuse_dir {directory} holds no finished "
                                  f"stage-1 output (dapt_summary.json) and its config is not set, so stage 1 cannot run")
            fresh = parent is not None and not stage1[parent].reuse
            stage1[name] = Stage1Plan(name, directory, loaded, reuse, given, tuple(r for r, _ in phases[: depth + 1]),
                                      parent, model, fresh)
            keys[key] = parent = name

    if base is None:
        first = next((s.config for s in stage1.values() if s.config is not None), None)
        if first is None and config.dapt.config:
            first = load_config(PretrainConfig, _config_path(config.dapt.config), list(config.dapt.overrides))
        if first is None:
            raise ConfigError("base_encoder is not set and there is no stage-1 config to take model.name_or_path from")
        base = first.model.name_or_path

    runs = []
    for arm in config.arms:
        start, phases = arm.phases()
        stage = keys[(start, tuple(phases))] if phases else None
        if stage is not None:
            encoder = str(stage1[stage].output_dir)
        else:
            encoder = base if start == "plain" else start
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
            loaded.overwrite = True  # a finished run with other settings is replaced, not refused
            loaded.validate()
            finished = (run_dir / "results.json").is_file() and (run_dir / "model" / "config.json").is_file()
            reuse = config.reuse_runs and finished and same_yaml(run_dir, loaded)
            if reuse and stage is not None:  # trained on this very stage-1 output, not an earlier one
                summary = stage1[stage].output_dir / "dapt_summary.json"
                reuse = stage1[stage].reuse and (
                    json.loads((run_dir / "results.json").read_text()).get("dapt") == json.loads(summary.read_text()))
            fresh = not reuse and (finished or (stage is not None and not stage1[stage].reuse))
            runs.append(RunPlan(arm, seed, loaded, run_dir, encoder, stage, reuse, fresh))
    return base, stage1, runs


# --------------------------------------------------------------------------------------------
# Running: every stage a command of its own


class StageError(RuntimeError):
    """A stage's command failed; its own output (above) says why."""


def launch(config: AblationConfig, module: str, name: str, stage_config, *args: str) -> None:
    """Write ``stage_config`` to ``OUTPUT/stages/NAME.yaml`` and run ``module`` on it (behind
    ``config.launcher``) in the working directory; raise :class:`StageError` if it fails."""
    path = Path(config.output_dir) / "stages" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(stage_config))
    command = [*(config.launcher or [sys.executable]), "-m", module, *args, "--config", str(path)]
    logger.info(f"$ {shlex.join(command)}")
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise StageError(f"{module} ({name}) failed with exit code {done.returncode}: {shlex.join(command)}")


def _drop_stale_checkpoints(directory: Path, config, force: bool = False) -> None:
    """Remove ``checkpoints/`` left in ``directory`` by a run with other settings (or any, with
    ``force``) so that the run about to start does not resume from them."""
    if force or (directory / "config.yaml").is_file() and not same_yaml(directory, config):
        if (directory / "checkpoints").is_dir():
            logger.warning(f"{directory}: not resuming from its checkpoints (other settings, or a new stage-1 encoder); starting afresh")
        shutil.rmtree(directory / "checkpoints", ignore_errors=True)


def run_stage1(config: AblationConfig, stage: Stage1Plan) -> dict:
    """Stage 1 as its own command; the summary it wrote."""
    logger.info(f"== stage 1 ({stage.name}) -> {stage.output_dir}")
    if not stage.given_dir:  # this ablation's own folder: never resume a stage 1 with other settings, or on a new parent
        _drop_stale_checkpoints(stage.output_dir, stage.config, force=stage.fresh)
    launch(config, "dapt.pretrain", stage.name, stage.config)
    return json.loads((stage.output_dir / "dapt_summary.json").read_text())


def predict_run(config: AblationConfig, run: RunPlan) -> dict:
    """Per-example predictions of a finished run's classifier on its evaluation sets, by stage 2's
    evaluation command (same tokenization settings, subsets and batches) into a scratch folder,
    then moved to ``RUN/predictions``."""
    scratch = run.output_dir / ".repredict"
    shutil.rmtree(scratch, ignore_errors=True)
    launch(config, "classify.evaluate", f"{run.arm.name}-seed_{run.seed}-evaluate", run.config,
           "--model", str(run.output_dir), "--output-dir", str(scratch))
    shutil.rmtree(run.output_dir / PREDICTIONS_DIR, ignore_errors=True)
    shutil.move(str(scratch / PREDICTIONS_DIR), str(run.output_dir / PREDICTIONS_DIR))
    shutil.rmtree(scratch)
    return load_predictions(run.output_dir, [name for name, value in run.config.data.eval.items() if value is not None])


def execute(config: AblationConfig, run: RunPlan) -> tuple[dict, dict]:
    """Train (or read back) one arm x seed run; its results.json content and predictions."""
    names = [name for name, value in run.config.data.eval.items() if value is not None]
    if run.reuse:
        logger.info(f"== {run.arm.name} seed {run.seed}: finished earlier, reading {run.output_dir}")
    else:
        logger.info(f"== {run.arm.name} seed {run.seed}: encoder {run.encoder} -> {run.output_dir}")
        shutil.rmtree(run.output_dir / PREDICTIONS_DIR, ignore_errors=True)  # a previous run's must not pass for this one's
        _drop_stale_checkpoints(run.output_dir, run.config, force=run.fresh)
        launch(config, "classify.train", f"{run.arm.name}-seed_{run.seed}", run.config)
    results = json.loads((run.output_dir / "results.json").read_text())
    predictions = load_predictions(run.output_dir, names)  # stage 2 saves them with its evaluation
    if predictions is None:
        predictions = predict_run(config, run)
    for name in names:  # the re-prediction must be the run's own evaluation
        recorded, recomputed = results["evaluation"][name], predictions[name]
        accuracy = float(np.mean(recomputed.pred == recomputed.label))
        if recorded["n"] != len(recomputed.label) or abs(recorded["accuracy"] - accuracy) > 1e-9:
            logger.warning(f"{run.output_dir} {name}: predictions give accuracy {accuracy:.6f} on {len(recomputed.label)} rows, "
                           f"results.json {recorded['accuracy']:.6f} on {recorded['n']}")
    if not config.keep_checkpoints:
        shutil.rmtree(run.output_dir / "checkpoints", ignore_errors=True)
    return results, predictions

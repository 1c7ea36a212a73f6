"""The DAPT ablation's configuration (``configs/ablate/*.yaml``): the arms, the seeds, the two
stages' configs and how a stage is launched. Loaded with :func:`dapt.core.config.load_config`; an
unknown key or a bad value is a :class:`~dapt.core.config.ConfigError` naming the key.

Stage-1 *recipes* are named: ``dapt`` (the ``dapt`` block) and every entry of ``stage1`` (e.g.
``tapt``). An arm's encoder is its *chain* of recipes applied in order to where it starts
(``encoder``: ``plain``, the base encoder; ``dapt``, the ``dapt`` recipe's output; or a path / Hub
id), then stage 2: plain = no chain, TAPT = ``chain: [tapt]``, DAPT = ``encoder: dapt``, DAPT then
TAPT = ``encoder: dapt, chain: [tapt]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING

from dapt.core.runtime import raise_config

#: metrics the paired bootstrap can resample (``experiments.ablation.stats.resampled_metric``)
BOOTSTRAP_METRICS = ("accuracy", "macro_f1", "f1", "precision", "recall", "roc_auc")
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
    encoder: str = "plain"  # plain | dapt | an encoder directory or Hub id: where the chain starts
    chain: List[str] = field(default_factory=list)  # stage-1 recipes (dapt, or keys of stage1) run in order from `encoder`
    overrides: List[str] = field(default_factory=list)  # stage-2 key=value for this arm only
    dapt_overrides: List[str] = field(default_factory=list)  # stage-1 key=value: this arm's own DAPT run

    def phases(self) -> tuple[str, list[tuple[str, tuple[str, ...]]]]:
        """``(start, [(recipe, its stage-1 overrides), ...])``: ``encoder: dapt`` is the ``dapt``
        recipe run from the base encoder, first."""
        own = tuple(self.dapt_overrides)
        steps = [(name, own if name == "dapt" else ()) for name in self.chain]
        return ("plain", [("dapt", own)] + steps) if self.encoder == "dapt" else (self.encoder, steps)


@dataclass
class BootstrapConfig:
    samples: int = 1000  # resamples of the test examples; 0: no bootstrap
    seed: int = 0  # of the resamples, which are the same for every arm


def _default_arms() -> list:
    return [
        ArmConfig(name="plain", encoder="plain", overrides=["model.truncation=head"]),
        ArmConfig(name="dapt", encoder="dapt", overrides=["model.truncation=head"]),
        ArmConfig(name="dapt-head+tail", encoder="dapt", overrides=["model.truncation=head+tail"]),
    ]


@dataclass
class AblationConfig:
    output_dir: str = "runs/ablate"  # holds runs/ARM/seed_S, dapt/ (stage 1), ablation.md/.json/.png
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # stage-2 train.seed, the same for every arm
    # where the plain arm and stage 1 both start; null: stage 1's model.name_or_path
    base_encoder: Optional[str] = None
    baseline: Optional[str] = None  # the arm the others are compared with; null: the first arm
    # the first is the report's headline (its difference columns); macro_f1 for K > 2 classes, f1/precision/recall binary only
    metrics: List[str] = field(default_factory=lambda: ["accuracy", "f1", "roc_auc"])
    confidence: float = 0.95  # of both intervals
    reuse_runs: bool = True  # read back a finished run with the same config.yaml instead of retraining
    keep_checkpoints: bool = False  # false: delete RUN/checkpoints once a run has finished
    # how a stage is started: the command before `-m MODULE --config FILE`. Empty: this Python,
    # one process. Several processes: [accelerate, launch, --config_file, configs/accelerate/multi_gpu.yaml]
    # or [torchrun, --standalone, --nproc_per_node, "2"]
    launcher: List[str] = field(default_factory=list)
    # the dapt recipe: stage 1 from the base encoder, for arms with encoder: dapt (or dapt in their chain)
    dapt: DaptStageConfig = field(default_factory=lambda: DaptStageConfig(config="configs/pretrain.yaml"))
    # further stage-1 recipes, by name (tapt: {config: configs/tasks/ag_news/tapt.yaml}); arms name them
    # in `chain`. reuse_dir applies where a recipe runs from the base encoder (the first phase of a chain)
    stage1: Dict[str, DaptStageConfig] = field(default_factory=dict)
    # stage 2, for every arm and seed (the seed and the arm's overrides applied after these)
    classify: StageConfig = field(default_factory=lambda: StageConfig(config="configs/classify.yaml"))
    # the encoders compared, each trained once per seed (default: plain, dapt, dapt-head+tail)
    arms: List[ArmConfig] = field(default_factory=_default_arms)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)  # the paired bootstrap over test examples

    def validate(self) -> None:
        if not self.seeds:
            raise_config("seeds", self.seeds, "a non-empty list of integers")
        if len(set(self.seeds)) != len(self.seeds):
            raise_config("seeds", self.seeds, "distinct seeds")
        if not self.arms:
            raise_config("arms", self.arms, "at least one arm")
        for name in self.stage1:
            if name == "dapt" or not ARM_NAME.fullmatch(name) or "+" in name:
                raise_config(f"stage1.{name}", name, "a recipe name of letters, digits and . _ - other than dapt (the dapt block)")
        recipes = {"dapt": self.dapt, **self.stage1}
        names = [arm.name for arm in self.arms]
        for index, arm in enumerate(self.arms):
            if not ARM_NAME.fullmatch(arm.name):
                raise_config(f"arms.{index}.name", arm.name, "letters, digits and . _ + - (it names a folder)")
            if arm.name in names[:index]:
                raise_config(f"arms.{index}.name", arm.name, "a name no other arm has")
            for step, recipe in enumerate(arm.chain):
                if recipe not in recipes:
                    raise_config(f"arms.{index}.chain.{step}", recipe, "dapt or a recipe of stage1: " + ", ".join(self.stage1))
            start, phases = arm.phases()
            if arm.dapt_overrides and "dapt" not in [recipe for recipe, _ in phases]:
                raise_config(f"arms.{index}.dapt_overrides", arm.dapt_overrides, "none unless encoder is dapt (or chain has dapt)")
            for depth, (recipe, extra) in enumerate(phases):
                given = recipes[recipe].reuse_dir and depth == 0 and start == "plain" and not extra
                if not recipes[recipe].config and not given:
                    key = "dapt.config" if recipe == "dapt" else f"stage1.{recipe}.config"
                    raise_config(key, None, f"a stage-1 config (arm {arm.name!r} runs the {recipe} recipe)")
        if self.baseline is not None and self.baseline not in names:
            raise_config("baseline", self.baseline, "the name of an arm: " + ", ".join(names))
        for index, metric in enumerate(self.metrics):
            if metric not in BOOTSTRAP_METRICS:
                raise_config(f"metrics.{index}", metric, " | ".join(BOOTSTRAP_METRICS))
        if not 0 < self.confidence < 1:
            raise_config("confidence", self.confidence, "a probability in (0, 1)")
        if self.launcher and self.launcher[-1] in ("-m", "--module"):
            raise_config(f"launcher.{len(self.launcher) - 1}", self.launcher[-1], "no -m: the ablation adds `-m MODULE` itself")
        if self.bootstrap.samples < 0:
            raise_config("bootstrap.samples", self.bootstrap.samples, "a count >= 0")

    @property
    def baseline_arm(self) -> str:
        return self.baseline or self.arms[0].name

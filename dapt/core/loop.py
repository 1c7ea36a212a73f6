"""What both training loops share besides the step: the ``train`` keys and the resumable epoch."""

from __future__ import annotations

from dataclasses import dataclass, field

from dapt.core.state import TrainState
from dapt.core.runtime import check_range, raise_config


@dataclass
class LoopConfig:
    """The ``train`` keys of both stages (each stage's ``TrainConfig`` adds its own and may change defaults)."""

    seed: int = 42  # the run's randomness: init, dropout, data order, subsets, held-out splits, (stage 1) masks
    batch_size: int = 32  # per device; the global batch is batch_size x processes x grad_accum
    eval_batch_size: int = 64  # per device
    grad_accum: int = 1  # batches whose gradients are summed into one optimizer step
    min_lr: float = 0.0  # where the linear decay ends
    weight_decay: float = 0.01  # not on biases and norm weights
    warmup_ratio: float = 0.06  # of all optimizer steps W; step k < W uses LR (k+1)/(W+1), step W the full LR
    max_grad_norm: float = 1.0  # 0: no clipping
    log_every: int = 20  # optimizer steps between metrics.jsonl lines
    max_nonfinite: int = 20  # skipped non-finite updates in a row before the run stops (it must not end on one)

    def validate(self, prefix: str = "train") -> None:
        for key in ("batch_size", "eval_batch_size", "grad_accum", "log_every"):
            if getattr(self, key) < 1:
                raise_config(f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        for key in ("min_lr", "weight_decay", "max_grad_norm"):
            check_range(f"{prefix}.{key}", getattr(self, key))
        check_range(f"{prefix}.warmup_ratio", self.warmup_ratio, 0.0, 1.0, "a fraction in [0, 1]")
        if self.max_nonfinite < 0:
            raise_config(f"{prefix}.max_nonfinite", self.max_nonfinite, "an integer >= 0")


@dataclass
class RunConfig:
    """The run-level keys of both stages' configs. A stage's config inherits them (re-declaring
    ``output_dir`` and ``run_name`` with its own defaults) and adds its ``train``
    (a :class:`LoopConfig`), ``impl`` and ``checkpoint`` groups, which :meth:`validate` checks first."""

    output_dir: str = "runs/run"  # the run folder: config.yaml, metrics.jsonl, checkpoints/ and the outputs
    overwrite: bool = False  # replace a previous run in output_dir (its results stay until this one finishes)
    run_name: str = "run"  # the trackers' run name; recorded in dapt_summary.json / results.json
    tensorboard: bool = False  # also report to TensorBoard (logs in OUTPUT/tb), as report_to: [tensorboard]
    report_to: list[str] = field(default_factory=list)  # trackers: tensorboard, wandb, mlflow, ... (Accelerate's)
    break_lock: bool = False  # take over output_dir's lock held by a run on another host: only when that run is gone

    def validate(self) -> None:
        self.impl.validate()
        self.checkpoint.validate()
        self.train.validate()


def epoch_batches(accelerator, loader, state: TrainState, *also):
    """The batches of epoch ``state.epoch`` still to train. The loader and everything in ``also``
    (a batch sampler, a collator drawing masks) get ``set_epoch``, so an epoch's order and masks
    depend only on the seed and the epoch; a resumed run skips the ``state.batch_in_epoch``
    batches trained before its checkpoint."""
    for item in (loader, *also):
        item.set_epoch(state.epoch)
    skip = state.batch_in_epoch
    return accelerator.skip_first_batches(loader, skip) if skip else loader

"""Stage 1's configuration: the typed schema behind ``configs/pretrain*.yaml``.

Loaded with :func:`dapt.core.config.load_config` (YAML + ``key=value`` overrides; an unknown key or a
wrong type is an error naming the key); :meth:`PretrainConfig.validate` checks the values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from dapt.core.loop import LoopConfig, RunConfig
from dapt.data import CorpusConfig
from dapt.core.runtime import CheckpointConfig, ImplConfig, check_range, raise_config

# keys that may change between a run and its resume (everything else is the run's fingerprint)
RESUMABLE_KEYS = ("output_dir", "run_name", "tensorboard", "report_to", "overwrite", "checkpoint", "train.log_every",
                  "train.time_budget_minutes", "train.max_nonfinite", "impl.dataloader_workers", "impl.pin_memory", "data.num_proc",
                  "impl.ddp_timeout_minutes")


@dataclass
class ModelConfig:
    # the encoder to adapt (it needs a mask token): a Hub id, a local folder, or a stage-1 output (this run
    # is then its next phase)
    name_or_path: str = "distilbert/distilbert-base-uncased"
    revision: Optional[str] = None  # Hub branch, tag or commit of name_or_path; null: the default branch


@dataclass
class TrainConfig(LoopConfig):
    """The keys both stages share (:class:`~dapt.core.loop.LoopConfig`), plus stage 1's own."""

    lr: float = 1e-4  # peak AdamW learning rate, reached after warmup, then linear decay to min_lr
    warmup_steps: int = 0  # > 0 overrides warmup_ratio
    epochs: float = 1.0  # passes over the training blocks; a fraction is allowed (0.5: half an epoch)
    max_steps: int = 0  # > 0 overrides epochs
    eval_every: int = 500  # optimizer steps between held-out evaluations; 0: only before and after
    head_warmup_steps: int = 0  # head-only steps (encoder frozen) when the checkpoint has no MLM head
    head_warmup_lr: float = 1e-3  # peak learning rate of the head warm-up (no weight decay, linear decay to 0)
    # training minutes (resumed runs included), checked every log_every steps; when spent, the run evaluates
    # and saves as if finished (dapt_summary.json: stopped_by_time_budget); 0: no wall-clock limit
    time_budget_minutes: float = 0.0

    def validate(self, prefix: str = "train") -> None:
        super().validate(prefix)
        for key in ("lr", "head_warmup_lr", "time_budget_minutes"):
            check_range(f"{prefix}.{key}", getattr(self, key))
        for key in ("warmup_steps", "max_steps", "head_warmup_steps", "eval_every"):
            if getattr(self, key) < 0:
                raise_config(f"{prefix}.{key}", getattr(self, key), "an integer >= 0")
        if self.max_steps <= 0 and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise_config(f"{prefix}.epochs", self.epochs, "> 0 (or set train.max_steps)")


@dataclass
class PretrainImplConfig(ImplConfig):
    masked_only_logits: bool = True  # vocabulary projection only at masked positions


@dataclass
class PretrainConfig(RunConfig):
    output_dir: str = "runs/dapt"
    run_name: str = "dapt"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: PretrainImplConfig = field(default_factory=PretrainImplConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> None:
        super().validate()
        if self.data.block_size < 8:
            raise_config("data.block_size", self.data.block_size, "an integer >= 8")
        if not 0 < self.data.mlm_probability < 1:
            raise_config("data.mlm_probability", self.data.mlm_probability, "a probability in (0, 1)")
        if self.data.mask_replace_prob + self.data.random_replace_prob > 1:
            raise_config("data.random_replace_prob", self.data.random_replace_prob, "mask + random <= 1")

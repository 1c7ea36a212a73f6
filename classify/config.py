"""Stage 2's configuration: the typed schema behind ``configs/classify*.yaml``.

Loaded with :func:`dapt.core.config.load_config` (YAML + ``key=value`` overrides; an unknown key or a
wrong type is an error naming the key); :meth:`ClassifyConfig.validate` checks the values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from classify.data import LabelledSetConfig
from classify.model import TRUNCATION_STRATEGIES, default_span
from dapt.core.hub import repo_id_problem
from dapt.core.loop import LoopConfig, RunConfig
from dapt.core.runtime import CheckpointConfig, ImplConfig, check_range, raise_config

BEST_METRICS = {"val_acc": "max", "val_macro_f1": "max", "val_f1": "max", "val_roc_auc": "max", "val_loss": "min"}
# keys that may change between a run and its resume (everything else is the run's fingerprint);
# data.eval: the test sets are read only after training
RESUMABLE_KEYS = ("output_dir", "run_name", "tensorboard", "report_to", "overwrite", "push_to_hub", "hub_repo_id", "hub_private",
                  "checkpoint", "data.eval", "data.allow_pretraining_overlap", "train.log_every", "train.max_nonfinite", "impl.dataloader_workers", "impl.pin_memory",
                  "impl.ddp_timeout_minutes")


@dataclass
class ModelConfig:
    encoder: str = "runs/dapt-distilbert"  # stage-1 output dir, or any Hub encoder id
    revision: Optional[str] = None  # Hub branch, tag or commit of encoder; null: the default branch
    dropout: float = 0.1  # on the [CLS] state, before the linear head
    max_length: int = 512  # tokens, special tokens included
    truncation: str = "head"  # head | head+tail (the first head_tokens + the last ones) | windows
    # head+tail (and windows' training): tokens kept from the start, the rest from the end;
    # null: min(128, max_length // 4), valid for every max_length
    head_tokens: Optional[int] = None
    window_stride: Optional[int] = None  # windows: tokens shared by consecutive windows; null: min(128, max_length // 4)


def _imdb_train() -> LabelledSetConfig:
    return LabelledSetConfig(path="stanfordnlp/imdb", split="train")


def _eval_sets() -> dict:
    return {
        "imdb_test": LabelledSetConfig(path="stanfordnlp/imdb", split="test"),
        "sst2_validation": LabelledSetConfig(path="stanfordnlp/sst2", split="validation", text_column="sentence"),
    }


@dataclass
class DataConfig:
    # validation_size is split off it first; max_samples then subsets the rest
    train: LabelledSetConfig = field(default_factory=_imdb_train)
    # the class names in class-index order; null: the names the training data carries, else its
    # sorted label strings, else Negative/Positive for 0/1 (classify.labels)
    labels: Optional[List[str]] = None
    validation_size: float = 0.1  # stratified from train: a fraction (< 1) or a count (>= 1)
    # results.json key -> set; null drops one. A config file or command line that names sets replaces
    # these defaults (data.eval.NAME.path=FILE adds one; data.eval={...} replaces them all)
    eval: Dict[str, Optional[LabelledSetConfig]] = field(default_factory=_eval_sets)
    group_by_length: bool = True  # length-bucketed batches in shuffled order (less padding)
    bucket_batches: int = 50  # batches per length bucket
    balance_labels: bool = False  # every training batch holds the classes in the data's proportion
    # evaluate on a set that stage 1 trained the encoder on (classify.leakage): refused unless true
    allow_pretraining_overlap: bool = False


@dataclass
class TrainConfig(LoopConfig):
    """The keys both stages share (:class:`~dapt.core.loop.LoopConfig`, defaults changed here), plus stage 2's own."""

    epochs: int = 3  # passes over the training split, validated after each; the best epoch's weights are kept
    batch_size: int = 64  # per process; the global batch is batch_size x processes x grad_accum
    eval_batch_size: int = 128  # per process
    encoder_lr: float = 1e-5  # peak AdamW learning rate of the encoder (after warmup; linear decay to min_lr)
    head_lr: float = 5e-5  # peak AdamW learning rate of the linear head, same schedule
    min_lr: float = 1e-8  # where the linear decay ends
    warmup_ratio: float = 0.1  # of all optimizer steps W; step k < W uses LR (k+1)/(W+1), step W the full LR
    best_metric: str = "val_acc"  # val_acc | val_macro_f1 | val_f1 (binary) | val_roc_auc | val_loss (minimised)
    early_stopping_patience: int = 0  # stop after this many epochs without improvement; 0: never
    log_every: int = 10  # optimizer steps between metrics.jsonl lines

    def validate(self, prefix: str = "train") -> None:
        super().validate(prefix)
        for key in ("encoder_lr", "head_lr"):
            check_range(f"{prefix}.{key}", getattr(self, key))
        if self.epochs < 1:
            raise_config(f"{prefix}.epochs", self.epochs, "an integer >= 1")
        if self.best_metric not in BEST_METRICS:
            raise_config(f"{prefix}.best_metric", self.best_metric, " | ".join(BEST_METRICS))


@dataclass
class ClassifyCheckpointConfig(CheckpointConfig):
    every_epoch: bool = True  # a checkpoint after each epoch's validation


@dataclass
class ClassifyConfig(RunConfig):
    output_dir: str = "runs/classify"
    run_name: str = "classify"
    push_to_hub: bool = False  # after training: build the Hub folder and upload it (classify.release.publish)
    hub_repo_id: Optional[str] = None  # USER/NAME
    hub_private: bool = False  # push_to_hub: make the repo private (false never makes a private repo public)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    checkpoint: ClassifyCheckpointConfig = field(default_factory=ClassifyCheckpointConfig)

    def validate(self) -> None:
        super().validate()
        if self.model.truncation not in TRUNCATION_STRATEGIES:
            raise_config("model.truncation", self.model.truncation, "head, head+tail or windows")
        if self.model.max_length < 8:
            raise_config("model.max_length", self.model.max_length, "an integer >= 8")
        for key in ("head_tokens", "window_stride"):  # the defaults follow max_length; a value given stays checked
            if getattr(self.model, key) is None:
                setattr(self.model, key, default_span(self.model.max_length))
        if self.model.truncation in ("head+tail", "windows") and not 0 < self.model.head_tokens < self.model.max_length - 2:
            raise_config("model.head_tokens", self.model.head_tokens, f"between 1 and max_length - 3 ({self.model.max_length - 3})")
        if self.model.truncation == "windows" and not 0 <= self.model.window_stride < self.model.max_length - 2:
            raise_config("model.window_stride", self.model.window_stride, f"between 0 and max_length - 3 ({self.model.max_length - 3})")
        if not 0 <= self.model.dropout < 1:
            raise_config("model.dropout", self.model.dropout, "a probability in [0, 1)")
        if not (math.isfinite(self.data.validation_size) and self.data.validation_size > 0):
            raise_config("data.validation_size", self.data.validation_size, "a fraction in (0, 1) or a count >= 1")
        if self.push_to_hub and not self.hub_repo_id:
            raise_config("hub_repo_id", self.hub_repo_id, "USER/NAME when push_to_hub is true")
        if self.push_to_hub and repo_id_problem(self.hub_repo_id):  # a name the Hub rejects is found now, not after training
            raise_config("hub_repo_id", self.hub_repo_id, "USER/NAME that the Hub accepts (no '--' or '..', <= 96 characters)")

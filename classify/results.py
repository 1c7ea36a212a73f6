"""What a finished stage-2 run reports: the ``results.json`` document and ``examples.json``.

``results.json`` (written last; its presence marks a finished run): the run, the encoder and its
stage-1 summary, the task's classes (``task``), the training data actually used (``data``), the
hyperparameters, the training history with the validation calibration, and one block per
evaluation set (:mod:`classify.metrics`). ``examples.json``: a few short validation texts per class
with the final model's prediction, for the Space to offer as examples (correctly predicted ones
first, so a demo opens on an ordinary case).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from classify.labels import LabelSpace
from classify.model import clean_text
from dapt.core.lineage import read_summary

EXAMPLES = "examples.json"
#: examples.json: texts of this many characters at most, this many per class
EXAMPLE_MAX_CHARS, EXAMPLES_PER_CLASS = 400, 2


def run_results(config, accelerator, state, *, space: LabelSpace, data: dict, calibration: dict, evaluation: dict,
                plots: list[str], leakage: Optional[dict] = None) -> dict:
    """The results.json document of a stage-2 run (``config``: its ClassifyConfig; ``state``: the
    loop's ClassifyState; ``data``: the sizes :func:`classify.train.get_dataloaders` reports;
    ``leakage``: :func:`classify.leakage.check_pretraining_overlap`'s block)."""
    train, model = config.train, config.model
    return {
        "run_name": config.run_name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": model.encoder,
        "dapt": read_summary(model.encoder),  # dapt_summary.json of a stage-1 output, with its chain of phases
        "leakage": leakage,
        "task": space.describe(),
        "data": {"train": {key: data[key] for key in ("dataset", "split", "rows", "train", "validation", "dropped_empty")}},
        "hyperparameters": {
            "encoder_lr": train.encoder_lr, "head_lr": train.head_lr, "min_lr": train.min_lr, "warmup_ratio": train.warmup_ratio,
            "schedule": "linear", "epochs": train.epochs, "batch_size": train.batch_size, "grad_accum": train.grad_accum,
            "weight_decay": train.weight_decay, "mixed_precision": accelerator.mixed_precision, "max_length": model.max_length,
            "truncation": model.truncation, "head_tokens": model.head_tokens, "window_stride": model.window_stride,
            "dropout": model.dropout, "seed": train.seed, "num_processes": accelerator.num_processes,
        },
        "training": {
            "epochs": state.history,
            "best_epoch": state.best_epoch,
            "best_metric": train.best_metric,
            "best_value": state.best_value,
            "stopped_early": state.stopped_early,
            "wall_time_s": round(state.wall_time_s, 2),
            "train_samples_per_s": round(state.train_samples / state.train_time_s, 2) if state.train_time_s else None,
            "calibration": calibration,
        },
        "evaluation": evaluation,
        "plots": sorted(plots),
    }


def select_examples(texts: Sequence[str], predictions, names: Sequence[str], per_class: int = EXAMPLES_PER_CLASS,
                    max_chars: int = EXAMPLE_MAX_CHARS) -> list[dict]:
    """Up to ``per_class`` texts of each class (``predictions``: the validation set's, in ``texts``
    order): short ones (at most ``max_chars`` characters once cleaned), correctly predicted ones
    first, most confident first; listed class by class in turn, so the first is an ordinary case."""
    cleaned = [clean_text(text) for text in texts]
    confidence = predictions.prob if predictions.prob.ndim == 2 else np.stack([1 - predictions.prob, predictions.prob], 1)
    confidence = confidence.max(axis=1)
    chosen = []
    for index in range(len(names)):
        rows = [i for i in np.flatnonzero(predictions.label == index).tolist() if 0 < len(cleaned[i]) <= max_chars]
        rows.sort(key=lambda i: (predictions.pred[i] != index, -confidence[i], len(cleaned[i])))
        chosen.append(rows[:per_class])
    order = [rows[rank] for rank in range(per_class) for rows in chosen if rank < len(rows)]
    return [{"text": cleaned[i], "label": names[int(predictions.label[i])], "predicted": names[int(predictions.pred[i])],
             "confidence": round(float(confidence[i]), 4), "set": "validation"} for i in order]


def write_examples(path: Path, examples: list[dict]) -> Path:
    path.write_text(json.dumps({"examples": examples}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path

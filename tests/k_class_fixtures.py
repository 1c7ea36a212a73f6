"""A 4-class (AG News-like) stage-2 run folder as stage 2 writes it, for the distribution tests.

:func:`train_k_classifier` builds a tiny ``DistilBERTClassifier`` with four labels straight from a
``DaptClassifierConfig`` (random tiny BERT) and trains it a few Adam steps on toy phrases, so its
predictions differ by class. :func:`make_k_run_dir` lays out a run folder: ``model/``,
``results.json`` (the issue-18 schema: ``task``, ``data``, the K > 2 evaluation blocks with
``per_class`` and ``confusion_matrix``), ``plots/``, ``examples.json``, ``metrics.jsonl`` and
``config.yaml``. Every number in ``results.json`` is made-up TEST DATA; no dataset text is copied.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

AG_LABELS = {0: "World", 1: "Sports", 2: "Business", 3: "Sci/Tech"}
#: toy phrases per class, in the tiny tokenizer's vocabulary (tests/helpers.py)
TOY_TEXTS = {
    0: ["people of the world", "the world and its people", "men and women of the world", "old world life"],
    1: ["the first of three", "two in the last one", "the first and the last", "three to one at the end"],
    2: ["new work made big", "make more work", "big new work", "they made it big"],
    3: ["i think i know", "real music", "we know the real music", "think and know"],
}
PNG = b"\x89PNG\r\n\x1a\n test image"

_TRAINED: dict[tuple, Path] = {}


def train_k_classifier(tokenizer_dir, *, seed: int = 0, steps: int = 40, **settings):
    """(classifier, tokenizer): a tiny 4-class classifier trained on :data:`TOY_TEXTS`; trained once
    per (tokenizer, seed, settings) and test session, then reloaded from disk."""
    import torch

    from classify import model as M
    from tests.helpers import tiny_bert_config

    key = (str(tokenizer_dir), seed, steps, tuple(sorted(settings.items())))
    if key in _TRAINED and (_TRAINED[key] / "model.safetensors").is_file():
        return M.load_classifier(_TRAINED[key])
    tokenizer = M.load_tokenizer(tokenizer_dir)
    settings = {"max_length": 64, "truncation": "head", "head_tokens": 16, **settings}
    torch.manual_seed(seed)
    config = M.DaptClassifierConfig(encoder_config=tiny_bert_config(len(tokenizer)).to_dict(), id2label=dict(AG_LABELS),
                                    **settings)
    classifier = M.DistilBERTClassifier(config)
    texts = [t for label in AG_LABELS for t in TOY_TEXTS[label]]
    labels = torch.tensor([label for label in AG_LABELS for _ in TOY_TEXTS[label]])
    ids, mask = M.pad_batch(M.encode_reviews(tokenizer, texts, 64), tokenizer.pad_token_id)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=3e-3)
    classifier.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(classifier(ids, mask).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    classifier.eval()
    cache = Path(tempfile.mkdtemp(prefix="dapt-k-toy-"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    _TRAINED[key] = classifier.save_pretrained(cache, tokenizer=tokenizer)
    return classifier, tokenizer


def k_eval_block(dataset: str, split: str, accuracy: float, n: int, *, calibrated: bool = True) -> dict:
    """One evaluation block of a 4-class run (made-up numbers, internally consistent counts)."""
    labels = list(AG_LABELS.values())
    support = n // len(labels)
    right = round(accuracy * support)
    matrix = [[right if i == j else 0 for j in range(len(labels))] for i in range(len(labels))]
    for i in range(len(labels)):
        matrix[i][(i + 1) % len(labels)] = support - right  # every miss goes to the next class
    per_class = {name: {"precision": round(accuracy - 0.01 * i, 4), "recall": round(accuracy + 0.01 * i, 4),
                        "f1": round(accuracy - 0.005 * i, 4), "support": support, "roc_auc": round(0.9 + 0.02 * i, 4)}
                 for i, name in enumerate(labels)}
    block = {
        "dataset": dataset, "split": split, "n": n, "accuracy": accuracy, "macro_f1": round(accuracy - 0.0123, 4),
        "micro_f1": accuracy, "macro_precision": round(accuracy - 0.0211, 4), "macro_recall": round(accuracy + 0.0017, 4),
        "roc_auc": 0.9345, "loss": 0.4321, "per_class": per_class,
        "confusion_matrix": {"labels": labels, "matrix": matrix},
        "by_length": {"<=128": {"n": n, "accuracy": accuracy}, "129-512": {"n": 0, "accuracy": None},
                      ">512": {"n": 0, "accuracy": None}},
    }
    if calibrated:
        block["calibration"] = {"temperature": 1.2345, "ece_bins": 15, "before": {"ece": 0.0812, "brier": 0.3456, "nll": 0.5678},
                                "after": {"ece": 0.0321, "brier": 0.3333, "nll": 0.5432}}
    return block


def fake_k_results(*, train_dataset: str = "fancyzhx/ag_news", evaluation: dict | None = None,
                   truncation: str = "head", max_length: int = 64, head_tokens: int = 16) -> dict:
    """results.json of a 4-class stage-2 run (the issue-18 schema); every number is made-up TEST DATA."""
    labels = list(AG_LABELS.values())
    if evaluation is None:
        evaluation = {"ag_news_test": k_eval_block(train_dataset, "test", 0.8765, 1600)}
    return {
        "run_name": "unit-test-k-run",
        "created": "2026-12-02T03:04:05+00:00",
        "base_model": "distilbert/distilbert-base-uncased",
        "dapt": None,
        "task": {"num_labels": 4, "labels": labels, "labels_from": "the label_names metadata of train.parquet"},
        "data": {"train": {"dataset": train_dataset, "split": "train", "rows": 6000, "train": 5400, "validation": 600}},
        "hyperparameters": {
            "encoder_lr": 3e-5, "head_lr": 1e-3, "min_lr": 1e-6, "warmup_ratio": 0.06, "schedule": "linear", "epochs": 2,
            "batch_size": 8, "grad_accum": 1, "weight_decay": 0.01, "mixed_precision": "no", "max_length": max_length,
            "truncation": truncation, "head_tokens": head_tokens, "window_stride": 16, "dropout": 0.1, "seed": 0,
            "num_processes": 1,
        },
        "training": {
            "epochs": [
                {"epoch": 1, "train_loss": 1.2345, "train_acc": 0.51, "val_loss": 0.9876, "val_acc": 0.62,
                 "val_macro_f1": 0.6012, "val_roc_auc": 0.81},
                {"epoch": 2, "train_loss": 0.6543, "train_acc": 0.83, "val_loss": 0.5123, "val_acc": 0.8456,
                 "val_macro_f1": 0.8401, "val_roc_auc": 0.93},
            ],
            "best_epoch": 2, "best_metric": "val_macro_f1", "best_value": 0.8401, "stopped_early": False,
            "wall_time_s": 12.5,
            "calibration": {"temperature": 1.2345, "ece_bins": 15, "fitted_on": "validation", "n": 600,
                            "before": {"ece": 0.09, "brier": 0.35, "nll": 0.6}, "after": {"ece": 0.03, "brier": 0.34, "nll": 0.55}},
        },
        "evaluation": evaluation,
    }


def k_examples() -> dict:
    """examples.json as stage 2 writes it: a few short validation texts per class, correct ones first."""
    examples = [{"text": TOY_TEXTS[label][0], "label": name, "predicted": name, "confidence": 0.9, "set": "validation"}
                for label, name in AG_LABELS.items()]
    examples.append({"text": TOY_TEXTS[0][1], "label": "World", "predicted": "Sports", "confidence": 0.4, "set": "validation"})
    return {"examples": examples}


def make_k_run_dir(directory, tokenizer_dir, *, results: dict | None = None, examples: bool = True,
                   eval_data: dict | None = None, **settings):
    """A 4-class stage-2 run folder; returns (run_dir, classifier, tokenizer). ``eval_data``: the
    ``data.eval`` sets written to config.yaml (what a real run's config holds)."""
    import yaml

    directory = Path(directory)
    classifier, tokenizer = train_k_classifier(tokenizer_dir, **settings)
    classifier.save_pretrained(directory / "model", tokenizer=tokenizer)
    config = classifier.config
    results = results or fake_k_results(truncation=config.truncation, max_length=config.max_length,
                                        head_tokens=config.head_tokens)
    (directory / "results.json").write_text(json.dumps(results, indent=2))
    (directory / "plots").mkdir(exist_ok=True)
    for name in results["evaluation"]:
        for kind in ("confusion", "roc", "reliability"):
            (directory / "plots" / f"{kind}_{name}.png").write_bytes(PNG)
    if examples:
        (directory / "examples.json").write_text(json.dumps(k_examples(), indent=2))
    (directory / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.38}) + "\n")
    data = {"train": {"path": "fancyzhx/ag_news", "split": "train"}, "eval": eval_data or {}}
    (directory / "config.yaml").write_text(yaml.safe_dump({"output_dir": str(directory), "data": data}))
    return directory, classifier, tokenizer

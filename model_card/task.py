"""What a run was, read from its ``results.json`` (and the classifier config): the labels, the data
it was trained and evaluated on, and so which card it gets.

* The **IMDb sentiment card** (the flagship, worded for movie reviews): two classes named
  Negative / Positive (or neg / pos, as the Hub's IMDb names them), trained on IMDb, or on data results.json does not name (a run written before
  results.json recorded ``data``; stage 2 then only knew IMDb).
* The **generic card** for everything else: a K-class text classifier, its label list, the training
  and evaluation data actually used; sentiment wording only for Negative / Positive labels.

An evaluation set is **in domain** when it is read from the training dataset (another split of it),
**out of domain** when it is another dataset; with no recorded training data, neither is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from dapt.core import hub

#: results.json evaluation key -> how the flagship sets appear in the card and the model-index (a
#: set under such a key read from local files is the same data as the Hub dataset: ../shared/data).
EVAL_SETS = {
    "imdb_test": {"name": "IMDb", "default_dataset": "stanfordnlp/imdb", "default_split": "test"},
    "sst2_validation": {"name": "SST-2", "default_dataset": "stanfordnlp/sst2", "default_split": "validation"},
}
IMDB_HUB_ID = "stanfordnlp/imdb"
#: how an IMDb copy is named once dapt-publish has made local paths path-free (its folder's name)
IMDB_LOCAL_NAMES = {"imdb", "aclimdb"}
BINARY_DEFAULT_LABELS = ["Negative", "Positive"]


def is_hub_id(name: Any) -> bool:
    """``owner/name`` that is not a local path (``runs/x`` that exists on disk is a path)."""
    return hub.is_hub_id(name, owner_required=True)


def _local_name(dataset: Any) -> str:
    """A dataset path's own name (``../data/ag_news`` -> ``ag_news``, ``train.parquet`` -> ``train``)."""
    return PurePosixPath(str(dataset).rstrip("/")).stem.lower()


def _display_name(dataset: Any) -> str:
    """Local data by its own name (``../data/ag_news`` -> ``ag_news``): a relative path says nothing
    to a reader of the card, and an absolute one was made path-free by dapt-publish already."""
    return PurePosixPath(str(dataset).rstrip("/")).name or str(dataset)


def is_sentiment(labels) -> bool:
    """Two classes, negative then positive (``Negative`` / ``Positive``, or a Hub dataset's ``neg`` / ``pos``)."""
    names = [str(label).strip().lower() for label in labels]
    return len(names) == 2 and names[0] in ("negative", "neg") and names[1] in ("positive", "pos")


def is_imdb(dataset: Any) -> bool:
    return dataset == IMDB_HUB_ID or (not is_hub_id(dataset) and _local_name(dataset) in IMDB_LOCAL_NAMES)


@dataclass
class EvalSet:
    """One ``results["evaluation"]`` block as the card shows it."""

    key: str
    name: str  # display name
    dataset: str  # the Hub id, or the recorded (path-free) name of local data
    hub_id: str | None  # the Hub dataset id, None for local data
    split: str
    in_domain: bool | None  # read from the training dataset? None: the training data is not recorded
    block: dict = field(repr=False)

    def context(self) -> dict:
        """What the template reads: the block's fields, and these."""
        return {**self.block, "key": self.key, "name": self.name, "dataset": self.dataset, "hub_id": self.hub_id,
                "split": self.split, "in_domain": self.in_domain}


@dataclass
class Task:
    labels: list[str]
    labels_from: str | None
    train: dict | None  # results["data"]["train"]: dataset, split, rows, train, validation
    eval_sets: list[EvalSet]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def binary(self) -> bool:
        return self.num_labels == 2

    @property
    def sentiment(self) -> bool:
        return is_sentiment(self.labels)

    @property
    def imdb(self) -> bool:
        """The flagship IMDb sentiment card."""
        return self.sentiment and (self.train is None or is_imdb(self.train.get("dataset")))

    @property
    def train_hub_id(self) -> str | None:
        dataset = (self.train or {}).get("dataset")
        if is_hub_id(dataset):
            return dataset
        return IMDB_HUB_ID if self.imdb else None

    @property
    def train_name(self) -> str | None:
        """The training dataset as the card names it: its Hub id, or the name of the local data."""
        dataset = (self.train or {}).get("dataset")
        return None if dataset is None else (dataset if is_hub_id(dataset) else _display_name(dataset))

    @property
    def datasets(self) -> list[str]:
        """The Hub ids of the data actually used (training first), each once; local data has none."""
        ids = [self.train_hub_id] + [e.hub_id for e in self.eval_sets]
        return list(dict.fromkeys(i for i in ids if i))

    @property
    def out_of_domain(self) -> list[EvalSet]:
        return [e for e in self.eval_sets if e.in_domain is False]

    @property
    def in_domain(self) -> list[EvalSet]:
        return [e for e in self.eval_sets if e.in_domain]


def _labels(results: dict, config: dict | None) -> tuple[list[str], str | None]:
    task = results.get("task") or {}
    if task.get("labels"):
        return [str(label) for label in task["labels"]], task.get("labels_from")
    id2label = (config or {}).get("id2label")
    if id2label:
        return [str(id2label[key]) for key in sorted(id2label, key=int)], "the classifier's config.json"
    return list(BINARY_DEFAULT_LABELS), None


def _eval_set(key: str, block: dict, task: "Task") -> EvalSet:
    recorded = block.get("dataset")
    spec = EVAL_SETS.get(key) if task.sentiment else None
    if spec is not None:  # the flagship sets: a local copy is the Hub dataset (../shared/data)
        hub_id = recorded if is_hub_id(recorded) else spec["default_dataset"]
        name, dataset, split = spec["name"], hub_id, block.get("split", spec["default_split"])
    else:
        hub_id = recorded if is_hub_id(recorded) else None
        dataset = key if recorded is None else (hub_id or _display_name(recorded))
        name, split = key, str(block.get("split", "–"))
    if task.train and task.train.get("dataset") is not None:
        train_hub, set_hub = task.train_hub_id, hub_id
        if train_hub and set_hub:
            in_domain = train_hub == set_hub
        else:
            in_domain = _local_name(task.train["dataset"]) == _local_name(recorded if recorded is not None else "")
    elif task.imdb:  # a run from before results.json recorded its data: trained on IMDb
        in_domain = is_imdb(hub_id)
    else:
        in_domain = None
    return EvalSet(key, name, dataset, hub_id, split, in_domain, block)


def describe(results: dict, config: dict | None = None) -> Task:
    """The :class:`Task` of a stage-2 run's ``results`` (``config``: its classifier config.json, for
    the labels of a results.json that does not record them)."""
    labels, labels_from = _labels(results, config)
    train = ((results.get("data") or {}).get("train")) or None
    task = Task(labels, labels_from, train, [])
    evaluation = results.get("evaluation") or {}
    if task.imdb:  # the flagship card lists its two sets first, in this order (as it always has)
        keys = [k for k in EVAL_SETS if evaluation.get(k)] + [k for k in evaluation if k not in EVAL_SETS and evaluation[k]]
    else:
        keys = [k for k in evaluation if evaluation[k]]
    task.eval_sets = [_eval_set(key, evaluation[key], task) for key in keys]
    return task

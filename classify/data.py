"""Labelled review data for stage 2: loading, checking, seeded stratified splits, batching.

* :class:`LabelledSetConfig` - one labelled split (Hub dataset or local files) and an optional
  seeded, stratified subset of it; read through :func:`dapt.core.sources.load_source`.
* :func:`load_labelled` - the split as texts and class indices of the task's label set
  (:mod:`classify.labels`: integers 0..K-1 or names); bad input raises
  :class:`~dapt.core.sources.DataError` naming the file (or Hub split), the column and the row.
* :func:`stratified_split` / :func:`stratified_subset` - seeded, class-balanced index splits.
* :class:`ReviewDataset` - token ids from :func:`classify.model.encode_reviews` (the tokenization
  inference uses, text cleaning included), so training and serving see the same inputs; in
  ``windows`` mode one row per window (:func:`classify.model.encode_windows`), each carrying the
  index of its review, so evaluation can average a review's windows as inference does.
* :func:`training_truncation` - what training reads in each mode (``windows`` trains on head+tail).
* :class:`LengthBucketBatchSampler` - batches of similar length in shuffled order (optionally with
  the classes balanced in every batch), a pure function of ``(seed, epoch)``; accelerate shards its
  batches across processes and skips into it on resume.
* :class:`Collator` - dynamic padding to a multiple of 8.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from classify.model import encode_reviews, encode_windows, pad_batch
from classify.labels import LabelSpace, carried_names, encode_labels, resolve_label_space
from dapt.core.sources import DataError, SourceConfig, detect_kind, load_source
from dapt.core.text import is_blank

__all__ = [
    "DataError",
    "LabelledSetConfig",
    "LabelledSet",
    "load_labelled",
    "stratified_split",
    "stratified_subset",
    "ReviewDataset",
    "training_truncation",
    "LengthBucketBatchSampler",
    "Collator",
]


@dataclass
class LabelledSetConfig:
    """One labelled split: ``path`` is a Hub dataset id, a file, or a directory of ``{split}.*``."""

    path: str = "stanfordnlp/imdb"  # Hub dataset id, a .parquet/.jsonl/.csv file, a folder of {split}.* files, aclImdb/
    split: str = "train"  # the Hub split, or which {split}.* file of a folder (aclImdb: train | test)
    kind: str = "auto"  # auto | hub | files | aclimdb
    text_column: str = "text"  # the column holding the text (tables and Hub datasets)
    label_column: str = "label"  # the column holding the labels: integers 0..K-1 or class names (data.labels)
    max_samples: int = 0  # 0: all rows; else a seeded, stratified subset of this many
    name: Optional[str] = None  # the dataset name results.json reports (default: path)

    def source(self) -> SourceConfig:
        return SourceConfig(
            path=self.path, kind=self.kind, splits=[self.split],
            text_column=self.text_column, label_column=self.label_column,
        )

    def describe(self) -> str:
        """Where the rows come from, for messages: the file, or the Hub dataset and split."""
        path = Path(self.path)
        if path.is_dir():
            found = sorted(glob.glob(str(path / f"{glob.escape(self.split)}.*")))
            return found[0] if len(found) == 1 else f"{path} split {self.split}"
        return str(path) if path.is_file() else f"{self.path} split {self.split}"


@dataclass
class LabelledSet:
    texts: list[str]
    labels: list[int]  # class indices of ``space``
    where: str  # file or Hub split, for messages and results.json
    total: int  # rows in the full split, before any subset
    space: Optional[LabelSpace] = None  # the task's classes
    rows: Optional[list[int]] = None  # each example's row in the full split (its identity); None: 0, 1, ...

    def __post_init__(self):
        if self.rows is None:
            self.rows = list(range(len(self.labels)))

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices: Sequence[int]) -> "LabelledSet":
        return LabelledSet([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.where, self.total, self.space,
                           [self.rows[i] for i in indices])


def load_labelled(config: LabelledSetConfig, seed: int = 0, *, space: Optional[LabelSpace] = None,
                  declared: Optional[Sequence[str]] = None) -> LabelledSet:
    """The split as texts (raw; :func:`encode_reviews` cleans them) and class indices, subset if asked.

    ``space``: the task's classes, which every label must belong to (an evaluation set read for a
    trained model). Without it the split decides them (the training split,
    :func:`classify.labels.resolve_label_space`), with ``declared`` (``data.labels``) first."""
    where = config.describe()
    source = config.source()
    if config.kind == "text_dir":
        raise DataError(f"{config.path}: kind text_dir has no labels; use files, hub or aclimdb")
    if detect_kind(source) == "text_dir":  # a folder without tables: look for {split}.* files
        source.kind = "files"
    dataset = load_source(source)  # missing columns raise DataError naming file and column
    columns = dataset[:]
    texts, raw = columns["text"], columns["label"]
    bad_text = next((i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)), None)
    if bad_text is not None:
        raise DataError(f"{where}: column {config.text_column!r} row {bad_text} is {type(texts[bad_text]).__name__}, not text")
    names, names_from = carried_names(dataset, config)
    if space is None:
        space = resolve_label_space(raw, where, config.label_column, declared, names, names_from)
    labels = encode_labels(raw, space, where, config.label_column, names, names_from)
    labelled = LabelledSet([t or "" for t in texts], labels, where, len(labels), space)
    if config.max_samples and config.max_samples < len(labelled):
        labelled = labelled.select(stratified_subset(labelled.labels, config.max_samples, seed))
    return labelled


def _count(size: float, total: int, what: str) -> int:
    count = int(size) if size >= 1 else round(size * total)
    if not 2 <= count <= total - 2:
        raise DataError(f"{what} {size} gives {count} of {total} rows: need at least 2 on each side")
    return count


def stratified_split(labels: Sequence[int], size: float, seed: int) -> tuple[list[int], list[int]]:
    """``(rest, held_out)`` index lists; ``size`` < 1 is a fraction, >= 1 a count. Class shares
    are kept on both sides; the same seed gives the same split."""
    count = _count(size, len(labels), "validation_size")
    indices, labels = np.arange(len(labels)), np.asarray(labels)
    classes, members = np.unique(labels, return_counts=True)
    if members.min() < 2 or count < len(classes) or len(labels) - count < len(classes):
        raise DataError(f"validation_size {size} ({count} of {len(labels)} rows) cannot hold every class on both sides: "
                        f"{len(classes)} classes, the smallest with {members.min()} rows (class {classes[members.argmin()]})")
    rest, held = train_test_split(indices, test_size=count, stratify=labels, random_state=seed)
    return sorted(rest.tolist()), sorted(held.tolist())


def stratified_subset(labels: Sequence[int], count: int, seed: int) -> list[int]:
    """A seeded, class-balanced subset of ``count`` indices (in original order)."""
    if count >= len(labels):
        return list(range(len(labels)))
    indices = np.arange(len(labels))
    if count < 2:
        return sorted(np.random.default_rng(seed).choice(indices, size=count, replace=False).tolist())
    subset, _ = train_test_split(indices, train_size=count, stratify=np.asarray(labels), random_state=seed)
    return sorted(subset.tolist())


def training_truncation(truncation: str) -> str:
    """The truncation training uses for a model whose inference mode is ``truncation``.

    ``windows`` trains on ``head+tail`` (one sequence per review): the same examples, steps and
    cost as the head+tail mode, so an ablation arm measures the inference rule, not more training
    data; a window of the middle of a review would carry its label without its verdict. Validation
    (model selection, the temperature) and evaluation use the windows themselves."""
    return "head+tail" if truncation == "windows" else truncation


class ReviewDataset(torch.utils.data.Dataset):
    """Token ids (special tokens included, cut as the classifier will be at inference), a label,
    and the row's index - gathered with the predictions so every row is counted once.

    ``head`` / ``head+tail``: one row per review. ``windows``: one row per window of
    ``max_length`` tokens (consecutive windows share ``window_stride`` tokens); ``review_of[row]``
    is the review a row belongs to, and ``num_reviews`` the number of reviews. ``review_tokens``:
    each review's whole length in tokens (special tokens included), before any cut."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int], tokenizer, max_length: int,
                 truncation: str = "head", head_tokens: int = 128, window_stride: int = 128):
        labels = list(labels)
        if truncation == "windows":
            windows, review_tokens = encode_windows(tokenizer, list(texts), max_length, window_stride, with_lengths=True)
            self.ids = [ids for review in windows for ids in review]
            self.review_of = np.repeat(np.arange(len(windows)), [len(review) for review in windows])
        else:
            self.ids, review_tokens = encode_reviews(tokenizer, list(texts), max_length, truncation, head_tokens, with_lengths=True)
            self.review_of = np.arange(len(self.ids))
        self.review_tokens = np.array(review_tokens, dtype=np.int64)  # each whole review, nothing cut
        self.num_reviews = len(labels)
        self.labels = [labels[review] for review in self.review_of.tolist()]  # per row
        self.lengths = [len(ids) for ids in self.ids]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.ids[index], "label": self.labels[index], "index": index}


def drop_empty(labelled: LabelledSet) -> tuple[LabelledSet, int]:
    """Training rows whose text is empty after cleaning carry no signal: drop and count them."""
    keep = [i for i, text in enumerate(labelled.texts) if not is_blank(text)]  # cleaned once, when encoded
    return (labelled.select(keep) if len(keep) < len(labelled) else labelled), len(labelled) - len(keep)


class Collator:
    """Right-pads a batch to its longest row rounded up to a multiple of 8."""

    def __init__(self, pad_token_id: int, multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple_of = multiple_of

    def __call__(self, rows: list[dict]) -> dict:
        input_ids, attention_mask = pad_batch([r["input_ids"] for r in rows], self.pad_token_id, self.multiple_of)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
        }


class LengthBucketBatchSampler:
    """Index batches; every batch is full but the last one.

    ``shuffle=True`` (training): a seeded permutation of the rows; with ``group_by_length`` it is
    cut into buckets of ``bucket_batches`` batches, each sorted by length and cut into batches, so a
    batch holds reviews of similar length (little padding); then the order of the batches is
    shuffled in runs of ``processes`` neighbours (accelerate deals batch ``i`` to process
    ``i % processes``, so the processes of one step get similar lengths and wait less for each
    other). The short remainder batch stays last, where accelerate's sharding expects it. The
    result depends only on ``(seed, epoch)``: every process computes the same list and takes its
    share, and a resumed run recomputes it and skips the batches already done.

    With ``labels`` (training), every batch also holds the classes in the proportion of its bucket
    (stratified batches): with small batches, a batch of mostly one class pushes the head's
    decision threshold around, which costs accuracy when a short run ends on such a swing.

    ``shuffle=False`` (evaluation): rows sorted by length (longest first) when grouping, else in
    order. The batches do not depend on the number of processes, so neither do the predictions.
    """

    drop_last = False

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0,
                 group_by_length: bool = True, bucket_batches: int = 50, processes: int = 1,
                 labels: Optional[Sequence[int]] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.group_by_length = group_by_length
        self.bucket_batches = max(1, bucket_batches)
        self.processes = max(1, processes)
        self.labels = None if labels is None else list(labels)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def batches(self) -> list[list[int]]:
        n, size = len(self.lengths), self.batch_size
        by_length = lambda i: (-self.lengths[i], i)  # noqa: E731 - longest first, ties by index
        if not self.shuffle:
            order = sorted(range(n), key=by_length) if self.group_by_length else list(range(n))
            return [order[s : s + size] for s in range(0, n, size)]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=generator).tolist()
        if self.group_by_length:
            span = size * self.bucket_batches
            order = [i for s in range(0, n, span) for i in self._arrange(order[s : s + span], by_length)]
        elif self.labels is not None:
            order = self._arrange(order, None)
        batches = [order[s : s + size] for s in range(0, n, size)]
        last = [batches.pop()] if batches and len(batches[-1]) < size else []
        if self.group_by_length:
            step = self.processes
            runs = [batches[s : s + step] for s in range(0, len(batches), step)]
            tail = [runs.pop()] if runs and len(runs[-1]) < step else []
            runs = [runs[i] for i in torch.randperm(len(runs), generator=generator).tolist()] + tail
            batches = [batch for run in runs for batch in run]
        return batches + last

    def _arrange(self, rows: list[int], key) -> list[int]:
        """``rows`` sorted by ``key`` (if any); with labels, the classes interleaved so that any
        ``batch_size`` consecutive rows hold them in the proportion of ``rows`` - each row goes to
        its quantile within its class, so lengths stay sorted within each class."""
        if self.labels is None:
            return sorted(rows, key=key)
        position = {}
        for label in sorted({self.labels[i] for i in rows}):
            members = [i for i in rows if self.labels[i] == label]
            if key is not None:
                members.sort(key=key)
            position.update({i: ((rank + 0.5) / len(members), label) for rank, i in enumerate(members)})
        return sorted(rows, key=position.__getitem__)

    def __iter__(self):
        return iter(self.batches())

"""The label set of a stage-2 task: K >= 2 class names in class-index order, and a labelled split's
raw labels (integers 0..K-1, or names) checked and turned into class indices.

Where the names come from, the first that applies:

1. ``data.labels`` in the config: the names, in class-index order. Integer labels index into it;
   string labels must be among it.
2. The names the training data carries: a Hub dataset's ``ClassLabel`` feature, or a parquet
   file's schema metadata ``label_names`` (comma-separated). ``data.labels``, when given as well,
   must agree with them (same count; the same names but for case, or one a shortening of the
   other such as ``neg`` / ``Negative``): a different order would silently swap classes.
3. String labels: the sorted distinct strings of the training split (logged).
4. Integer labels 0/1 without names: ``Negative`` / ``Positive`` (what earlier versions called
   them); integers 0..K-1 without names: ``"0"`` ... ``"K-1"``.

Every problem is a :class:`~dapt.core.sources.DataError` naming the file (or Hub split), the
column, the row (counting from 0) and the value, raised while reading, before anything is written.
"""

from __future__ import annotations

import glob
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dapt.core.sources import DataError

logger = logging.getLogger(__name__)

BINARY_DEFAULT = ("Negative", "Positive")
INT, STR = "integer", "name"


@dataclass(frozen=True)
class LabelSpace:
    """The task's classes: ``names[i]`` is class ``i``; ``source`` says where the names came from."""

    names: tuple[str, ...]
    source: str

    def __post_init__(self):
        if len(self.names) < 2:
            raise DataError(f"{self.source}: {len(self.names)} class ({', '.join(self.names) or 'none'}): "
                            "a classifier needs at least 2 classes")
        duplicate = next((n for i, n in enumerate(self.names) if n in self.names[:i]), None)
        if duplicate is not None:
            raise DataError(f"{self.source}: the class name {duplicate!r} appears twice in {list(self.names)}")

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.names)}

    def describe(self) -> dict:
        """results.json's ``task`` block."""
        return {"num_labels": self.num_labels, "labels": list(self.names), "labels_from": self.source}

    @classmethod
    def from_id2label(cls, id2label: dict, source: str) -> "LabelSpace":
        """A model's classes (its config's ``id2label``, keys possibly strings as in config.json)."""
        ordered = sorted((int(k), str(v)) for k, v in id2label.items())
        if [k for k, _ in ordered] != list(range(len(ordered))):
            raise ValueError(f"{source}: id2label keys must be 0..K-1, got {[k for k, _ in ordered]}")
        return cls(tuple(v for _, v in ordered), source)


# --------------------------------------------------------------------------------------------
# Reading raw labels


def _missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def kind_of_labels(values: Sequence, where: str, column: str) -> str:
    """``INT`` or ``STR``: every value must be present and of one kind. ``1.0`` counts as an
    integer: one missing value (NaN) turns a whole integer column into floats (pandas, CSV)."""
    missing = [row for row, value in enumerate(values) if _missing(value) or (isinstance(value, str) and not value.strip())]
    if missing:
        raise DataError(f"{where}: column {column!r} row {missing[0]} is missing (empty or NaN); {len(missing)} of "
                        f"{len(values)} rows have no label (rows count from 0)")
    first: dict[str, tuple[int, object]] = {}
    for row, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)):
            raise DataError(f"{where}: column {column!r} row {row} is {value!r}: labels are class indices or names, not booleans")
        if isinstance(value, str):
            kind = STR
        elif isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
            kind = INT
        else:
            raise DataError(f"{where}: column {column!r} row {row} is {value!r}: labels are class indices 0..K-1 or names")
        first.setdefault(kind, (row, value))
    if not first:
        raise DataError(f"{where}: column {column!r} has no rows")
    if first.keys() == {STR}:  # a CSV column holding "World" and "3" is text throughout: "3" is an index in disguise
        digits = next(((row, v) for row, v in enumerate(values) if re.fullmatch(r"\s*-?\d+\s*", v)), None)
        names = next(((row, v) for row, v in enumerate(values) if not re.fullmatch(r"\s*-?\d+\s*", v)), None)
        if digits and names:
            first = {INT: digits, STR: names}
    if len(first) == 2:
        (int_row, int_value), (str_row, str_value) = first[INT], first[STR]
        raise DataError(f"{where}: column {column!r} mixes class indices and names: row {int_row} is {int_value!r}, "
                        f"row {str_row} is {str_value!r}; use one kind throughout")
    return next(iter(first))


def carried_names(dataset, config) -> tuple[Optional[list[str]], str]:
    """The class names a split carries, and where they were found: a ``ClassLabel`` feature, or a
    parquet file's ``label_names`` schema metadata; ``(None, "")`` when it carries none."""
    import datasets

    feature = dataset.features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), f"the ClassLabel feature of {config.describe()}"
    for file in _parquet_files(config):
        import pyarrow.parquet as pq

        metadata = pq.read_schema(file).metadata or {}
        if b"label_names" in metadata:
            names = [n.strip() for n in metadata[b"label_names"].decode("utf-8").split(",")]
            return names, f"the label_names metadata of {file}"
    return None, ""


def _parquet_files(config) -> list[str]:
    """The parquet files a labelled-set config reads (a file, a glob, or ``DIR/{split}.parquet``)."""
    path = Path(config.path)
    if path.is_dir():
        pattern = [str(path / f"{glob.escape(config.split)}.parquet"), str(path / f"{glob.escape(config.split)}-*.parquet")]
        return sorted(f for p in pattern for f in glob.glob(p))
    if path.is_file():
        return [str(path)] if path.suffix == ".parquet" else []
    return sorted(f for f in glob.glob(config.path) if f.endswith(".parquet")) if glob.has_magic(config.path) else []


def _normal(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def names_agree(declared: Sequence[str], carried: Sequence[str]) -> bool:
    """Same count, and each pair the same name but for case and punctuation, or one a shortening
    of the other (``neg`` / ``Negative``, at least 3 characters)."""
    def same(a: str, b: str) -> bool:
        a, b = _normal(a), _normal(b)
        short, long = sorted((a, b), key=len)
        return a == b or (len(short) >= 3 and long.startswith(short))
    return len(declared) == len(carried) and all(same(a, b) for a, b in zip(declared, carried))


# --------------------------------------------------------------------------------------------
# The training split decides the label space; every other split is read against it


def resolve_label_space(values: Sequence, where: str, column: str, declared: Optional[Sequence[str]],
                        carried: Optional[Sequence[str]], carried_from: str = "") -> LabelSpace:
    """The task's classes from the training split's raw labels (module docstring: the order of the sources)."""
    kind = kind_of_labels(values, where, column)
    if declared is not None:
        declared = [str(name) for name in declared]
        if kind == INT and carried is not None and not names_agree(declared, carried):
            raise DataError(f"data.labels {declared} disagrees with {carried_from}: {list(carried)} "
                            "(a different order would swap classes; drop data.labels or list the same names in the same order)")
        return LabelSpace(tuple(declared), "data.labels")
    if kind == STR:
        names = tuple(sorted({str(v) for v in values}))
        logger.info(f"{where}: class names from the sorted label strings: {list(names)} (set data.labels to choose the order)")
        return LabelSpace(names, f"the sorted label strings of {where}")
    if carried is not None:
        return LabelSpace(tuple(carried), carried_from)
    top = int(max(int(v) for v in values))
    if set(int(v) for v in values) <= {0, 1}:
        return LabelSpace(BINARY_DEFAULT, "the binary default (0 = Negative, 1 = Positive)")
    return LabelSpace(tuple(str(i) for i in range(top + 1)), f"the class indices of {where} (no names given)")


def encode_labels(values: Sequence, space: LabelSpace, where: str, column: str,
                  carried: Optional[Sequence[str]] = None, carried_from: str = "") -> list[int]:
    """Raw labels of one split as class indices of ``space``; a label outside it is an error naming
    its row. Integer labels of a split that carries names must carry the task's names."""
    kind = kind_of_labels(values, where, column)
    if kind == INT:
        if carried is not None and not names_agree(space.names, carried):
            raise DataError(f"{where}: {carried_from} names the classes {list(carried)}, but the task's classes are "
                            f"{list(space.names)} ({space.source})")
        indices = np.asarray(values, dtype=np.float64).astype(np.int64)
        outside = np.flatnonzero((indices < 0) | (indices >= space.num_labels))
        if outside.size:
            row = int(outside[0])
            raise DataError(f"{where}: column {column!r} row {row} is {values[row]!r}: not a class index of "
                            f"{_listing(space)}; {outside.size} of {len(indices)} rows are outside 0..{space.num_labels - 1}")
        return indices.tolist()
    lookup = space.label2id
    indices = [lookup.get(str(v), -1) for v in values]
    unknown = [row for row, index in enumerate(indices) if index < 0]
    if unknown:
        row = unknown[0]
        raise DataError(f"{where}: column {column!r} row {row} is {values[row]!r}: not one of the task's classes "
                        f"{list(space.names)} ({space.source}); {len(unknown)} of {len(indices)} rows are unknown")
    return indices


def _listing(space: LabelSpace) -> str:
    shown = ", ".join(f"{i} = {n}" for i, n in list(space.id2label.items())[:8])
    return f"the task's {space.num_labels} classes ({shown}{', ...' if space.num_labels > 8 else ''})"


def check_every_class_trained(labels: Sequence[int], space: LabelSpace, where: str) -> None:
    """Each class has at least one training example, or a DataError naming the ones without."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=space.num_labels)
    empty = [space.names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{where}: no training example of class{'es' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} "
                        f"of {list(space.names)} ({len(labels)} training rows; check data.labels, data.train.max_samples "
                        f"and data.validation_size)")

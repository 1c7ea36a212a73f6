"""Text and labelled-data sources, from the Hub or from local files, behind one ``{kind: loader}`` table.

Both stages read their data here: stage 1's corpus (``dapt/data.py``) and stage 2's labelled sets
(``classify/data.py``). Kinds (``SourceConfig.kind``; ``auto`` picks by looking at ``path``):

* ``hub``      - ``datasets.load_dataset(path, split=...)``, e.g. ``stanfordnlp/imdb``.
* ``files``    - ``.parquet`` / ``.jsonl`` / ``.json`` / ``.csv`` files: one file, a glob, or a
  directory holding ``{split}.{ext}`` files (``../shared/data/imdb`` with splits train, test).
* ``text_dir`` - a directory tree of ``.txt`` files, one document per file.
* ``aclimdb``  - the original ``aclImdb/`` release: ``{train,test}/{pos,neg}``, ``train/unsup``.

A new kind is one function ``(SourceConfig, num_proc) -> list[datasets.Dataset]`` (one part per
split; ``num_proc``: reader processes it may use, or None) added
to :data:`LOADERS`. Bad input raises :class:`DataError` naming the file, split or column.
"""

from __future__ import annotations

import codecs
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import datasets
import numpy as np
import pyarrow as pa

from dapt.core.hub import looks_local

TABLE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
ACLIMDB_SPLITS = {"train": ["train/neg", "train/pos"], "test": ["test/neg", "test/pos"], "unsupervised": ["train/unsup"]}


class DataError(ValueError):
    """A corpus that cannot be read as configured."""


@dataclass
class SourceConfig:
    path: str = "stanfordnlp/imdb"  # Hub dataset id, file, glob, or directory
    kind: str = "auto"  # auto, or a key of LOADERS: hub | files | text_dir | aclimdb
    # Hub splits, or the {split}.* / {split}-* files of a directory, or aclimdb train | test |
    # unsupervised (concatenated); ignored for a single file, a glob or a text_dir
    splits: list[str] = field(default_factory=lambda: ["train"])
    text_column: str = "text"  # the column holding the text (tables and Hub datasets)
    label_column: Optional[str] = None  # set by stage 2; stage 1 reads text only
    max_documents: int = 0  # 0: all; else a seeded random subset of this many

    def describe(self) -> str:
        return f"{self.path} [{', '.join(self.splits)}]"


def detect_kind(source: SourceConfig) -> str:
    if source.kind != "auto":
        if source.kind not in LOADERS:
            raise DataError(f"source kind {source.kind!r} for {source.path}: expected auto, {', '.join(LOADERS)}")
        return source.kind
    path = Path(source.path)
    if path.is_file() or glob.has_magic(source.path):
        return "files"
    if path.is_dir():
        if (path / "train" / "pos").is_dir() or (path / "test" / "pos").is_dir():
            return "aclimdb"
        if any(next(path.glob(f"*{ext}"), None) for ext in TABLE_FORMATS):
            return "files"
        return "text_dir"
    if looks_local(source.path):
        raise DataError(f"data source not found: {source.path} (no such file or directory)")
    return "hub"


def load_source(source: SourceConfig, seed: int = 0, num_proc: Optional[int] = None) -> datasets.Dataset:
    """One source as a Dataset with a ``text`` column (and ``label`` when ``label_column`` is set),
    texts not yet cleaned. ``num_proc``: processes converting the files into the ``datasets`` cache
    (one file or more each: a corpus of many shards reads that much faster; cache hits need none)."""
    parts = LOADERS[detect_kind(source)](source, num_proc)
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if source.max_documents and source.max_documents < len(dataset):
        # the rows of dataset.shuffle(seed=seed).select(range(max_documents)), in that order, without
        # shuffle's Python list of every row (its permutation is numpy's, and only the kept part is selected)
        order = np.random.default_rng(seed).permutation(len(dataset))
        dataset = dataset.select(order[: source.max_documents])
    return dataset


def _select_columns(dataset: datasets.Dataset, source: SourceConfig, where: str) -> datasets.Dataset:
    wanted = {source.text_column: "text"}
    if source.label_column:
        wanted[source.label_column] = "label"
    for column in wanted:
        if column not in dataset.column_names:
            raise DataError(f"{where}: no column {column!r} (columns: {', '.join(dataset.column_names)})")
    dataset = dataset.select_columns(list(wanted))
    renames = {old: new for old, new in wanted.items() if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    if not isinstance(dataset.features["text"], datasets.Value) or dataset.features["text"].dtype not in ("string", "large_string"):
        raise DataError(f"{where}: column {source.text_column!r} holds {dataset.features['text']}, not text")
    return dataset


def _from_hub(source: SourceConfig, split: str, num_proc: Optional[int] = None) -> datasets.Dataset:
    try:
        dataset = datasets.load_dataset(source.path, split=split, num_proc=num_proc)
    except Exception as error:  # the Hub client raises many types: connection, not found, bad split
        raise DataError(f"cannot load Hub dataset {source.path!r} split {split!r}: {error}") from error
    return _select_columns(dataset, source, f"{source.path} split {split}")


def _table_files(source: SourceConfig) -> list[list[Path]]:
    """Groups of files, one group per split (or one group for a file or glob)."""
    path = Path(source.path)
    if path.is_dir():
        groups = []
        for split in source.splits:
            found = sorted(p for p in path.glob(f"{split}.*") if p.suffix in TABLE_FORMATS)
            found += sorted(p for p in path.glob(f"{split}-*") if p.suffix in TABLE_FORMATS)
            if not found:
                raise DataError(f"no file for split {split!r} in {path} (expected {split}.parquet/.jsonl/.csv)")
            groups.append(found)
        return groups
    files = [Path(p) for p in sorted(glob.glob(source.path))] if glob.has_magic(source.path) else [path]
    if not files or not all(p.is_file() for p in files):
        raise DataError(f"data file not found: {source.path}")
    return [files]


def _split_name(source: SourceConfig, files: list[Path]) -> str:
    """The name ``datasets`` gives the split it builds from ``files`` (its progress line says
    "Generating NAME split"): the configured split they belong to, else a single file's name
    (``test.parquet``: test), else ``train``."""
    for split in source.splits:
        if all(p.name.startswith((f"{split}.", f"{split}-")) for p in files):
            return split
    stem = files[0].stem
    return stem if len(files) == 1 and re.fullmatch(r"[A-Za-z0-9_]+", stem) else "train"


def _from_files(source: SourceConfig, files: list[Path], num_proc: Optional[int] = None) -> datasets.Dataset:
    suffixes = {p.suffix for p in files}
    unknown = suffixes - set(TABLE_FORMATS)
    if unknown or len({TABLE_FORMATS[s] for s in suffixes}) != 1:
        raise DataError(f"cannot read {files[0]}: use one format of .parquet, .jsonl, .json, .csv")
    builder = TABLE_FORMATS[files[0].suffix]
    for file in files:
        if file.stat().st_size == 0:
            raise DataError(f"{file} is empty (0 bytes)")
        if builder != "parquet":
            _check_utf8(file)
    where = str(files[0]) if len(files) == 1 else f"{files[0].parent}/{files[0].stem}*"
    try:
        name = _split_name(source, files)
        dataset = datasets.load_dataset(builder, data_files={name: [str(p) for p in files]}, split=name,
                                        num_proc=_workers(num_proc, files))
    except Exception as error:  # pyarrow / json / csv parse errors: find the file, line and reason
        raise DataError(_read_error(files, error)) from error
    if len(dataset) == 0:
        raise DataError(f"{where}: no rows")
    return _select_columns(dataset, source, where)


def _read_error(files: list[Path], error: Exception) -> str:
    """Why ``datasets`` could not read ``files``, as ``FILE line N: reason``. Its own message is
    generic ("An error occurred while generating the dataset"); the files are re-read here, only
    after a failure, to name the line."""
    import csv
    import json

    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                if pq.read_metadata(file).num_rows == 0:
                    return f"{file}: no rows"
            except Exception:  # noqa: BLE001 - not a parquet file: the library's reason below says so
                pass
            continue
        text = file.read_text(encoding="utf-8")
        if file.suffix == ".json" and text.lstrip()[:1] == "[":  # one JSON document, not JSON lines
            try:
                json.loads(text)
            except json.JSONDecodeError as bad:
                return f"{file} line {bad.lineno} column {bad.colno}: {bad.msg}"
        elif file.suffix in (".json", ".jsonl"):
            records = 0
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as bad:
                    return f"{file} line {number} column {bad.colno}: {bad.msg}"
                if not isinstance(record, dict):
                    kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(record), "number")
                    return f"{file} line {number}: a JSON {kind}, not an object"
                records += 1
            if records == 0:
                return f"{file} holds no records (only blank lines)"
        elif file.suffix == ".csv" and sum(1 for row in csv.reader(text.splitlines()) if row) <= 1:
            return f"{file} has a header but no rows"
    reasons = []  # the library's own reason: the innermost non-empty message of the chain
    for _ in range(20):  # a chain, not a cycle
        if error is None:
            break
        if str(error).strip():
            reasons.append(" ".join(str(error).split()))  # one line
        error = error.__cause__ or error.__context__
    return f"cannot read {', '.join(map(str, files))}: {reasons[-1] if reasons else 'unknown error'}"


UTF8_CHUNK = 1 << 22  # bytes per step of the UTF-8 check


def _check_utf8(file: Path) -> None:
    """Raises :class:`DataError` naming the byte and line where ``file`` stops being UTF-8. Arrow's
    validator (C++, no text decoded) checks it a chunk at a time, each cut before the last
    character that starts in it so that no character is judged in halves; only a file it rejects
    is decoded, to name the place (Python's decoder has the last word). The check runs in the main
    process before the ``num_proc`` readers start: decoding every file in Python there cost
    0.085 CPU-seconds per 64 MiB, this 0.01 (``benchmarks.read_scale``, docs/benchmarks.md)."""
    buffer = bytearray(UTF8_CHUNK + 4)  # read into, validated in place: no copy of the text
    view, held = memoryview(buffer), 0
    with file.open("rb", buffering=0) as handle:
        while read := handle.readinto(view[held : held + UTF8_CHUNK]):
            end = held + read
            cut = _last_character_start(view[:end])
            if not _valid_utf8(view[:cut]):
                break
            buffer[: end - cut] = buffer[cut:end]  # the last character's bytes (at most 4) lead the next chunk
            held = end - cut
        else:
            if _valid_utf8(view[:held]):
                return
    _locate_invalid_utf8(file)


def _last_character_start(data: memoryview) -> int:
    """Where the last character of ``data`` starts (an ASCII or a lead byte within its last four);
    ``len(data)`` when none does: then the bytes are invalid whatever follows."""
    for back in range(1, min(4, len(data)) + 1):
        if data[-back] & 0xC0 != 0x80:
            return len(data) - back
    return len(data)


def _valid_utf8(data: memoryview) -> bool:
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _locate_invalid_utf8(file: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with file.open("rb") as handle:
        while True:
            chunk = handle.read(UTF8_CHUNK)
            held = len(decoder.getstate()[0])  # the start of a character the last chunk cut, not yet judged
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                at = offset - held + error.start
                raise DataError(f"{file}: not valid UTF-8 at byte {at} (line {_newlines_before(file, at) + 1})") from None
            if not chunk:
                return
            offset += len(chunk)


def _newlines_before(file: Path, end: int) -> int:
    count = 0
    with file.open("rb") as handle:
        while end > 0 and (chunk := handle.read(min(UTF8_CHUNK, end))):
            count, end = count + chunk.count(b"\n"), end - len(chunk)
    return count


def _read_text(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{file}: not valid UTF-8 at byte {error.start} (line {line})") from None


def _from_text_files(files: list[Path], where: str, label: Optional[int]) -> datasets.Dataset:
    if not files:
        raise DataError(f"no .txt files under {where}")
    columns = {"text": [_read_text(f) for f in files]}
    if label is not None:
        columns["label"] = [label] * len(files)
    return datasets.Dataset.from_dict(columns)


def _from_aclimdb(source: SourceConfig, split: str) -> datasets.Dataset:
    if split not in ACLIMDB_SPLITS:
        raise DataError(f"aclImdb split {split!r} unknown: expected one of {', '.join(ACLIMDB_SPLITS)}")
    parts = []
    for sub in ACLIMDB_SPLITS[split]:
        folder = Path(source.path) / sub
        label = {"neg": 0, "pos": 1, "unsup": -1}[folder.name]
        parts.append(_from_text_files(sorted(folder.glob("*.txt")), str(folder), label if source.label_column else None))
    return datasets.concatenate_datasets(parts)



def _workers(num_proc: Optional[int], files: list) -> Optional[int]:
    """``datasets`` gives each reader process whole files: no more processes than files."""
    return min(num_proc, len(files)) if num_proc and num_proc > 1 and len(files) > 1 else None


def _load_hub(source: SourceConfig, num_proc: Optional[int] = None) -> list[datasets.Dataset]:
    return [_from_hub(source, split, num_proc) for split in source.splits]


def _load_files(source: SourceConfig, num_proc: Optional[int] = None) -> list[datasets.Dataset]:
    return [_from_files(source, files, num_proc) for files in _table_files(source)]


def _load_text_dir(source: SourceConfig, num_proc: Optional[int] = None) -> list[datasets.Dataset]:
    """One document per file, through ``datasets``' text builder: the tree is written once to the
    ``datasets`` cache (memory-mapped Arrow), so a corpus of many GB never has to fit in RAM."""
    files = sorted(Path(source.path).rglob("*.txt"))
    if not files:
        raise DataError(f"no .txt files under {source.path}")
    try:
        dataset = datasets.load_dataset("text", data_files=[str(f) for f in files], sample_by="document", split="train",
                                        num_proc=_workers(num_proc, files))
    except Exception as error:  # the builder's decode error names no file: find it (only after a failure)
        for file in files:
            _check_utf8(file)
        raise DataError(f"cannot read the .txt files under {source.path}: {error}") from error
    return [dataset]


def _load_aclimdb(source: SourceConfig, num_proc: Optional[int] = None) -> list[datasets.Dataset]:
    # (read into memory: the release's 100,000 files, ~130 MB, are what this kind is for)
    return [_from_aclimdb(source, split) for split in source.splits]


#: kind -> loader: every source kind the project reads, in one place
LOADERS: dict[str, Callable[[SourceConfig, Optional[int]], list[datasets.Dataset]]] = {
    "hub": _load_hub,
    "files": _load_files,
    "text_dir": _load_text_dir,
    "aclimdb": _load_aclimdb,
}

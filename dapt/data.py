"""Stage 1's corpus: text from the sources of :mod:`dapt.core.sources`, split, then cleaned,
tokenized and packed in one pass.

Every document goes through :func:`~dapt.core.text.clean_text` (IMDb's ``<br />`` tags become
whitespace); documents left empty are dropped and counted. Cleaning is fused into tokenization
(:func:`dapt.packing.pack_blocks`), so the ``datasets`` cache holds the text once, as read, and
the blocks. Bad input raises :class:`DataError` naming the file, split or column.

Bounded memory, whatever the corpus's size: the text stays in the memory-mapped ``datasets``
cache, every step works a batch at a time, and nothing builds a Python list of all documents (the
held-out split is drawn out of core: :func:`split_heldout`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import pyarrow as pa

from dapt.core.sources import DataError, SourceConfig, load_source
from dapt.core.text import is_blank
from dapt.packing import counting_cache_reads, pack_blocks, pack_shared, special_layout  # noqa: F401 (the stage's API)


@dataclass
class CorpusConfig:
    """Stage 1's ``data`` group: where the text comes from and how it is held out, packed and masked."""

    # the corpus: the documents of every source, concatenated
    sources: list[SourceConfig] = field(
        default_factory=lambda: [SourceConfig(path="stanfordnlp/imdb", splits=["train", "unsupervised"])]
    )
    heldout: float = 0.01  # held-out documents: a fraction (< 1) or a count (>= 1)
    block_size: int = 512  # packed block length, the special tokens ([CLS]/[SEP], <s>/</s>) included
    mlm_probability: float = 0.15  # fraction of the tokens (special tokens never) selected for prediction
    mask_replace_prob: float = 0.8  # of the selected tokens: [MASK]
    random_replace_prob: float = 0.1  # of the selected tokens: a random token (the rest unchanged)
    # select whole words (as the tokenizer pre-tokenizes them); every selected word then becomes [MASK]
    # (mask_replace_prob and random_replace_prob are ignored: transformers' whole-word collator has no other)
    whole_word_mask: bool = False
    # worker processes for reading, dropping empty documents and tokenizing, per training process;
    # None: none, except that the main process reads with one worker per local training process
    # (the others wait for it meanwhile)
    num_proc: Optional[int] = None
    # every training process tokenizes and packs its own contiguous share of the training documents
    # (into the datasets cache), instead of the main process tokenizing all while the others wait
    shard_tokenization: bool = True


def load_corpus(sources: list[SourceConfig], seed: int = 0, num_proc: Optional[int] = None) -> tuple[datasets.Dataset, dict]:
    """All sources read (``num_proc`` processes), documents empty once cleaned dropped. The texts
    are returned as read: :func:`dapt.packing.pack_blocks` cleans them as it tokenizes. Returns
    ``(dataset, stats)``."""
    if not sources:
        raise DataError("no data sources configured")
    parts = [load_source(source, seed, num_proc=num_proc) for source in sources]
    features = parts[0].features
    # (a cast is a map that copies the text into the cache: only where a source's types differ)
    parts = [p if p.features == features else p.cast(features) for p in parts]
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    raw = len(dataset)
    dataset = dataset.filter(
        lambda texts: [not is_blank(t) for t in texts], input_columns="text", batched=True, num_proc=num_proc,
        desc="dropping empty documents",
    )
    stats = {"sources": [s.describe() for s in sources], "documents": len(dataset), "dropped_empty": raw - len(dataset)}
    if len(dataset) == 0:
        raise DataError(f"corpus is empty: {raw} documents read from {', '.join(stats['sources'])}, none with text")
    return dataset, stats


def split_heldout(dataset: datasets.Dataset, heldout: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """``(train, heldout)``: a seeded random slice of whole documents; ``heldout`` < 1 is a
    fraction, >= 1 a count. The documents, and their order, are those of
    ``dataset.train_test_split(test_size=count, seed=seed)``; for a dataset in the ``datasets``
    cache they are drawn out of core (:func:`_split_out_of_core`)."""
    count = int(heldout) if heldout >= 1 else round(heldout * len(dataset))
    if count <= 0:
        raise DataError(f"held-out size {heldout} leaves no held-out documents out of {len(dataset)}")
    if count >= len(dataset):
        raise DataError(f"held-out size {heldout} takes all {len(dataset)} documents; nothing left to train on")
    if not dataset.cache_files:  # in memory, hence small
        parts = dataset.train_test_split(test_size=count, seed=seed, shuffle=True)
        return parts["train"], parts["test"]
    return _split_out_of_core(dataset, count, seed)


CHUNK = 1 << 20  # rows per step of the out-of-core split: 8 MiB of int64


def _split_out_of_core(dataset: datasets.Dataset, count: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The split of ``train_test_split`` without its memory: that draws
    ``numpy.random.default_rng(seed).permutation(n)`` (held out: the first ``count`` positions,
    train: the rest, in that order) and then turns each part into a Python list (~40 bytes a
    document) to write its index mapping. Here the same permutation is drawn in a memory-mapped
    file (``Generator.permutation(n)`` is ``shuffle(arange(n))``) and both index mappings are
    written to the cache a chunk at a time; later runs find them there."""
    folder = Path(dataset.cache_files[0]["filename"]).parent
    key = hashlib.sha256(f"{dataset._fingerprint}|heldout|{seed}|{count}".encode()).hexdigest()[:16]
    paths = {part: folder / f"cache-split-{key}-{part}.arrow" for part in ("train", "heldout")}
    if not all(path.exists() for path in paths.values()):
        with tempfile.TemporaryDirectory(dir=folder, prefix="tmp-split-") as scratch:
            order = np.lib.format.open_memmap(os.path.join(scratch, "order.npy"), mode="w+", dtype=np.int64, shape=(len(dataset),))
            for start in range(0, len(dataset), CHUNK):
                order[start : start + CHUNK] = np.arange(start, min(start + CHUNK, len(dataset)))
            # the plain-ndarray view takes numpy's in-place fast path (a memmap would be swapped element by element)
            np.random.default_rng(seed).shuffle(order.view(np.ndarray))
            rows = _physical_rows(dataset, scratch)
            _write_indices(paths["heldout"], order[:count], rows)
            _write_indices(paths["train"], order[count:], rows)
            del order, rows
    from datasets.table import MemoryMappedTable

    return tuple(
        datasets.Dataset(dataset.data, info=dataset.info.copy(), split=dataset.split,
                         indices_table=MemoryMappedTable.from_file(str(paths[part])), fingerprint=f"{key}{part}")
        for part in ("train", "heldout")
    )


def _physical_rows(dataset: datasets.Dataset, scratch: str) -> Optional[np.ndarray]:
    """Row ``i`` of ``dataset`` is row ``rows[i]`` of its Arrow table (a memory-mapped array), or
    ``None`` where the two are the same. ``datasets`` keeps a filter's or a selection's rows as an
    index table (``_indices``, no public accessor); it is copied here a record batch at a time."""
    indices = dataset._indices
    if indices is None:
        return None
    rows = np.lib.format.open_memmap(os.path.join(scratch, "rows.npy"), mode="w+", dtype=np.int64, shape=(len(dataset),))
    start = 0
    for batch in indices.to_batches():
        rows[start : start + batch.num_rows] = batch.column(0).to_numpy()
        start += batch.num_rows
    return rows


def _write_indices(path: Path, positions: np.ndarray, rows: Optional[np.ndarray]) -> None:
    """An index mapping as ``datasets`` stores one (an Arrow stream of one ``uint64`` column), written
    a chunk at a time to a file of its own, then renamed into place: a reader never sees half a
    file, and two runs sharing a cache each write their own (same) file."""
    schema = pa.schema([pa.field("indices", pa.uint64())])
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix="tmp-split-", suffix=".arrow")
    os.close(handle)
    try:
        with pa.OSFile(partial, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for start in range(0, len(positions), CHUNK):
                chunk = np.asarray(positions[start : start + CHUNK])
                physical = chunk if rows is None else rows[chunk]
                writer.write_batch(pa.record_batch([pa.array(physical.astype(np.uint64))], schema=schema))
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def reading_processes(data: CorpusConfig, num_processes: int = 1) -> Optional[int]:
    """``data.num_proc``, or else one reader per local training process of this run (``LOCAL_WORLD_SIZE``,
    set by ``torchrun`` and ``accelerate launch``, bounded by the run's ``num_processes``: a variable
    left in the environment by another launch never makes a one-process run fork readers): the main
    process reads while the others wait."""
    if data.num_proc:
        return data.num_proc
    local = min(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), num_processes)
    return local if local > 1 else None


@contextmanager
def timed(seconds: dict, phase: str):
    started = time.perf_counter()
    yield
    seconds[phase] = round(time.perf_counter() - started, 3)


def build_blocks(data: CorpusConfig, tokenizer, accelerator, seed: int):
    """Held-out and training blocks plus corpus statistics. The main process reads and splits the
    documents and packs the held-out blocks first (into the ``datasets`` cache; the others then read
    it), so the held-out set is the same for any number of processes. The training documents are
    then tokenized by every process, a share each (``data.shard_tokenization``, :func:`pack_shared`),
    or by the main process alone. ``stats["seconds"]``: this process's time per phase."""
    kwargs = dict(with_word_ids=data.whole_word_mask, num_proc=data.num_proc)
    seconds: dict = {}
    with accelerator.main_process_first():
        with timed(seconds, "read"):
            documents, stats = load_corpus(data.sources, seed=seed, num_proc=reading_processes(data, accelerator.num_processes))
        with timed(seconds, "split"):
            train_docs, heldout_docs = split_heldout(documents, data.heldout, seed=seed)
        with timed(seconds, "heldout"):
            heldout_blocks = pack_blocks(heldout_docs, tokenizer, data.block_size, keep_remainder=True, **kwargs)
        if not data.shard_tokenization:
            with timed(seconds, "train"):
                train_blocks = pack_blocks(train_docs, tokenizer, data.block_size, **kwargs)
    if data.shard_tokenization:
        with timed(seconds, "train"):
            train_blocks, shares = pack_shared(train_docs, tokenizer, data.block_size, accelerator, **kwargs)
        stats["tokenized_shares"] = shares
    if len(train_blocks) == 0:
        raise DataError(f"the corpus ({stats['documents']} documents) gives no full {data.block_size}-token block")
    stats.update(
        train_documents=len(train_docs), heldout_documents=len(heldout_docs),
        train_blocks=len(train_blocks), heldout_blocks=len(heldout_blocks), seconds=seconds,
    )
    return train_blocks, heldout_blocks, stats

"""Documents to blocks: cleaned, tokenized and packed in one ``datasets`` map, stored compactly.

One pass per batch of documents: :func:`~dapt.core.text.clean_text`, the tokenizer, then the
token stream cut into blocks with numpy. Only the blocks reach the ``datasets`` cache (no cleaned
or tokenized copy of the text), their token ids in the smallest integer type that holds the
vocabulary (:func:`token_dtype`: ``uint16`` up to 65,536 entries, else ``int32``; 2 bytes a token
for BERT's 30,522, against 8 as ``int64``), word ids (whole-word masking) numbered within each
block (:func:`word_dtype`).
"""

from __future__ import annotations

import itertools
import logging
from contextlib import contextmanager
from typing import Optional

import datasets
import numpy as np
import pyarrow as pa
from accelerate.utils import gather_object

from dapt.core.sources import DataError
from dapt.core.text import clean_text

#: part of every packing map's fingerprint (a closure value): bump it when the blocks' layout
#: changes, so that caches written by an older layout are not read as this one
LAYOUT = "blocks-v2: fused clean+tokenize+pack, smallest id type, word ids numbered per block"

def special_layout(tokenizer) -> tuple[list[int], list[int], int]:
    """``(prefix, suffix, separator)``: the special tokens the tokenizer puts around one sequence
    (``[CLS]`` / ``[SEP]`` for BERT, DeBERTa and ModernBERT, ``<s>`` / ``</s>`` for RoBERTa and XLM-R)
    and the token that ends a document inside a block. A tokenizer that adds none gets its own
    cls/bos and sep/eos tokens."""
    probe = "a"
    inner = tokenizer(probe, add_special_tokens=False)["input_ids"]
    outer = tokenizer(probe, add_special_tokens=True)["input_ids"]
    prefix, suffix = [], []
    for start in range(len(outer) - len(inner) + 1):
        if inner and outer[start : start + len(inner)] == inner:
            prefix, suffix = list(outer[:start]), list(outer[start + len(inner) :])
            break
    if not prefix and not suffix:
        first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        prefix, suffix = [first] if first is not None else [], [last] if last is not None else []
    separator = suffix[-1] if suffix else tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if separator is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no separator, sep or eos token to join documents with")
    return prefix, suffix, separator


def token_dtype(tokenizer) -> str:
    """``uint16`` where every token id fits (ids below 65,536), else ``int32``."""
    largest = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=0) + 1) - 1
    return "uint16" if largest <= np.iinfo(np.uint16).max else "int32"


def word_dtype(block_size: int) -> str:
    """Word ids are numbered within a block (0, 1, ...; -1 for special tokens), so below ``block_size``."""
    return "int16" if block_size <= np.iinfo(np.int16).max else "int32"


def _blocks_of(stream: np.ndarray, body: int, prefix: list[int], suffix: list[int], keep_remainder: bool) -> pa.Array:
    """``stream`` cut into ``prefix + body tokens + suffix`` blocks, as an Arrow list array (the last
    one shorter when ``keep_remainder``)."""
    full = len(stream) // body
    rest = len(stream) - full * body if keep_remainder else 0
    size = len(prefix) + body + len(suffix)
    values = np.empty(full * size + (len(prefix) + rest + len(suffix) if rest else 0), dtype=stream.dtype)
    grid = values[: full * size].reshape(full, size)
    grid[:, : len(prefix)] = prefix
    grid[:, len(prefix) : len(prefix) + body] = stream[: full * body].reshape(full, body)
    grid[:, len(prefix) + body :] = suffix
    offsets = list(range(0, full * size + 1, size))
    if rest:
        values[full * size :] = np.concatenate([np.asarray(prefix, stream.dtype), stream[full * body :], np.asarray(suffix, stream.dtype)])
        offsets.append(len(values))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values))


def _numbered_within_blocks(words: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Word ids renumbered 0, 1, ... from each block's start (``-1`` kept). A token starts a new word
    where its id differs from the previous token's, exactly what the masking collator reads from
    them (:class:`dapt.masking.MLMCollator`), so the masks are those of any other numbering."""
    valid = words >= 0
    new = valid.copy()
    new[1:] &= words[1:] != words[:-1]
    new[starts] = valid[starts]
    counts = np.cumsum(new)
    before = np.zeros(len(words), dtype=np.int64)
    before[starts] = counts[starts] - new[starts]  # words begun before the block
    before = np.maximum.accumulate(before)
    return np.where(valid, counts - before - 1, -1)


def pack_blocks(
    dataset: datasets.Dataset,
    tokenizer,
    block_size: int,
    *,
    keep_remainder: bool = False,
    with_word_ids: bool = False,
    num_proc: Optional[int] = None,
    map_batch_size: int = 1000,
    number: bool = True,
    desc: str = "tokenizing",
) -> datasets.Dataset:
    """Clean and tokenize the ``text`` column once (cached by ``datasets``), join the documents with
    the tokenizer's separator and cut the stream into blocks of ``block_size`` tokens laid out as
    the tokenizer lays out one sequence (``[CLS] ... [SEP]``, ``<s> ... </s>``; :func:`special_layout`).
    Columns: ``input_ids`` (:func:`token_dtype`), ``index`` (and ``word_ids`` for whole-word masking:
    the tokenizer's own pre-tokenization - WordPiece, BPE or SentencePiece alike - numbered within
    each block, -1 for special tokens). The tail shorter than a block in each map batch is dropped,
    or kept as a short block when ``keep_remainder``. ``number=False`` leaves out ``index``
    (:func:`pack_shared` numbers the concatenated shares)."""
    if block_size < 8:
        raise DataError(f"block_size {block_size} is too small")
    prefix, suffix, separator = special_layout(tokenizer)
    body = block_size - len(prefix) - len(suffix)
    if with_word_ids and not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"data.whole_word_mask needs a fast tokenizer (word ids); {type(tokenizer).__name__} is not")
    ids_type, words_type, layout = token_dtype(tokenizer), word_dtype(block_size), LAYOUT
    features = {"input_ids": datasets.Sequence(datasets.Value(ids_type))}
    if with_word_ids:
        features["word_ids"] = datasets.Sequence(datasets.Value(words_type))

    def pack(texts: list) -> pa.Table:
        assert layout  # in the closure, hence in the fingerprint
        encoded = tokenizer([clean_text(t or "") for t in texts], add_special_tokens=False,
                            return_attention_mask=False, verbose=False)
        ids = encoded["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        ends = np.cumsum(lengths + 1) - 1  # where each document's separator goes
        stream = np.empty(int(ends[-1]) + 1 if len(ids) else 0, dtype=ids_type)
        is_token = np.ones(len(stream), dtype=bool)
        is_token[ends] = False
        # (an id beyond the type raises OverflowError here rather than wrapping around)
        stream[is_token] = np.fromiter(itertools.chain.from_iterable(ids), dtype=ids_type, count=int(lengths.sum()))
        stream[ends] = separator
        if not keep_remainder:
            stream = stream[: len(stream) - len(stream) % body]
        columns = {"input_ids": _blocks_of(stream, body, prefix, suffix, keep_remainder)}
        if with_word_ids:
            words = np.full(len(is_token), -1, dtype=np.int64)
            words[is_token] = np.fromiter(
                (-1 if w is None else w for i in range(len(ids)) for w in encoded.word_ids(i)), dtype=np.int64, count=int(lengths.sum()))
            words = _numbered_within_blocks(words[: len(stream)], np.arange(0, len(stream), body)).astype(words_type)
            columns["word_ids"] = _blocks_of(words, body, [-1] * len(prefix), [-1] * len(suffix), keep_remainder)
        return pa.table(columns)

    packed = dataset.map(
        pack, input_columns="text", batched=True, batch_size=map_batch_size, remove_columns=dataset.column_names,
        features=datasets.Features(features), num_proc=num_proc, desc=desc,
    )
    return numbered(packed) if number else packed


NUMBERING_BATCH = 10_000  # blocks per batch of the numbering map (its row numbers are a Python list)


def numbered(blocks: datasets.Dataset) -> datasets.Dataset:
    """``blocks`` with the ``index`` column (0, 1, ...) that seeds each block's mask. Written by a
    map of its own (cached like the blocks, on disk, not in memory) and joined column-wise: the
    blocks are not copied."""
    index = blocks.with_format("arrow").map(
        lambda batch, rows: {"index": np.asarray(rows, dtype=np.int64)}, with_indices=True, batched=True,
        batch_size=NUMBERING_BATCH, remove_columns=blocks.column_names, features=datasets.Features({"index": datasets.Value("int64")}),
        desc="numbering blocks",
    )
    return datasets.concatenate_datasets([blocks, index.with_format(None)], axis=1)


def pack_shared(documents: datasets.Dataset, tokenizer, block_size: int, accelerator, **kwargs) -> tuple[datasets.Dataset, list]:
    """The training blocks of ``documents``, tokenized by all processes together: process ``r`` of
    ``n`` packs the ``r``-th contiguous share into the ``datasets`` cache (memory-mapped Arrow, not
    RAM); after a barrier every process reads the other shares from that cache (same fingerprints,
    so no work is repeated where the cache is shared) and concatenates them in order. The blocks
    are the same on every process; with one process they are :func:`pack_blocks` of all documents.
    Also returns, per process, ``{documents, blocks, shares_from_cache}``: its share and how many
    of the other shares it found in the cache."""
    count, rank = accelerator.num_processes, accelerator.process_index
    shares = [documents.shard(num_shards=count, index=i, contiguous=True) for i in range(count)]
    own = pack_blocks(shares[rank], tokenizer, block_size, number=False, desc=f"tokenizing share {rank + 1}/{count}", **kwargs)
    accelerator.wait_for_everyone()
    parts, from_cache = [], 0
    for i in range(count):
        if i == rank:
            parts.append(own)
            continue
        with counting_cache_reads() as reads:
            parts.append(pack_blocks(
                shares[i], tokenizer, block_size, number=False, desc=f"re-tokenizing share {i + 1}/{count}", **kwargs
            ))
        from_cache += bool(reads)
    mine = {"documents": len(shares[rank]), "blocks": len(own), "shares_from_cache": from_cache}
    return numbered(datasets.concatenate_datasets(parts) if count > 1 else own), gather_object([mine])


@contextmanager
def counting_cache_reads():
    """The ``datasets`` maps answered from its cache while inside (``datasets`` says so in an INFO
    line, kept out of the output here; other lines pass on as before)."""
    reads = []
    source = logging.getLogger("datasets.arrow_dataset")
    level, propagate, parent_level = source.level, source.propagate, source.getEffectiveLevel()

    class Counter(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Loading cached processed dataset"):
                reads.append(record)
            elif record.levelno >= parent_level:
                logging.getLogger("datasets").handle(record)

    counter = Counter()
    source.addHandler(counter)
    source.setLevel(logging.INFO)
    source.propagate = False
    try:
        yield reads
    finally:
        source.removeHandler(counter)
        source.setLevel(level)
        source.propagate = propagate

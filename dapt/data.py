"""Stage 1's corpus: text from the sources of :mod:`dapt.core.sources`, cleaned, split, tokenized once and packed.

Every document goes through :func:`~dapt.core.sources.clean_text` (IMDb's ``<br />`` tags become
whitespace); documents left empty are dropped and counted. Bad input raises :class:`DataError`
naming the file, split or column.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import datasets
import numpy as np
from accelerate.utils import gather_object

from dapt.core.sources import DataError, SourceConfig, clean_text, load_source

@dataclass
class CorpusConfig:
    """Stage 1's ``data`` group: where the text comes from and how it is held out, packed and masked."""

    sources: list[SourceConfig] = field(
        default_factory=lambda: [SourceConfig(path="stanfordnlp/imdb", splits=["train", "unsupervised"])]
    )
    heldout: float = 0.01  # held-out documents: a fraction (< 1) or a count (>= 1)
    block_size: int = 512  # packed block length, the special tokens ([CLS]/[SEP], <s>/</s>) included
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8  # of the selected tokens: [MASK]
    random_replace_prob: float = 0.1  # of the selected tokens: a random token (the rest unchanged)
    whole_word_mask: bool = False
    num_proc: Optional[int] = None  # processes for tokenization (per training process)
    # every training process tokenizes and packs its own contiguous share of the training documents
    # (into the datasets cache), instead of the main process tokenizing all while the others wait
    shard_tokenization: bool = True


def load_corpus(sources: list[SourceConfig], seed: int = 0, num_proc: Optional[int] = None) -> tuple[datasets.Dataset, dict]:
    """All sources, cleaned, empty documents dropped (``num_proc`` processes). Returns ``(dataset, stats)``."""
    if not sources:
        raise DataError("no data sources configured")
    parts = [load_source(source, seed) for source in sources]
    features = parts[0].features
    dataset = datasets.concatenate_datasets([p.cast(features) for p in parts]) if len(parts) > 1 else parts[0]
    raw = len(dataset)
    dataset = dataset.map(
        lambda batch: {"text": [clean_text(t or "") for t in batch["text"]]}, batched=True, num_proc=num_proc, desc="cleaning"
    )
    dataset = dataset.filter(lambda batch: [bool(t) for t in batch["text"]], batched=True, num_proc=num_proc, desc="dropping empty")
    stats = {"sources": [s.describe() for s in sources], "documents": len(dataset), "dropped_empty": raw - len(dataset)}
    if len(dataset) == 0:
        raise DataError(f"corpus is empty: {raw} documents read from {', '.join(stats['sources'])}, none with text")
    return dataset, stats


def split_heldout(dataset: datasets.Dataset, heldout: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """``(train, heldout)``: a seeded random slice of whole documents; ``heldout`` < 1 is a
    fraction, >= 1 a count."""
    count = int(heldout) if heldout >= 1 else round(heldout * len(dataset))
    if count <= 0:
        raise DataError(f"held-out size {heldout} leaves no held-out documents out of {len(dataset)}")
    if count >= len(dataset):
        raise DataError(f"held-out size {heldout} takes all {len(dataset)} documents; nothing left to train on")
    parts = dataset.train_test_split(test_size=count, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


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
    """Tokenize once (cached by ``datasets``), join documents with the tokenizer's separator and cut
    the stream into blocks of ``block_size`` tokens laid out as the tokenizer lays out one sequence
    (``[CLS] ... [SEP]``, ``<s> ... </s>``; :func:`special_layout`). Columns: ``input_ids``,
    ``index`` (and ``word_ids`` for whole-word masking: a word number per token, from the
    tokenizer's own pre-tokenization - WordPiece, BPE or SentencePiece alike - and -1 for special
    tokens). The tail shorter than a block in each map batch is dropped, or kept as a short block
    when ``keep_remainder``. ``number=False`` leaves out ``index`` (:func:`pack_shared` numbers the
    concatenated shares)."""
    if block_size < 8:
        raise DataError(f"block_size {block_size} is too small")
    prefix, suffix, separator = special_layout(tokenizer)
    body = block_size - len(prefix) - len(suffix)
    if with_word_ids and not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"data.whole_word_mask needs a fast tokenizer (word ids); {type(tokenizer).__name__} is not")

    def tokenize(batch):
        encoded = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False, verbose=False)
        out = {"ids": encoded["input_ids"]}
        if with_word_ids:
            out["words"] = [[-1 if w is None else w for w in encoded.word_ids(i)] for i in range(len(batch["text"]))]
        return out

    def pack(batch):
        stream, words, next_word = [], [], 0
        for i, ids in enumerate(batch["ids"]):
            stream.extend(ids)
            stream.append(separator)
            if with_word_ids:  # numbered across the whole stream, so two documents never share a word
                doc_words = batch["words"][i]
                words.extend(w + next_word if w >= 0 else -1 for w in doc_words)
                words.append(-1)
                next_word += max(doc_words, default=-1) + 1
        stop = len(stream) if keep_remainder else len(stream) - len(stream) % body
        blocks = {"input_ids": [prefix + stream[i : i + body] + suffix for i in range(0, stop, body)]}
        if with_word_ids:
            edge_before, edge_after = [-1] * len(prefix), [-1] * len(suffix)
            blocks["word_ids"] = [edge_before + words[i : i + body] + edge_after for i in range(0, stop, body)]
        return blocks

    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, num_proc=num_proc, desc=desc)
    packed = tokenized.map(
        pack, batched=True, batch_size=map_batch_size, remove_columns=tokenized.column_names, num_proc=num_proc, desc="packing"
    )
    return numbered(packed) if number else packed


def numbered(blocks: datasets.Dataset) -> datasets.Dataset:
    """The ``index`` column (0, 1, ...) that seeds each block's mask. An array, not a list: hashing
    a Python list of millions of ints for the cache fingerprint takes seconds, an array's bytes not."""
    return blocks.add_column("index", np.arange(len(blocks), dtype=np.int64))


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
    parts = []
    with counting_cache_reads() as reads:
        for i in range(count):
            parts.append(own if i == rank else pack_blocks(
                shares[i], tokenizer, block_size, number=False, desc=f"re-tokenizing share {i + 1}/{count}", **kwargs
            ))
    # two maps per share (tokenize, pack): a share came from the cache when both did
    mine = {"documents": len(shares[rank]), "blocks": len(own), "shares_from_cache": len(reads) // 2}
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


def build_blocks(data: CorpusConfig, tokenizer, accelerator, seed: int):
    """Held-out and training blocks plus corpus statistics. The main process reads, cleans and
    splits the documents and packs the held-out blocks first (into the ``datasets`` cache; the
    others then read it), so the held-out set is the same for any number of processes. The
    training documents are then tokenized by every process, a share each
    (``data.shard_tokenization``, :func:`pack_shared`), or by the main process alone."""
    kwargs = dict(with_word_ids=data.whole_word_mask, num_proc=data.num_proc)
    with accelerator.main_process_first():
        documents, stats = load_corpus(data.sources, seed=seed, num_proc=data.num_proc)
        train_docs, heldout_docs = split_heldout(documents, data.heldout, seed=seed)
        heldout_blocks = pack_blocks(heldout_docs, tokenizer, data.block_size, keep_remainder=True, **kwargs)
        if not data.shard_tokenization:
            train_blocks = pack_blocks(train_docs, tokenizer, data.block_size, **kwargs)
    if data.shard_tokenization:
        train_blocks, shares = pack_shared(train_docs, tokenizer, data.block_size, accelerator, **kwargs)
        stats["tokenized_shares"] = shares
    if len(train_blocks) == 0:
        raise DataError(f"the corpus ({stats['documents']} documents) gives no full {data.block_size}-token block")
    stats.update(
        train_documents=len(train_docs), heldout_documents=len(heldout_docs),
        train_blocks=len(train_blocks), heldout_blocks=len(heldout_blocks),
    )
    return train_blocks, heldout_blocks, stats

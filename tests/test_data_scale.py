"""Stage 1's data path at scale (issue 21): the same blocks as before the rewrite, a compact cache
that a second run reads whole, and no step whose memory grows with the corpus (small corpora, CI)."""

import hashlib
import json
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from accelerate import Accelerator

import dapt.data
import dapt.packing
from dapt.core.sources import SourceConfig
from dapt.data import CorpusConfig, build_blocks, load_corpus, split_heldout
from dapt.masking import MLMCollator
from dapt.packing import token_dtype, word_dtype
from tests.helpers import sentences

#: digests of build_blocks' output computed with the code before the rewrite (main 3ea349d: clean
#: map, filter, train_test_split, tokenize map, pack map with Python lists, int64 everywhere) on
#: the corpus of :func:`write_reviews`: train and held-out token ids and indices, and for
#: whole-word masking the word boundaries (:func:`word_starts`, what the masks depend on)
BEFORE = {
    "one process": (dict(heldout=25, block_size=32), 0, "d0fa49908f357021"),
    "no shares": (dict(heldout=25, block_size=32, shard_tokenization=False), 0, "d0fa49908f357021"),
    "whole words, fraction, seed 7": (dict(heldout=0.05, block_size=64, whole_word_mask=True), 7, "ae4a56cadbdea150"),
    "num_proc 2": (dict(heldout=25, block_size=32, num_proc=2), 0, "42ecfc871eadaccd"),
}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh ``datasets`` cache for the test (load_dataset reads the setting at each call)."""
    folder = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(folder))
    return folder


def write_reviews(shared_data: Path, folder: Path, count: int = 400, chars: int = 600) -> str:
    """Four JSON-lines shards of real IMDb reviews (cut to ``chars``), four of them blank once cleaned."""
    texts = pq.read_table(shared_data / "imdb" / "unsupervised.parquet", columns=["text"]).slice(0, count)
    rows = [t[:chars] for t in texts.column("text").to_pylist()]
    for position, blank in ((3, ""), (50, "<br /><br />"), (120, "  \n "), (399, "<BR/>")):
        if position < count:
            rows[position] = blank
    folder.mkdir(parents=True)
    for number in range(4):
        part = rows[number * count // 4 : (number + 1) * count // 4]
        (folder / f"part-{number}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    return str(folder / "*.jsonl")


def word_starts(block) -> list[int]:
    """Word ids as the masking collator reads them: a token starts a word where its id differs from
    the previous token's (-1: special). Any numbering with the same starts gives the same masks."""
    out, number, previous = [], -1, None
    for word in block:
        if word >= 0 and word != previous:
            number += 1
        out.append(number if word >= 0 else -1)
        previous = word
    return out


def digest(train, heldout, words: bool) -> str:
    train, heldout = train[:], heldout[:]
    payload = {"train": train["input_ids"], "train_index": train["index"], "heldout": heldout["input_ids"],
               "heldout_index": heldout["index"]}
    if words:
        payload["train_words"] = [word_starts(b) for b in train["word_ids"]]
        payload["heldout_words"] = [word_starts(b) for b in heldout["word_ids"]]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


@pytest.mark.parametrize("case", list(BEFORE))
def test_the_blocks_are_those_of_the_code_before_the_rewrite(case, tmp_path, cache, shared_data, tiny_tokenizer):
    settings, seed, expected = BEFORE[case]
    corpus = write_reviews(shared_data, tmp_path / "corpus")
    data = CorpusConfig(sources=[SourceConfig(path=corpus)], **settings)
    for run in ("first", "from the cache"):
        train, heldout, stats = build_blocks(data, tiny_tokenizer, Accelerator(cpu=True), seed=seed)
        assert digest(train, heldout, data.whole_word_mask) == expected, run
        assert stats["documents"] == 396 and stats["dropped_empty"] == 4


def test_token_and_word_ids_are_stored_in_the_smallest_type_and_collated_as_int64(tmp_path, cache, shared_data, tiny_tokenizer):
    corpus = write_reviews(shared_data, tmp_path / "corpus", count=80)
    data = CorpusConfig(sources=[SourceConfig(path=corpus)], heldout=5, block_size=32, whole_word_mask=True)
    train, heldout, _ = build_blocks(data, tiny_tokenizer, Accelerator(cpu=True), seed=0)
    for blocks in (train, heldout):
        assert blocks.data.schema.field("input_ids").type == pa.list_(pa.uint16())
        assert blocks.data.schema.field("word_ids").type == pa.list_(pa.int16())
    batch = MLMCollator(tiny_tokenizer, whole_word_mask=True)([train[i] for i in range(4)])
    assert all(batch[key].dtype == torch.long for key in ("input_ids", "labels", "attention_mask"))

    class Vocabulary:  # token_dtype reads the largest id a tokenizer can produce
        def __init__(self, size):
            self.size = size

        def __len__(self):
            return self.size

        def get_vocab(self):
            return {"last": self.size - 1}

    assert [token_dtype(Vocabulary(n)) for n in (30_522, 65_536, 65_537, 250_002)] == ["uint16", "uint16", "int32", "int32"]
    assert [word_dtype(n) for n in (512, 32_767, 32_768)] == ["int16", "int16", "int32"]


def test_the_cache_holds_the_text_once_and_compact_blocks_and_a_second_run_reads_it(tmp_path, cache, shared_data, standin_encoder_dir):
    """Before: the raw text, a cleaned copy, the tokenized documents and the blocks, the last two as
    int64 (4.7x the corpus's bytes on 300 MB of IMDb text). Now: the text as read and uint16 blocks."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(standin_encoder_dir)  # the real vocabulary: real token counts
    corpus = write_reviews(shared_data, tmp_path / "corpus", count=2000, chars=100_000)
    corpus_bytes = sum(p.stat().st_size for p in (tmp_path / "corpus").iterdir())
    data = CorpusConfig(sources=[SourceConfig(path=corpus)], heldout=20, block_size=128)
    train, heldout, _ = build_blocks(data, tokenizer, Accelerator(cpu=True), seed=0)
    files = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    ratio = sum(p.stat().st_size for p in files) / corpus_bytes
    assert ratio <= 1.5, f"the datasets cache holds {ratio:.2f} bytes per corpus byte"
    again, again_heldout, _ = build_blocks(data, tokenizer, Accelerator(cpu=True), seed=0)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files, "the second run wrote to the cache"
    assert again[:]["input_ids"] == train[:]["input_ids"] and again_heldout[:]["input_ids"] == heldout[:]["input_ids"]


def write_sentences(folder: Path, count: int, per_file: int = 2000) -> str:
    """``count`` short documents in files of ``per_file``: datasets reads a file (up to 10 MB) at once."""
    folder.mkdir(parents=True)
    texts = sentences(count, seed=count, words=(3, 12))
    for start in range(0, count, per_file):
        part = texts[start : start + per_file]
        (folder / f"part-{start // per_file:04d}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    return str(folder / "*.jsonl")


@pytest.mark.slow  # ~15 s: 42,500 documents tokenized under tracemalloc
def test_no_step_holds_memory_that_grows_with_the_corpus(tmp_path, cache, tiny_tokenizer, monkeypatch):
    """Per phase of build_blocks, the Python-allocated peak and what stays allocated after it
    (tracemalloc: Python objects and numpy arrays), for 2,000 and 40,000 short documents. A Python
    list of the documents costs ~40 bytes each (train_test_split built one: measured 37 bytes a
    document in the split); an in-memory column of the blocks 8 bytes a block (add_column built
    one: ~28 bytes a document with these 8-token blocks). Each phase may grow by 6 bytes a document
    (datasets' own bookkeeping per file and per 1,000-row chunk: 1-2)."""
    # the bounded batches, smaller than the corpus: the split's chunks, the numbering map's batches
    monkeypatch.setattr(dapt.data, "CHUNK", 1024)
    monkeypatch.setattr(dapt.packing, "NUMBERING_BATCH", 1000)
    measured = {}

    @contextmanager
    def traced(seconds, phase):
        tracemalloc.start()
        try:
            yield
        finally:
            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            measured[phase] = (peak, current)

    monkeypatch.setattr(dapt.data, "timed", traced)
    per_size = {}
    for count in (500, 2_000, 40_000):  # the first, a warm-up: imports, datasets' first-use caches
        corpus = write_sentences(tmp_path / f"corpus-{count}", count)
        build_blocks(CorpusConfig(sources=[SourceConfig(path=corpus)], heldout=20, block_size=8), tiny_tokenizer,
                     Accelerator(cpu=True), seed=0)
        per_size[count], measured = measured, {}
    assert set(per_size[2_000]) == {"read", "split", "heldout", "train"}
    growth = {phase: [(large - small) / 38_000 for small, large in zip(per_size[2_000][phase], per_size[40_000][phase])]
              for phase in per_size[2_000]}
    assert all(peak < 6 and kept < 6 for peak, kept in growth.values()), f"bytes per document (peak, kept): {growth}"


def test_no_step_makes_a_python_list_of_all_rows(tmp_path, cache, tiny_tokenizer, monkeypatch):
    """The datasets calls that build a Python list of every row or an in-memory column, refused."""

    def refused(name):
        def call(self, *args, **kwargs):
            raise AssertionError(f"Dataset.{name} holds all rows in memory")
        return call

    for name in ("train_test_split", "shuffle", "add_column", "flatten_indices", "to_list", "to_dict", "to_pandas"):
        monkeypatch.setattr(datasets.Dataset, name, refused(name))
    select = datasets.Dataset.select

    def contiguous_only(self, indices, *args, **kwargs):  # shard(contiguous=True) selects a range
        assert isinstance(indices, range), "Dataset.select with a list of rows"
        return select(self, indices, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "select", contiguous_only)
    corpus = write_sentences(tmp_path / "corpus", 3_000)
    for shard in (True, False):
        data = CorpusConfig(sources=[SourceConfig(path=corpus)], heldout=0.01, block_size=32, shard_tokenization=shard)
        train, heldout, _ = build_blocks(data, tiny_tokenizer, Accelerator(cpu=True), seed=0)
        assert len(train) > 0 and len(heldout) > 0


def test_several_sources_are_joined_without_copying_their_text(tmp_path, cache):
    """concatenate_datasets joins memory-mapped tables; the cast before it (a map writing the whole
    text again) is left out where the sources' types already agree."""
    first, second = write_sentences(tmp_path / "a", 300, per_file=100), write_sentences(tmp_path / "b", 200, per_file=100)
    documents, stats = load_corpus([SourceConfig(path=first), SourceConfig(path=second)])
    assert stats["documents"] == 500
    written = [p for p in cache.rglob("cache-*.arrow") if "text" in pa.ipc.open_stream(pa.memory_map(str(p))).schema.names]
    assert written == [], "a copy of the text was written to the cache"


@pytest.mark.parametrize("max_documents", [0, 150])
def test_the_out_of_core_split_draws_what_train_test_split_draws(tmp_path, cache, max_documents):
    """The same documents in the same order, for a filtered dataset and for a subset (max_documents),
    whose rows datasets keeps as an index mapping; a second split is read from the cache."""
    path = tmp_path / "c.jsonl"
    texts = [f"{t} {i}" if i % 9 else "<br />" for i, t in enumerate(sentences(300, seed=2))]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    documents, stats = load_corpus([SourceConfig(path=str(path), max_documents=max_documents)], seed=1)
    assert documents.cache_files and stats["dropped_empty"] > 0
    expected = documents.train_test_split(test_size=17, seed=5, shuffle=True)
    train, heldout = split_heldout(documents, 17, seed=5)
    assert heldout[:]["text"] == expected["test"][:]["text"] and train[:]["text"] == expected["train"][:]["text"]
    written = sorted(cache.rglob("cache-split-*"))
    assert len(written) == 2
    again_train, _ = split_heldout(documents, 17, seed=5)
    assert again_train[:]["text"] == train[:]["text"] and sorted(cache.rglob("cache-split-*")) == written
    assert not list(cache.rglob("tmp-split-*")), "the split's scratch files were left behind"


def test_the_permutation_out_of_core_is_numpys(tmp_path):
    order = np.lib.format.open_memmap(tmp_path / "order.npy", mode="w+", dtype=np.int64, shape=(100_003,))
    order[:] = np.arange(len(order))
    np.random.default_rng(11).shuffle(order.view(np.ndarray))
    assert np.array_equal(order, np.random.default_rng(11).permutation(100_003))


def test_reading_uses_one_process_per_local_training_process_unless_set(tmp_path, monkeypatch):
    from dapt.data import reading_processes

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert reading_processes(CorpusConfig()) is None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert reading_processes(CorpusConfig(), 2) == 2 and reading_processes(CorpusConfig(num_proc=3), 2) == 3
    assert reading_processes(CorpusConfig(), 1) is None  # a variable another launch left: this run is one process
    corpus = write_sentences(tmp_path / "corpus", 400, per_file=100)
    read = {}
    for workers in (None, 2):  # each into a cache of its own: both really read the four files
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / f"cache-{workers}"))
        read[workers] = load_corpus([SourceConfig(path=corpus)], num_proc=workers)
    assert len(list((tmp_path / "cache-2").rglob("*-of-00002.arrow"))) == 2, "not read by two processes"
    assert read[2][0][:]["text"] == read[None][0][:]["text"] and read[2][1] == read[None][1]

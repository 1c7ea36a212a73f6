"""Corpora of real review text at any size, for the scale benchmark.

Every document is new: the IMDb ``unsupervised`` reviews are cut into sentences, and each generated
document is a run of sentences drawn uniformly at random (with replacement, a seeded
``numpy.random.Generator``) from all 50,000 reviews, as many sentences as a real review drawn at
random has. So the text is real review language (with its ``<br />`` tags, which cleaning must
remove), the documents have IMDb's length distribution, and no document repeats a review or another
document (but by chance, for one-sentence documents): a tokenizer or a cache keyed on whole texts has
nothing to reuse. The documents are
written as JSON-lines shards (``{"text": ...}`` per line, UTF-8) of at most ``shard_bytes`` each,
at least ``min_shards`` of them, so that reading can be spread over several processes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class SentencePool:
    sentences: list[str]
    per_review: np.ndarray  # sentence count of every review: the documents' length distribution

    @classmethod
    def from_texts(cls, reviews: list[str]) -> "SentencePool":
        sentences, counts = [], []
        for review in reviews:
            parts = [part for part in SENTENCE_END.split(review) if part]
            sentences.extend(parts)
            counts.append(len(parts))
        return cls(sentences, np.asarray(counts, dtype=np.int64))

    @classmethod
    def from_parquet(cls, path: Path, column: str = "text") -> "SentencePool":
        return cls.from_texts(pq.read_table(path, columns=[column]).column(column).to_pylist())


def write_corpus(pool: SentencePool, folder: Path, target_bytes: int, seed: int = 0,
                 shard_bytes: int = 64 << 20, min_shards: int = 4) -> dict:
    """Write shards under ``folder`` until ``target_bytes`` are on disk; returns what was written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=False)
    shards = max(min_shards, -(-target_bytes // shard_bytes))
    per_shard = -(-target_bytes // shards)
    written = documents = text_bytes = 0
    mean_document = 1500  # bytes a JSON line, first guess: batches end near a shard's size
    for number in range(shards):
        with (folder / f"part-{number:05d}.jsonl").open("wb") as handle:
            size = 0
            while size < per_shard and written + size < target_bytes:
                batch = int(min(256, max(1, (per_shard - size) // mean_document)))
                counts = rng.choice(pool.per_review, size=batch)
                picks = rng.integers(0, len(pool.sentences), size=int(counts.sum()))
                lines, start = [], 0
                for count in counts:
                    text = " ".join(pool.sentences[i] for i in picks[start : start + count])
                    start += count
                    text_bytes += len(text.encode())
                    lines.append(json.dumps({"text": text}, ensure_ascii=False))
                chunk = ("\n".join(lines) + "\n").encode()
                handle.write(chunk)
                size += len(chunk)
                documents += len(counts)
                mean_document = max(1, (written + size) // documents)
        written += size
    return {"folder": str(folder), "bytes": written, "text_bytes": text_bytes, "documents": documents,
            "shards": shards, "seed": seed}


def read_texts(folder: Path, max_bytes: int, part: int = 0, parts: int = 1) -> list[str]:
    """Up to ``max_bytes`` of the corpus's texts, from shard ``part``, ``part + parts``, ...: the
    sample the tokenizer's own rate is measured on (one share per measuring process)."""
    texts, size = [], 0
    for shard in sorted(folder.glob("*.jsonl"))[part::parts]:
        with shard.open(encoding="utf-8") as handle:
            for line in handle:
                texts.append(json.loads(line)["text"])
                size += len(line)
                if size >= max_bytes:
                    return texts
    return texts

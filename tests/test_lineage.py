"""Stage 1 started from a stage-1 output (DAPT then TAPT), the chain of phases it records, and the
matching rules the leakage guard uses (dapt.core.lineage)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from dapt.core.lineage import chain_of, read_units, shared_units, source_reads, source_record, split_names
from dapt.core.sources import SourceConfig
from dapt.core.runtime import forget_accelerate_state
from tests.test_pretrain import run, tiny_overrides, write_corpus


@pytest.fixture(scope="module")
def two_phases(tiny_headless_encoder_dir, tmp_path_factory):
    """Phase 1: stage 1 from a headless encoder (fresh head, warmed up); phase 2: stage 1 from
    phase 1's output on the same corpus and config. Returns (root, summary 1, summary 2, log of phase 2)."""
    forget_accelerate_state()  # a module fixture is set up before the per-test reset: start clean here
    root = tmp_path_factory.mktemp("phases")
    corpus = write_corpus(root / "corpus.jsonl", 60)
    common = {"train.max_steps": 4, "train.head_warmup_steps": 5}
    first = run(tiny_overrides(tiny_headless_encoder_dir, corpus, root / "phase1", **common))
    forget_accelerate_state()
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(level=logging.INFO)
    watched = [logging.getLogger(name) for name in ("dapt.core.runtime", "dapt.modeling")]
    for watched_logger in watched:
        watched_logger.addHandler(handler)
    try:
        second = run(tiny_overrides(root / "phase1", corpus, root / "phase2", **common))
    finally:
        for watched_logger in watched:
            watched_logger.removeHandler(handler)
    return root, first, second, "\n".join(records)


def test_a_second_phase_continues_with_the_saved_head(two_phases):
    root, first, second, log = two_phases
    assert first["had_mlm_head"] is False and first["baseline"] == "head_warmup"
    assert second["had_mlm_head"] is True and second["baseline"] == "pretrained_head"
    assert second["perplexity_before_random_head"] is None  # no fresh head, so no warm-up
    assert "warming up the head" not in log and "has no MLM head" not in log
    assert "continuing from a stage-1 output" in log and "with the MLM head it saved" in log
    # the same held-out documents and fixed masks, the same weights: the same perplexity
    assert second["heldout_masked_tokens"] == first["heldout_masked_tokens"]
    assert second["perplexity_before"] == pytest.approx(first["perplexity_after"], rel=1e-6)
    assert second["heldout_loss_before"] == pytest.approx(first["heldout_loss_after"], rel=1e-6)
    # the head phase 1 trained is what phase 2 started from (saved tied to the embeddings)
    config = json.loads((root / "phase1" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    head = {k: v for k, v in load_file(root / "phase1" / "model.safetensors").items() if k.startswith("cls.")}
    assert head and all(torch.isfinite(v).all() for v in head.values())


def test_the_summary_records_every_phase(two_phases):
    root, first, second, _ = two_phases
    assert [p["phase"] for p in first["adaptation"]] == [1]
    assert [p["phase"] for p in second["adaptation"]] == [1, 2]
    assert second["adaptation"][0] == first["adaptation"][0]  # phase 1 as phase 1 recorded it
    one, two = second["adaptation"]
    assert two["model_name_or_path"] == str(root / "phase1") and two["model_resolved"] == os.path.realpath(root / "phase1")
    assert two["output_resolved"] == os.path.realpath(root / "phase2") and two["baseline"] == "pretrained_head"
    assert one["baseline"] == "head_warmup" and one["had_mlm_head"] is False
    assert two["perplexity_before"] == pytest.approx(one["perplexity_after"], rel=1e-6)
    source = two["sources"][0]
    assert source["path"] == str(root / "corpus.jsonl") and source["kind"] == "files" and source["splits"] == ["train"]
    assert source["reads"] == [{"file": os.path.realpath(root / "corpus.jsonl")}]
    assert {"text_column", "max_documents", "resolved"} <= set(source)
    assert two["documents"] == 60 and two["heldout_documents"] == 10 and two["steps"] == 4
    on_disk = json.loads((root / "phase2" / "dapt_summary.json").read_text())
    assert on_disk["adaptation"] == json.loads(json.dumps(second["adaptation"]))


def test_an_older_summary_without_phases_is_read_from_its_config(tmp_path):
    start = tmp_path / "older"
    start.mkdir()
    older = {"model_name_or_path": "distilbert/distilbert-base-uncased", "run_name": "dapt", "steps": 7,
             "config": {"output_dir": "runs/dapt", "data": {"sources": [
                 {"path": "stanfordnlp/imdb", "kind": "hub", "splits": ["train", "unsupervised"], "text_column": "text",
                  "max_documents": 0}]}}}
    (start / "dapt_summary.json").write_text(json.dumps(older))
    newer = {"model_name_or_path": str(start), "config": {"output_dir": str(tmp_path / "tapt"), "data": {"sources": []}}}
    chain = chain_of(newer)
    assert [p["phase"] for p in chain] == [1, 2] and chain[0]["model_name_or_path"] == "distilbert/distilbert-base-uncased"
    assert chain[0]["recorded"].startswith("reconstructed") and chain[0]["steps"] == 7
    assert read_units(chain[0]["sources"][0]) == [{"hub": "stanfordnlp/imdb", "split": "train"},
                                                 {"hub": "stanfordnlp/imdb", "split": "unsupervised"}]


# --------------------------------------------------------------------------------------------
# What a source reads, and when two sources share text


def _table(path: Path, rows: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": [f"text {i}" for i in range(rows)], "label": [i % 2 for i in range(rows)]}), path)
    return path


def test_a_directory_with_splits_reads_its_split_files(tmp_path):
    train, test = _table(tmp_path / "news" / "train.parquet"), _table(tmp_path / "news" / "test.parquet")
    reads = source_reads(SourceConfig(path=str(tmp_path / "news"), splits=["train"]))
    assert reads == [{"file": str(train.resolve())}]
    file_source = source_reads(SourceConfig(path=str(train)))  # the same file named directly: the same unit
    assert shared_units(reads, file_source) == file_source
    assert shared_units(reads, source_reads(SourceConfig(path=str(test)))) == []


def test_symlinks_and_relative_paths_resolve_to_the_same_file(tmp_path, monkeypatch):
    train = _table(tmp_path / "data" / "ag" / "train.parquet")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    by_link = source_reads(SourceConfig(path="link/ag", splits=["train"]))
    relative = source_reads(SourceConfig(path="./data/ag/train.parquet"))
    assert by_link == relative == [{"file": str(train.resolve())}]
    record = source_record(SourceConfig(path="link/ag", splits=["train"], max_documents=5))
    assert record["path"] == "link/ag" and record["resolved"] == str((tmp_path / "data" / "ag").resolve())
    assert record["max_documents"] == 5 and record["reads"] == by_link  # a subset reads the same file


def test_hub_ids_match_by_id_and_split_case_insensitively():
    stage1 = source_reads(SourceConfig(path="fancyzhx/ag_news", kind="hub", splits=["train[:10%]", "unlabelled"]))
    assert stage1 == [{"hub": "fancyzhx/ag_news", "split": "train"}, {"hub": "fancyzhx/ag_news", "split": "unlabelled"}]
    same = source_reads(SourceConfig(path="FancyZHX/AG_News", kind="hub", splits=["train"]))
    other = source_reads(SourceConfig(path="fancyzhx/ag_news", kind="hub", splits=["test"]))
    assert shared_units(stage1, same) == same and shared_units(stage1, other) == []
    assert split_names("train[:50%]+test") == ["train", "test"]


def test_a_text_folder_holds_the_text_files_below_it(tmp_path):
    for split, label in (("train", "pos"), ("test", "pos"), ("test", "neg")):
        folder = tmp_path / "aclImdb" / split / label
        folder.mkdir(parents=True)
        (folder / "1.txt").write_text("a review")
    whole_tree = source_reads(SourceConfig(path=str(tmp_path / "aclImdb"), kind="text_dir"))
    test_split = source_reads(SourceConfig(path=str(tmp_path / "aclImdb"), kind="aclimdb", splits=["test"]))
    train_split = source_reads(SourceConfig(path=str(tmp_path / "aclImdb"), kind="aclimdb", splits=["train"]))
    assert len(test_split) == 2 and shared_units(whole_tree, test_split) == test_split
    assert shared_units(train_split, test_split) == []
    table = _table(tmp_path / "aclImdb" / "extra.parquet")  # not a .txt file: a text folder does not read it
    assert shared_units(whole_tree, source_reads(SourceConfig(path=str(table)))) == []

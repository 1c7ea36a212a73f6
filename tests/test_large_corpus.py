"""Corpora larger than memory: the training documents are tokenized by every process, a share
each, into the ``datasets`` cache; the held-out set does not depend on the number of processes;
the process-group timeout is configurable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dapt.core.config import ConfigError, load_config
from dapt.pretrain import PretrainConfig, pretrain
from tests.helpers import rank_errors
from tests.test_pretrain import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def write_shards(shared_data: Path, folder: Path, shards: int = 20, per_shard: int = 15) -> str:
    """``shards`` JSON-lines files of real IMDb reviews (read here, never stored in the repo)."""
    texts = pq.read_table(shared_data / "imdb" / "unsupervised.parquet", columns=["text"]).slice(0, shards * per_shard)
    texts = texts.column("text").to_pylist()
    folder.mkdir()
    for number in range(shards):
        rows = texts[number * per_shard : (number + 1) * per_shard]
        (folder / f"part-{number:03d}.jsonl").write_text("".join(json.dumps({"text": t[:400]}) + "\n" for t in rows))
    return str(folder / "*.jsonl")


@pytest.mark.slow  # two launched processes, then one in-process run (~25-45 s under load)
def test_two_processes_tokenize_a_share_each_and_hold_out_the_same_documents(tmp_path, shared_data, tiny_encoder_dir):
    corpus = write_shards(shared_data, tmp_path / "corpus")
    settings = {"train.max_steps": 1, "data.heldout": 20, "data.sources": f"[{{path: '{corpus}'}}]"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
               "--main_process_port", "0", str(REPO / "dapt/pretrain.py"),
               *tiny_overrides(tiny_encoder_dir, corpus, tmp_path / "two", **settings)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, rank_errors(result.stderr)
    two = json.loads((tmp_path / "two" / "dapt_summary.json").read_text())
    one = pretrain(load_config(PretrainConfig, None, tiny_overrides(tiny_encoder_dir, corpus, tmp_path / "one", **settings)))
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    shares = two["corpus"]["tokenized_shares"]
    # each process tokenized its own half of the training documents and read the other half from the cache
    assert len(shares) == 2 and all(share["documents"] > 0 and share["blocks"] > 0 for share in shares)
    assert sum(share["documents"] for share in shares) == two["corpus"]["train_documents"] == one["corpus"]["train_documents"]
    assert [share["shares_from_cache"] for share in shares] == [1, 1]
    assert "re-tokenizing share" not in result.stderr
    assert one["corpus"]["tokenized_shares"] == [{"documents": one["corpus"]["train_documents"],
                                                  "blocks": one["corpus"]["train_blocks"], "shares_from_cache": 0}]
    # the blocks are the same up to the one tail cut where the halves meet
    assert sum(share["blocks"] for share in shares) == two["corpus"]["train_blocks"]
    assert one["corpus"]["train_blocks"] - 1 <= two["corpus"]["train_blocks"] <= one["corpus"]["train_blocks"]
    # the same held-out documents, blocks and masks: the same perplexity before training
    assert two["corpus"]["heldout_blocks"] == one["corpus"]["heldout_blocks"]
    assert two["heldout_masked_tokens"] == one["heldout_masked_tokens"]
    assert two["perplexity_before"] == pytest.approx(one["perplexity_before"], rel=1e-5)


@pytest.mark.parametrize("value", [0, -5, "nan"])
def test_process_group_timeout_is_checked(value):
    with pytest.raises(ConfigError, match="impl.ddp_timeout_minutes"):
        load_config(PretrainConfig, None, [f"impl.ddp_timeout_minutes={value}"]).validate()


def test_process_group_timeout_reaches_the_accelerator(tmp_path):
    from dapt.core.runtime import ImplConfig, make_accelerator

    accelerator = make_accelerator(ImplConfig(mixed_precision="no", ddp_timeout_minutes=90), tmp_path)
    assert accelerator.init_handler.timeout.total_seconds() == 90 * 60


def test_a_tree_of_txt_files_is_read_into_the_datasets_cache_not_into_memory(tmp_path, shared_data):
    from dapt.core.sources import SourceConfig, load_source

    texts = pq.read_table(shared_data / "imdb" / "unsupervised.parquet", columns=["text"]).slice(0, 200).column("text").to_pylist()
    for number, text in enumerate(texts):
        folder = tmp_path / "docs" / f"d{number % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{number:04d}.txt").write_text(text)
    dataset = load_source(SourceConfig(path=str(tmp_path / "docs")))
    assert dataset.cache_files, "the documents live in memory, not in a memory-mapped cache file"
    files = sorted((tmp_path / "docs").rglob("*.txt"))
    assert dataset["text"] == [f.read_text() for f in files]  # one document per file, in path order


def test_one_process_packs_the_same_blocks_with_or_without_shares(tmp_path, shared_data, tiny_tokenizer):
    from accelerate import Accelerator

    from dapt.core.sources import SourceConfig
    from dapt.data import CorpusConfig, build_blocks

    corpus = write_shards(shared_data, tmp_path / "corpus", shards=4, per_shard=10)
    built = {}
    for shard in (True, False):
        data = CorpusConfig(sources=[SourceConfig(path=corpus)], heldout=5, block_size=32, shard_tokenization=shard)
        built[shard] = build_blocks(data, tiny_tokenizer, Accelerator(cpu=True), seed=0)
    (train, heldout, stats), (plain_train, plain_heldout, plain_stats) = built[True], built[False]
    assert train["input_ids"] == plain_train["input_ids"] and train["index"] == plain_train["index"]
    assert heldout["input_ids"] == plain_heldout["input_ids"]
    assert stats["tokenized_shares"] == [{"documents": 35, "blocks": len(train), "shares_from_cache": 0}]
    assert "tokenized_shares" not in plain_stats

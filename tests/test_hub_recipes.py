"""The real recipes (configs/pretrain.yaml, configs/classify.yaml) read their model and data from the Hub.

A loopback Hub (tests/hub_server.py) holds look-alikes of the three repos they name:

* ``distilbert/distilbert-base-uncased``: a tiny random DistilBertForMaskedLM (MLM head included) and a
  tiny uncased WordPiece tokenizer (tests/helpers.py);
* ``stanfordnlp/imdb``: parquet shards ``plain_text/{train,test,unsupervised}-00000-of-00001.parquet`` and a
  README whose YAML declares the ``plain_text`` config and its splits, as on the Hub;
* ``stanfordnlp/sst2``: ``data/{train,validation}-00000-of-00001.parquet`` with columns idx, sentence, label.

The parquet rows are seeded samples of ../shared/data read at test time. Both stages then run with the
shipped config files and overrides that only shrink the budget (sizes, steps, precision "no" on a CPU,
no compile, no loader workers) and redirect outputs, so every byte of model and data comes through
``huggingface_hub`` / ``datasets`` from the server.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import build_tiny_tokenizer
from tests.hub_fixtures import patch_datasets_client, patch_hub_client
from tests.hub_server import HubServer

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "distilbert/distilbert-base-uncased"
IMDB_ID = "stanfordnlp/imdb"
SST2_ID = "stanfordnlp/sst2"
ADMIN, ADMIN_TOKEN = "hub-admin", "hf_hub_admin_test_token"

# Rows per split pushed to the loopback Hub: a seeded sample of the real files (IMDb's labelled splits
# are sorted by label, so they are sampled, not cut).
ROWS = {("imdb", "train"): 200, ("imdb", "test"): 120, ("imdb", "unsupervised"): 200,
        ("sst2", "train"): 120, ("sst2", "validation"): 120}
# The Hub repos' parquet layout: path in repo -> (folder in ../shared/data, split)
IMDB_SHARDS = {f"plain_text/{split}-00000-of-00001.parquet": ("imdb", split) for split in ("train", "test", "unsupervised")}
SST2_SHARDS = {f"data/{split}-00000-of-00001.parquet": ("sst2", split) for split in ("train", "validation")}

IMDB_README = """---
dataset_info:
  config_name: plain_text
  features:
  - name: text
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': neg
          '1': pos
configs:
- config_name: plain_text
  data_files:
  - split: train
    path: plain_text/train-*
  - split: test
    path: plain_text/test-*
  - split: unsupervised
    path: plain_text/unsupervised-*
  default: true
---
# IMDb (a loopback-Hub look-alike for tests)
"""

SST2_README = """---
dataset_info:
  features:
  - name: idx
    dtype: int32
  - name: sentence
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': negative
          '1': positive
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: validation
    path: data/validation-*
---
# SST-2 (a loopback-Hub look-alike for tests)
"""


def sample_parquet(source: Path, rows: int, seed: int = 0, add_idx: bool = False) -> bytes:
    """A seeded sample of ``rows`` rows of a shared parquet file, as parquet bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    picked = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=rows, replace=False))
    table = table.take(pa.array(picked))
    if add_idx:  # SST-2 on the Hub numbers its rows
        table = table.add_column(0, "idx", pa.array(picked.astype("int32")))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def tiny_distilbert(directory: Path) -> Path:
    """A tiny random DistilBertForMaskedLM and an uncased WordPiece tokenizer, saved to ``directory``."""
    import torch
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    tokenizer = build_tiny_tokenizer(directory)
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    DistilBertForMaskedLM(config).save_pretrained(directory)
    return directory


def upload_review_datasets(api, root: Path, shared_data: Path) -> None:
    """The IMDb and SST-2 dataset repos, laid out as on the Hub, from seeded samples of ../shared/data."""
    for repo_id, readme, shards in ((IMDB_ID, IMDB_README, IMDB_SHARDS), (SST2_ID, SST2_README, SST2_SHARDS)):
        folder = root / repo_id.replace("/", "__")
        for path_in_repo, (name, split) in shards.items():
            (folder / path_in_repo).parent.mkdir(parents=True, exist_ok=True)
            (folder / path_in_repo).write_bytes(sample_parquet(
                shared_data / name / f"{split}.parquet", ROWS[(name, split)], add_idx=name == "sst2"))
        (folder / "README.md").write_text(readme)
        api.create_repo(repo_id, repo_type="dataset")
        api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder)


@pytest.fixture(scope="module")
def recipe_hub(tmp_path_factory, shared_data):
    """A loopback Hub holding the three repos the real configs name (pushed with the real client)."""
    from huggingface_hub import HfApi

    root = tmp_path_factory.mktemp("recipe_hub")
    server = HubServer(tokens={ADMIN_TOKEN: ADMIN}, orgs={"distilbert": [ADMIN], "stanfordnlp": [ADMIN]}).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            patch_hub_client(mp, server.endpoint, root / "uploader_hf_home")
            api = HfApi(endpoint=server.endpoint, token=ADMIN_TOKEN)
            api.create_repo(MODEL_ID)
            api.upload_folder(repo_id=MODEL_ID, folder_path=tiny_distilbert(root / "model"))
            upload_review_datasets(api, root, shared_data)
        yield server
    finally:
        server.shutdown()
    assert not server.errors, server.errors[-1]


@contextmanager
def online_clients(server: HubServer, hf_home: Path):
    """huggingface_hub, transformers and datasets on the loopback Hub, online, with a fresh HF_HOME
    (hub cache and datasets cache) under ``hf_home``; all restored on exit. The suite runs offline
    (tests/conftest.py): only this block turns the network on, for the loopback server alone."""
    from huggingface_hub import HfFileSystem

    with pytest.MonkeyPatch.context() as mp:
        patch_hub_client(mp, server.endpoint, hf_home)
        patch_datasets_client(mp, server.endpoint, hf_home)
        HfFileSystem.clear_instance_cache()  # fsspec keeps instances, with their directory listings
        try:
            yield
        finally:
            HfFileSystem.clear_instance_cache()
    assert not server.errors, server.errors[-1]


def fetched(server: HubServer, since: int, prefix: str) -> set[str]:
    """Paths in repo ``prefix`` (e.g. "/datasets/stanfordnlp/imdb") downloaded with a 200 since request ``since``."""
    return {path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path, status in server.requests[since:]
            if method == "GET" and status == 200 and path.startswith(prefix + "/resolve/")}


def pretrain_overrides(output_dir: Path) -> list[str]:
    """configs/pretrain.yaml as shipped, with a budget a CPU runs in seconds."""
    return [f"output_dir={output_dir}", "data.sources.0.max_documents=150", "data.block_size=64",
            "train.batch_size=8", "train.eval_batch_size=32", "train.max_steps=12", "train.log_every=4",
            "impl.mixed_precision=no", "impl.compile=false", "impl.dataloader_workers=0"]


def classify_overrides(output_dir: Path, encoder: str | Path) -> list[str]:
    """configs/classify.yaml as shipped, with a budget a CPU runs in seconds."""
    return [f"output_dir={output_dir}", f"model.encoder={encoder}", "model.max_length=64",
            "data.train.max_samples=48", "data.eval.imdb_test.max_samples=40",
            "data.eval.sst2_validation.max_samples=40", "train.epochs=1", "train.batch_size=16",
            "train.eval_batch_size=64", "impl.mixed_precision=no", "impl.dataloader_workers=0"]


@pytest.fixture(scope="module")
def stage1(recipe_hub, tmp_path_factory):
    """Stage 1 with configs/pretrain.yaml: DistilBERT and IMDb train+unsupervised from the loopback Hub."""
    from dapt.core.config import load_config
    from dapt.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("dapt")
    since = len(recipe_hub.requests)
    with online_clients(recipe_hub, tmp_path_factory.mktemp("hf_home")):
        summary = pretrain(load_config(PretrainConfig, REPO / "configs/pretrain.yaml", pretrain_overrides(out)))
    return out, summary, since


def test_pretrain_recipe_reads_model_and_corpus_from_the_hub(stage1, recipe_hub):
    out, summary, since = stage1
    assert summary["model_name_or_path"] == MODEL_ID
    assert summary["had_mlm_head"] is True and summary["baseline"] == "pretrained_head"  # the Hub repo's head
    corpus = summary["corpus"]
    assert corpus["sources"] == [f"{IMDB_ID} [train, unsupervised]"]
    # 150 of the 400 train+unsupervised rows on the loopback Hub (local files would offer 75,000)
    assert corpus["documents"] == 150 and corpus["heldout_documents"] == round(0.01 * 150)
    assert summary["steps"] == summary["total_steps"] == 12
    assert math.isfinite(summary["perplexity_before"]) and summary["perplexity_after"] < summary["perplexity_before"]

    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched(recipe_hub, since, f"/{MODEL_ID}")
    shards = fetched(recipe_hub, since, f"/datasets/{IMDB_ID}")
    assert {"plain_text/train-00000-of-00001.parquet", "plain_text/unsupervised-00000-of-00001.parquet"} <= shards

    from transformers import AutoModelForMaskedLM

    encoder = AutoModelForMaskedLM.from_pretrained(out)  # the adapted encoder, saved locally
    assert encoder.config.model_type == "distilbert" and encoder.config.dim == 32
    assert json.loads((out / "dapt_summary.json").read_text())["perplexity_after"] == summary["perplexity_after"]


def test_classify_recipe_reads_imdb_and_sst2_from_the_hub(stage1, recipe_hub, tmp_path):
    from classify.config import ClassifyConfig
    from classify.train import train_classifier
    from dapt.core.config import load_config

    encoder_dir, summary, _ = stage1
    out = tmp_path / "classify"
    since = len(recipe_hub.requests)
    with online_clients(recipe_hub, tmp_path / "hf_home"):
        config = load_config(ClassifyConfig, REPO / "configs/classify.yaml", classify_overrides(out, encoder_dir))
        train_classifier(config)

    results = json.loads((out / "results.json").read_text())
    evaluation = results["evaluation"]
    assert set(evaluation) == {"imdb_test", "sst2_validation"}
    for name, (dataset, split, rows) in {"imdb_test": (IMDB_ID, "test", ROWS[("imdb", "test")]),
                                         "sst2_validation": (SST2_ID, "validation", ROWS[("sst2", "validation")])}.items():
        block = evaluation[name]
        assert (block["dataset"], block["split"], block["n"]) == (dataset, split, 40)
        assert block["subset_of"] == rows  # the loopback Hub's split, not ../shared/data (25,000 / 872 rows)
        for metric in ("accuracy", "f1", "precision", "recall", "roc_auc", "loss"):
            assert math.isfinite(block[metric]), (name, metric)
    assert results["dapt"] == json.loads(json.dumps(summary))  # stage 1's summary travels with the classifier
    assert "plain_text/test-00000-of-00001.parquet" in fetched(recipe_hub, since, f"/datasets/{IMDB_ID}")
    assert "data/validation-00000-of-00001.parquet" in fetched(recipe_hub, since, f"/datasets/{SST2_ID}")



def test_classify_baseline_takes_the_plain_encoder_from_the_hub(recipe_hub, tmp_path):
    """classify.yaml's no-DAPT baseline: ``model.encoder=distilbert/distilbert-base-uncased``."""
    from classify.model import load_classifier
    from classify.config import ClassifyConfig
    from classify.train import train_classifier
    from dapt.core.config import load_config

    out = tmp_path / "classify-plain"
    since = len(recipe_hub.requests)
    with online_clients(recipe_hub, tmp_path / "hf_home"):
        config = load_config(ClassifyConfig, REPO / "configs/classify.yaml", classify_overrides(out, MODEL_ID))
        results = train_classifier(config)
    assert results["base_model"] == MODEL_ID and results["dapt"] is None
    assert set(results["evaluation"]) == {"imdb_test", "sst2_validation"}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched(recipe_hub, since, f"/{MODEL_ID}")
    classifier, _ = load_classifier(out / "model")  # the saved classifier needs no Hub (the suite is offline again)
    assert classifier.config.base_model == MODEL_ID

def repo_requests(server: HubServer, since: int, repo_path: str) -> list[tuple[str, str, int]]:
    return [r for r in server.requests[since:] if r[1].startswith(repo_path + "/") or r[1] == repo_path]


def test_missing_hub_dataset_names_the_id_and_split(recipe_hub, tmp_path):
    from dapt.core.config import load_config
    from dapt.core.sources import DataError
    from dapt.pretrain import PretrainConfig, pretrain

    missing = "stanfordnlp/imdb-nonexistent"
    overrides = pretrain_overrides(tmp_path / "dapt") + [f"data.sources.0.path={missing}"]
    since = len(recipe_hub.requests)
    with online_clients(recipe_hub, tmp_path / "hf_home"):
        with pytest.raises(DataError) as raised:
            pretrain(load_config(PretrainConfig, REPO / "configs/pretrain.yaml", overrides))
    assert str(raised.value).startswith(f"cannot load Hub dataset '{missing}' split 'train': ")
    assert "doesn't exist on the Hub" in str(raised.value)  # asked the server (not an offline-mode failure)
    assert any(status == 401 for *_, status in repo_requests(recipe_hub, since, f"/datasets/{missing}"))


def test_missing_hub_split_lists_the_splits_there_are(recipe_hub, tmp_path):
    from dapt.core.config import load_config
    from dapt.core.sources import DataError
    from dapt.pretrain import PretrainConfig, pretrain

    overrides = pretrain_overrides(tmp_path / "dapt") + ["data.sources.0.splits=[train, validation]"]
    with online_clients(recipe_hub, tmp_path / "hf_home"):
        with pytest.raises(DataError, match=r"^cannot load Hub dataset 'stanfordnlp/imdb' split 'validation': "
                                            r"Unknown split \"validation\". Should be one of \['train', 'test', 'unsupervised'\]"):
            pretrain(load_config(PretrainConfig, REPO / "configs/pretrain.yaml", overrides))


def test_missing_hub_model_names_the_id(recipe_hub, tmp_path):
    from dapt.core.config import load_config
    from dapt.pretrain import PretrainConfig, pretrain

    missing = "distilbert/distilbert-base-nonexistent"
    overrides = pretrain_overrides(tmp_path / "dapt") + [f"model.name_or_path={missing}"]
    since = len(recipe_hub.requests)
    with online_clients(recipe_hub, tmp_path / "hf_home"):
        with pytest.raises(ValueError, match=f"^cannot load model.name_or_path='{missing}': {missing} is not a local "
                                             "folder and is not a valid model identifier"):
            pretrain(load_config(PretrainConfig, REPO / "configs/pretrain.yaml", overrides))
    assert any(status == 401 for *_, status in repo_requests(recipe_hub, since, f"/api/models/{missing}")
               + repo_requests(recipe_hub, since, f"/{missing}"))


def test_missing_eval_dataset_fails_before_training(stage1, recipe_hub, tmp_path):
    """A typo in an evaluation set's Hub id must not cost a whole training run: it fails up front."""
    from classify.config import ClassifyConfig
    from classify.train import train_classifier
    from dapt.core.config import load_config
    from dapt.core.sources import DataError

    missing = "stanfordnlp/sst2-nonexistent"
    out = tmp_path / "classify"
    overrides = classify_overrides(out, stage1[0]) + [f"data.eval.sst2_validation.path={missing}"]
    with online_clients(recipe_hub, tmp_path / "hf_home"):
        with pytest.raises(DataError, match=f"^cannot load Hub dataset '{missing}' split 'validation': "):
            train_classifier(load_config(ClassifyConfig, REPO / "configs/classify.yaml", overrides))
    assert not (out / "metrics.jsonl").exists(), "trained before finding out that an evaluation set is missing"

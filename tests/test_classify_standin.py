"""A short real run: the all-MiniLM-L6-v2 stand-in on real IMDb reviews clearly beats chance.

40 steps of 16 class-balanced reviews cut to 64 tokens (the first 32 + the last 30), then 200 test
reviews: about 1.5 minutes on 2 idle CPU cores (longer when the machine is shared).
"""

import time

import pytest

from classify.config import ClassifyConfig
from classify.train import train_classifier
from dapt.core.config import load_config


@pytest.mark.slow
def test_standin_learns_imdb_sentiment(standin_encoder_dir, shared_data, tmp_path):
    started = time.time()
    config = load_config(ClassifyConfig, None, [
        f"output_dir={tmp_path}", f"model.encoder={standin_encoder_dir}",
        "model.max_length=64", "model.truncation=head+tail", "model.head_tokens=32",
        f"data.train.path={shared_data}/imdb", "data.train.max_samples=640", "data.validation_size=32",
        f"data.eval.imdb_test.path={shared_data}/imdb", "data.eval.imdb_test.max_samples=200",
        "data.eval.sst2_validation=null", "data.balance_labels=true",
        "train.epochs=1", "train.batch_size=16", "train.eval_batch_size=100",
        "train.encoder_lr=1e-4", "train.head_lr=1e-3", "train.warmup_ratio=0.1",
        'impl.mixed_precision="no"', "impl.dataloader_workers=0", "checkpoint.every_epoch=false",
    ])
    results = train_classifier(config)
    imdb = results["evaluation"]["imdb_test"]
    print(f"stand-in: IMDb accuracy {imdb['accuracy']:.3f}, ROC AUC {imdb['roc_auc']:.3f}, {time.time() - started:.0f} s")
    assert imdb["n"] == 200 and imdb["subset_of"] == 25_000
    assert imdb["accuracy"] >= 0.70 and imdb["roc_auc"] >= 0.78

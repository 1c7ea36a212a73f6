"""The inference bench's GEMM ceiling (benchmarks/bench_infer.py, issue 21 section 3): measured at the
model's own batch shapes, between the variants' repeats, and never printed as more than 100 %."""

import numpy as np
import pytest
import torch

from benchmarks.bench_infer import GemmCeiling, batch_token_counts, ceiling_fraction, inference_variants, measure, table
from benchmarks.bench_workload import FIRST_WORD_ID, encoder_config, shape_of, synthetic_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return synthetic_tokenizer(512, tmp_path_factory.mktemp("ceiling_tok"))


@pytest.fixture(scope="module")
def model_and_texts(tokenizer):
    from classify.model import DaptClassifierConfig, DistilBERTClassifier

    rng = np.random.default_rng(3)
    texts = [" ".join(f"w{i}" for i in rng.integers(FIRST_WORD_ID, len(tokenizer), int(n))) for n in (5, 17, 40, 90, 200, 33)]
    torch.manual_seed(0)
    model = DistilBERTClassifier(DaptClassifierConfig(encoder_config=encoder_config("tiny", len(tokenizer)).to_dict())).eval()
    return model, texts


def test_a_fraction_above_the_ceiling_is_refused_with_the_reason():
    assert ceiling_fraction(50e9, 100e9) == (0.5, None)
    fraction, why = ceiling_fraction(75e9, 37.8e9)
    assert fraction is None and "75.0 > 37.8 GFLOP/s" in why and "not one" in why
    assert ceiling_fraction(1e9, None) == (None, None)
    run = {"threads": 2, "matmul_ceiling_gflops_per_s": 37.8, "variants": {
        "naive loop": {"reviews_per_s": 9.0, "ratio_vs_naive": 1.0, "model_gflops_per_s": 30.0, "ceiling_fraction": 30 / 37.8},
        "fast": {"reviews_per_s": 20.0, "ratio_vs_naive": 2.2, "model_gflops_per_s": 75.0, "ceiling_fraction": fraction,
                 "ceiling_refused": why}}}
    text = table({"texts": "imdb", "reviews": 64, "size": "minilm", "device": "cpu", "runs": [{**run, "mean_tokens": 270}]})
    assert "| 79 % / n/a |" in text and "refused: above the ceiling" in text and "2 thread(s), fast: above the ceiling" in text
    assert not any(f"{p} %" in text for p in range(101, 1000)), text


def test_the_ceiling_is_timed_at_the_token_counts_the_batches_have(tokenizer, model_and_texts):
    from classify.model import encode_reviews

    model, texts = model_and_texts
    variants = inference_variants(texts, model, tokenizer, "cpu", budgets=(256,))
    counts = batch_token_counts(model, variants)
    lengths = {len(ids) for ids in encode_reviews(tokenizer, texts, 512)}
    assert lengths <= set(counts), "the naive loop's one-review forwards"
    assert max(counts) > max(lengths), "the batched variants' padded batches"
    ceiling = GemmCeiling(shape_of(model.encoder.config), counts, threads=1, most=4)
    assert len(ceiling.inputs) == 4 and min(ceiling.inputs) == min(counts) and max(ceiling.inputs) == max(counts)
    ceiling.sample()
    first = ceiling.best
    ceiling.sample()
    assert 0 < first <= ceiling.best  # the best of all samples


def test_measure_interleaves_the_ceiling_and_reports_no_fraction_above_one(tokenizer, model_and_texts, monkeypatch):
    model, texts = model_and_texts
    samples = []
    original = GemmCeiling.sample
    monkeypatch.setattr(GemmCeiling, "sample", lambda self: (samples.append(1), original(self)))
    _, result = measure(texts, model, tokenizer, 1, "cpu", repeats=2, budgets=(256,))
    variants = result["variants"]
    assert len(samples) == 2 * len(variants) + 1  # before every variant of every repeat, and once after
    assert result["matmul_ceiling_gflops_per_s"] > 0 and result["ceiling_gflops_per_s_by_rows"]
    for row in variants.values():
        for key in ("ceiling_fraction", "fastest_ceiling_fraction"):
            assert (row[key] is None) == (row[key.replace("fraction", "refused")] is not None)
            assert row[key] is None or 0 < row[key] <= 1

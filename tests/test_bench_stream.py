"""benchmarks/bench_stream on 50 IMDb test reviews and a tiny model: the report's figures, the two
paths' agreement, and the padded tokens it reports against those the product actually pads (the
measured table is in docs/benchmarks.md)."""

import json

import classify.model
from benchmarks.bench_stream import main


def test_the_stream_benchmark_reports_what_the_product_pads_and_full_agreement(
        tmp_path, monkeypatch, shared_data, tiny_encoder_dir):
    padded_batches = []
    real_pad_batch = classify.model.pad_batch

    def counting_pad_batch(sequences, *args, **kwargs):
        ids, mask = real_pad_batch(sequences, *args, **kwargs)
        padded_batches.append(ids.numel())
        return ids, mask

    monkeypatch.setattr(classify.model, "pad_batch", counting_pad_batch)
    report = tmp_path / "stream.json"
    result = main(["--reviews", "50", "--chunk-size", "16", "--max-length", "512", "--threads", "1", "--repeats", "1",
                   "--model", str(tiny_encoder_dir), "--data", str(shared_data), "--json", str(report)])

    assert json.loads(report.read_text()) == result
    assert result["reviews"] == 50 and result["chunk_size"] == 16
    assert [len(result["runs"][name]) for name in ("whole", "stream")] == [1, 1]
    assert result["label_agreement"] == 1.0 and result["max_confidence_diff"] < 1e-5
    padded, batches = result["padded_tokens"], result["batches"]
    assert padded["stream"] >= padded["whole"] >= padded["real"] > 50 * 100  # (lengths vary up to 512)
    assert result["padded_ratio"] == round(padded["whole"] / padded["stream"], 4)
    # The warm-up scores all 50 texts (fewer than its 64) as one list, then one pass of each path:
    assert len(padded_batches) == 2 * batches["whole"] + batches["stream"] and batches["stream"] > batches["whole"]
    assert sum(padded_batches) == 2 * padded["whole"] + padded["stream"]
    assert result["ratio_wall"] > 0 and result["ratio_cpu"] > 0 and set(result["reviews_per_s"]) == {"whole", "stream"}


def test_zero_repeats_reports_the_batching_plans_alone(shared_data, tiny_encoder_dir):
    result = main(["--reviews", "40", "--chunk-size", "10", "--max-length", "512", "--repeats", "0",
                   "--model", str(tiny_encoder_dir), "--data", str(shared_data)])
    assert "runs" not in result and result["batches"]["stream"] >= result["batches"]["whole"] >= 1

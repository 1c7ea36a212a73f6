"""benchmarks/bench_masked_logits.py: a smoke run on tiny widths (the real vocabularies) - both sides
run the product's stage-1 step, each architecture splits its head, and the two losses agree."""

import json

import pytest

from benchmarks.bench_masked_logits import main


def test_smoke_run_reports_a_ratio_per_architecture_with_equal_losses(tmp_path):
    out = tmp_path / "bench.json"
    report = main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", "--repeats", "1", "--batch", "2",
                   "--block", "32", "--json", str(out)])
    assert json.loads(out.read_text())["results"].keys() == report["results"].keys() == {"bert", "roberta", "modernbert"}
    for name, result in report["results"].items():
        assert result["strategy"] == ("native" if name == "modernbert" else "gather")
        assert result["speedup_masked_only"] > 0 and len(result["step_s_all"]["full"]) == 1
        assert result["loss_same_batch"]["masked_only"] == pytest.approx(result["loss_same_batch"]["full"], abs=1e-5)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown architecture 'gpt2'"):
        main(["--device", "cpu", "--tiny", "--arch", "gpt2"])

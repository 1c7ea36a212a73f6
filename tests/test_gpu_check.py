"""tools/gpu/gpu_check.py (the GPU acceptance run) and its packing (tools/gpu/pack.sh, tools/gpu/gpu_carry.py).

The script can only be measured on a GPU, so these tests keep it from rotting before one is lent:
the whole run on a CPU (``--dry-run``: tiny model, data slices, every part and every path a CPU
has), the stage-1 budget fit, the lossless weight packing, and the carry-size limit of the packer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tools" / "gpu"


@pytest.fixture
def scripts_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HARNESS))  # the gpu_*.py modules import each other by name, as when run as files


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def test_fit_stage1_keeps_the_recipe_when_it_fits_and_fits_steps_otherwise(scripts_path):
    from gpu_quality import fit_stage1

    common = dict(tokens_per_s=100_000.0, tokens_per_step=10_000, steps_per_epoch=100, epochs=3, head_warmup_steps=30,
                  overhead_s=20.0)
    # 300 steps + 10 head-equivalent steps at 0.1 s, x1.15, + 20 s = 55.65 s
    recipe = fit_stage1(**common, available_s=60.0)
    assert recipe["mode"] == "recipe" and recipe["steps"] == 300 and recipe["estimate_s"] == pytest.approx(55.65, abs=0.06)
    fitted = fit_stage1(**common, available_s=40.0)
    assert fitted["mode"] == "fitted" and fitted["steps"] == 163  # floor(20 / 0.115 - 10)
    assert fitted["estimate_s"] <= 40.0 and fitted["epochs"] == pytest.approx(1.63)
    assert fit_stage1(**common, available_s=10.0)["mode"] == "none"
    assert fit_stage1(**common, available_s=1e6, cap=5)["steps"] == 5  # the dry run's cap


def test_budget_option_errors_name_the_value(scripts_path, shared_data, standin_encoder_dir, capsys):
    from gpu_check import parse_args

    base = ["--out", "x", "--data-dir", str(shared_data), "--encoder-dir", str(standin_encoder_dir)]
    assert parse_args(base + ["--budget-min", "throughput=3.5,smoke=2"]).budget_min == {"quality": 9.0, "throughput": 3.5, "smoke": 2.0}
    for bad, message in (("fast", "'fast'"), ("qualty=3", "qualty"), ("0", "> 0")):
        with pytest.raises(SystemExit):
            parse_args(base + ["--budget-min", bad])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(base + ["--parts", "quality,speed"])
    assert "speed" in capsys.readouterr().err


def test_weights_travel_losslessly_in_two_pieces(tmp_path, tiny_headless_encoder_dir):
    call1, call2, root = tmp_path / "call1", tmp_path / "call2", tmp_path / "staged"
    call2.mkdir()
    run = lambda *a: subprocess.run([sys.executable, str(HARNESS / "gpu_carry.py"), *map(str, a)], env=_env(),  # noqa: E731
                                    capture_output=True, text=True)
    assert run("pack-encoder", tiny_headless_encoder_dir, call1 / "encoder").returncode == 0
    split = run("split", call1, call2, "--tree-bytes", 1000)
    assert split.returncode == 0, split.stderr
    assert (call1 / "encoder" / "encoder.blob.1").is_file() and (call2 / "encoder" / "encoder.blob.2").is_file()
    first = run("stage", call1, root)
    assert first.returncode == 0 and "1 of 2 pieces" in first.stdout
    assert (root / "encoder" / "tokenizer_config.json").is_file() and not (root / "encoder" / "model.safetensors").exists()
    second = run("stage", call2, root)
    assert second.returncode == 0 and "SHA-256 matches" in second.stdout, second.stderr
    assert (root / "encoder" / "model.safetensors").read_bytes() == (Path(tiny_headless_encoder_dir) / "model.safetensors").read_bytes()
    # a call over the device's 64 MiB is refused by name
    over = run("check", call1, call2, "--tree-bytes", 63 * 2**20)
    assert over.returncode != 0 and "call1" in over.stderr and "carry limit" in over.stderr


@pytest.mark.slow
def test_pack_plan_stays_under_the_carry_limit(standin_encoder_dir, shared_data):
    """The two device calls (carried folder + working tree) each fit 64 MiB with a 2 MiB margin;
    estimated from samples compressed with the packer's own codec, nothing downloaded."""
    env = {**_env(), "DAPT_DATA_DIR": str(shared_data), "ENCODER_DIR": str(standin_encoder_dir), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(HARNESS / "pack.sh"), "--plan"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    estimate = json.loads(done.stdout.strip().splitlines()[-1])
    per_call = float(estimate["per_call"].split()[0])
    assert 30 < per_call < 62  # MiB: the data and weights are in it, and it fits


@pytest.mark.slow
def test_dry_run_runs_every_part_on_cpu(tmp_path, shared_data, standin_encoder_dir):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(HARNESS / "gpu_check.py"), "--out", str(out), "--dry-run", "--work-dir",
                           str(tmp_path / "work"), "--data-dir", str(shared_data), "--encoder-dir", str(standin_encoder_dir)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["quality.json", "smoke.json", "summary.md", "throughput.json"]

    quality = json.loads((out / "quality.json").read_text())
    assert quality["status"] == "ok" and quality["dry_run"]
    assert [quality["stages"][s]["exit_code"] for s in ("stage2_plain", "stage1_probe", "stage1", "stage2_dapt")] == [0, 0, 0, 0]
    assert quality["stage1_fit"]["mode"] == "fitted" and quality["stage1"]["steps"] == quality["stage1_fit"]["steps"]
    assert quality["stage1"]["perplexity_after"] > 0 and quality["stage1"]["baseline"] == "head_warmup"
    for dataset in ("imdb_test", "sst2_validation"):
        for metric in ("accuracy", "f1", "precision", "recall", "roc_auc"):
            row = quality["comparison"][dataset][metric]
            assert row["low"] <= row["high"] and row["difference"] == pytest.approx(row["dapt"] - row["plain"], abs=1e-9)
    assert len(quality["bar"]) == 4

    throughput = json.loads((out / "throughput.json").read_text())
    assert throughput["status"] == "ok" and set(throughput["variants"]) == {"compile", "no-compile"}
    for stage in ("mlm", "classify"):
        assert throughput["variants"]["compile"]["stages"][stage]["ratio"]["tokens_per_s"] > 0
        assert throughput["compile_speedup"][stage]["ratio"] > 0

    smoke = json.loads((out / "smoke.json").read_text())
    assert smoke["status"] == "ok", smoke["failed_checks"]
    assert {"stage1-fp16", "stage2-fp16", "infer on cuda"} <= set(smoke["skipped"])
    assert set(smoke["runs"]) == {"stage1-bf16-compile", "stage2-bf16", "evaluate", "infer"}
    observed = smoke["runs"]["stage1-bf16-compile"]["observed"]
    assert observed["compile_calls"] >= 1 and "cpu:bfloat16" in observed["autocast"]
    assert any(loader["num_workers"] == 2 for loader in observed["dataloaders"])

    summary = (out / "summary.md").read_text()
    assert all(f"## {part}" in summary for part in ("quality", "throughput", "smoke"))

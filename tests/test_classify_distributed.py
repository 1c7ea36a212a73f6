"""Two CPU processes (gloo) give exactly the metrics of one; training runs under DDP.

The test runs this module under ``torch.distributed.run -m`` (torchrun); every run asserts
inside itself how many processes it has. ``accelerate launch --cpu --num_processes 2`` would start
one process only (see DESIGN.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import output_text, rank_errors

STACKS_AFTER = "DAPT_TEST_STACKS_AFTER"  # seconds; then every process prints its threads' stacks
ROOT = Path(__file__).resolve().parents[1]
EVAL_ROWS, EVAL_BATCH = 43, 4  # 43 rows: not a multiple of 2 processes x 4, and an odd number of batches


def _torchrun(nproc: int, *args: str, timeout: int = 240) -> None:
    """Run this module under torchrun. A process still running ``timeout - 30`` s after it started
    prints every thread's stack (faulthandler), so a hang names where it hangs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           STACKS_AFTER: str(timeout - 30)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "tests.test_classify_distributed", *args]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"torchrun {' '.join(args[:2])} still running after {timeout} s; its stderr ends:\n{output_text(hung.stderr)[-12000:]}")
    assert done.returncode == 0, done.stdout[-3000:] + rank_errors(done.stderr)



@pytest.mark.slow
def test_two_processes_give_exactly_the_metrics_of_one(tiny_headless_encoder_dir, shared_data, tmp_path):
    for nproc in (1, 2):
        _torchrun(nproc, "eval", str(nproc), str(tiny_headless_encoder_dir), str(shared_data), str(tmp_path / f"eval{nproc}.json"))
    one, two = (json.loads((tmp_path / f"eval{n}.json").read_text()) for n in (1, 2))
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["metrics"]["n"] == two["metrics"]["n"] == EVAL_ROWS
    assert two["metrics"] == one["metrics"]  # exactly, not approximately
    assert two["prob"] == one["prob"] and two["label"] == one["label"]
    # windows: more rows than reviews, each review's windows averaged after the gather
    assert one["windows_rows"] > EVAL_ROWS and one["windows"]["n"] == EVAL_ROWS
    assert two["windows"] == one["windows"] and two["windows_prob"] == one["windows_prob"]


@pytest.mark.slow
def test_training_under_two_processes(tiny_headless_encoder_dir, shared_data, tmp_path):
    for run in ("run1", "run2"):  # one run per process, as every stage runs
        _torchrun(2, "train", "2", str(tiny_headless_encoder_dir), str(shared_data), str(tmp_path), run)
    first = json.loads((tmp_path / "run1" / "results.json").read_text())
    second = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert first["hyperparameters"]["num_processes"] == 2 and second["hyperparameters"]["mixed_precision"] == "bf16"
    assert first["evaluation"]["imdb_test"]["n"] == 40 and second["evaluation"]["sst2_validation"]["n"] == 24
    assert (tmp_path / "run1" / "model" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------
# the script side


def _eval_main(expected: int, encoder_dir: str, data_dir: str, out: str) -> None:
    import torch

    from classify.data import LabelledSetConfig, load_labelled
    from classify.evaluate import evaluate_set
    from classify.encoder import from_encoder
    from dapt.core.runtime import ImplConfig, end_run, make_accelerator
    from transformers import AutoTokenizer

    accelerator = make_accelerator(ImplConfig(mixed_precision="no", cpu=True, dataloader_workers=0), Path(out).parent)
    assert accelerator.num_processes == expected, accelerator.num_processes
    torch.manual_seed(0)  # the same random head in every process and run
    classifier = from_encoder(encoder_dir, max_length=64).to(accelerator.device)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    labelled = load_labelled(LabelledSetConfig(path=f"{data_dir}/imdb", split="test", max_samples=EVAL_ROWS), seed=1)
    settings = {"max_length": 64, "truncation": "head+tail", "head_tokens": 16}
    metrics, predictions = evaluate_set(classifier, tokenizer, labelled, settings, accelerator, batch_size=EVAL_BATCH)
    windows = {"max_length": 64, "truncation": "windows", "head_tokens": 16, "window_stride": 16}
    windowed, windowed_predictions = evaluate_set(classifier, tokenizer, labelled, windows, accelerator, batch_size=EVAL_BATCH)
    from classify.data import ReviewDataset

    rows = len(ReviewDataset(labelled.texts, labelled.labels, tokenizer, 64, "windows", window_stride=16))
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps({
            "num_processes": accelerator.num_processes, "metrics": metrics,
            "prob": predictions.prob.tolist(), "label": predictions.label.tolist(),
            "windows": windowed, "windows_prob": windowed_predictions.prob.tolist(), "windows_rows": rows,
        }))
    end_run(accelerator)


def _train_main(expected: int, encoder_dir: str, data_dir: str, out: str, run: str) -> None:
    from classify.train import train_classifier
    from tests.test_classify_train import tiny_config

    overrides = {"run1": ["checkpoint.every_steps=2"], "run2": ['impl.mixed_precision="bf16"', "train.epochs=1"]}[run]
    results = train_classifier(tiny_config(encoder_dir, data_dir, f"{out}/{run}", "impl.cpu=true", *overrides))
    assert results["hyperparameters"]["num_processes"] == expected


if __name__ == "__main__":
    import faulthandler

    if os.environ.get(STACKS_AFTER):
        faulthandler.dump_traceback_later(int(os.environ[STACKS_AFTER]))
    mode, expected, *rest = sys.argv[1:]
    {"eval": _eval_main, "train": _train_main}[mode](int(expected), *rest)

"""Kill-and-resume, the hard way (issue 12 item 2): real subprocesses of both stages are SIGKILLed
at seeded random points (one of them inside a checkpoint write), resumed, and compared with an
uninterrupted run: identical weights, identical metrics.jsonl steps, no step logged twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_faults import REPO, corpus, labelled, stage2_args, steps_logged  # noqa: F401 - corpus, labelled: fixtures
from tests.test_pretrain import tiny_overrides

CHILD = r"""
import os, signal, sys, time
import torch
delay = float(os.environ.get("FAULT_STEP_SLEEP", "0"))
optimizer_step = torch.optim.AdamW.step
def slow_step(self, *args, **kwargs):  # room for a kill to land mid-training
    time.sleep(delay)
    return optimizer_step(self, *args, **kwargs)
torch.optim.AdamW.step = slow_step
kill_at = int(os.environ.get("FAULT_KILL_IN_CHECKPOINT", "0"))
if kill_at:  # SIGKILL in the middle of the kill_at-th checkpoint write: weights written, state not
    import dapt.core.checkpoint as checkpoint
    save_model, calls = checkpoint.save_model, []
    def save_model_then_die(*args, **kwargs):
        save_model(*args, **kwargs)
        calls.append(1)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.save_model = save_model_then_die
if sys.argv[1] == "pretrain":
    from dapt.pretrain import main
else:
    from classify.train import main
main(sys.argv[2:])
"""


def launch(stage: str, args: list[str], log: Path, **env) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                   "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.Popen([sys.executable, "-c", CHILD, stage, *args], env=environment, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def kill_after_progress(process: subprocess.Popen, metrics: Path, delay: float, timeout: float = 240) -> int:
    """SIGKILL ``delay`` seconds after ``metrics`` is first modified by this process."""
    before = metrics.stat().st_mtime_ns if metrics.exists() else 0
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        if metrics.exists() and metrics.stat().st_mtime_ns != before:
            time.sleep(delay)
            break
        time.sleep(0.02)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    return process.wait(timeout=timeout)


def interrupted_runs(stage: str, args: list[str], out: Path, seed: int, attempts: int = 3) -> list[int]:
    """Up to ``attempts`` killed runs (seeded plan), then one run to the end; their exit codes."""
    rng = random.Random(seed)
    codes = []
    for attempt in range(attempts):
        log = out.parent / f"{out.name}-{attempt}.log"
        if attempt == 1:  # inside a checkpoint write
            process = launch(stage, args, log, FAULT_STEP_SLEEP="0.03", FAULT_KILL_IN_CHECKPOINT=str(rng.randint(1, 2)))
            codes.append(process.wait(timeout=240))
        else:  # at a random time once training has started
            process = launch(stage, args, log, FAULT_STEP_SLEEP="0.03")
            codes.append(kill_after_progress(process, out / "metrics.jsonl", rng.uniform(0.0, 0.6)))
        if codes[-1] == 0:
            break
    final = launch(stage, args, out.parent / f"{out.name}-final.log")
    codes.append(final.wait(timeout=240))
    assert codes[-1] == 0, (out.parent / f"{out.name}-final.log").read_text()[-3000:]
    return codes


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pretrain", "classify"])
def test_killed_and_resumed_runs_match_an_uninterrupted_one(stage, tmp_path, tiny_encoder_dir, tiny_headless_encoder_dir, corpus, labelled):
    if stage == "pretrain":
        common = {"train.max_steps": 12, "train.grad_accum": 2, "train.warmup_steps": 2, "train.min_lr": 1e-4,
                  "checkpoint.every_steps": 3, "checkpoint.keep": 2, "checkpoint.resume": "latest"}
        arguments = lambda out: tiny_overrides(tiny_encoder_dir, corpus, out, **common)  # noqa: E731
        weights = "model.safetensors"
    else:
        common = {"train.epochs": 3, "train.min_lr": 1e-4, "checkpoint.every_steps": 4, "checkpoint.every_epoch": "true",
                  "checkpoint.keep": 2, "checkpoint.resume": "latest"}
        arguments = lambda out: stage2_args(tiny_headless_encoder_dir, labelled, out, **common)  # noqa: E731
        weights = "model/model.safetensors"
    reference = tmp_path / "reference"
    assert launch(stage, arguments(reference), tmp_path / "reference.log").wait(timeout=240) == 0
    out = tmp_path / "interrupted"
    codes = interrupted_runs(stage, arguments(out), out, seed=len(stage))  # 3 kills, then to the end
    assert codes.count(-signal.SIGKILL) >= 2, codes
    a, b = load_file(str(reference / weights)), load_file(str(out / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), codes
    logged = steps_logged(out)
    assert logged == steps_logged(reference), codes
    losses = [step for step, event, loss in logged if event is None]
    assert len(losses) == len(set(losses))  # no step twice
    assert not list((out / "checkpoints").glob(".tmp-step*"))

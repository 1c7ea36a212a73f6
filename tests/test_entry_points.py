"""Every stage starts the ways the README shows - as a file (the seed's `accelerate launch
dapt/pretrain.py`), as a module, as an experiment or script module - with no sys.path edits in the
project's code: a file run re-runs itself as its module (runpy), so no module is imported twice and
nothing in the stage's own folder shadows another import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE_MODULES = {"config", "data", "model", "evaluate", "plots", "train", "predict", "publish", "export",
                 "runtime", "masking", "modeling", "pretrain", "core"}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240)


def _bare_imports(stderr: str) -> set[str]:
    """Modules imported under a bare name that is one of the project's file names."""
    names = {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    return names & STAGE_MODULES


@pytest.mark.slow  # one interpreter start per entry point
@pytest.mark.parametrize("path, usage", [
    ("dapt/pretrain.py", "Stage 1"),
    ("classify/train.py", "Stage 2"),
    ("classify/evaluate.py", "dapt-evaluate --model"),
])
def test_a_stage_runs_as_a_file(path, usage, tmp_path):
    done = _run(str(ROOT / path), "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert usage in done.stdout
    assert not _bare_imports(done.stderr)  # the stage's folder on sys.path[0] shadows nothing


@pytest.mark.slow
@pytest.mark.parametrize("module, usage", [("experiments.ablation", "The DAPT ablation"), ("benchmarks.bench", "--device")])
def test_experiments_and_scripts_run_as_modules(module, usage):
    done = _run("-m", module, "--help", cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert usage in done.stdout
